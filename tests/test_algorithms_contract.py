"""One contract over every registered algorithm (as optax's ``alias_test.py``).

For each algorithm and each suite it accepts (tiny sizes; Four-Rooms has none):
``init`` and ``step`` run under ``jit(vmap(...))`` on a batch of two float32
instances; the common metrics exist
with their documented meaning (``grad_norm`` is the norm of the direction the
optimizer applied, ``exact_f``/``exact_grad_norm`` the exact ones at ``x_k``);
metrics and state follow the problem's dtype and are finite. And every ``Params``
field round-trips through TOML and through ``bilevel-rl run -p``.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilevel_rl import hypergradient, soft_optimal_policy
from bilevel_rl.algorithms import COMMON_METRICS, EXACT_METRICS, Optimizer
from bilevel_rl.cli import build_parser
from bilevel_rl.cli.run import resolve_config
from bilevel_rl.experiment.config import (
    ALGORITHMS,
    SUITES,
    load_config,
    make_config,
    to_toml,
)

TINY = {
    "sobirl": dict(num_states=3, num_actions=2, dim=3),
    "shaping": dict(num_states=3, num_actions=2, dim=2, horizon=2),
    "rlhf": dict(num_states=3, num_actions=2, dim=2, horizon=2),
    "alignment": dict(
        num_states=3,
        num_actions=2,
        dim=2,
        num_demos=5,
        demo_horizon=3,
        num_comparisons=10,
    ),  # fmt: skip
    "four_rooms": {},
}
SMALL_OPTIONS = {  # keep the sampled estimators cheap to compile
    "num_samples": 2,
    "num_rollouts": 1,
    "rollout_length": 2,
    "inner_steps": 2,
    "cg_iters": 5,
    "horizon": 3,
}


def accepted_suites(name):
    needs = ALGORITHMS[name].NEEDS
    return [s for s, suite in SUITES.items() if needs in (None, *suite.provides)]


CASES = [(a, s) for a in ALGORITHMS for s in accepted_suites(a)]


@functools.cache
def batch(suite):
    keys = jax.random.split(jax.random.key(0), 2)
    build = SUITES[suite].build
    return jax.vmap(lambda k: build(k, **TINY[suite], dtype=jnp.float32))(keys)


def small_params(name):
    fields = {f.name for f in dataclasses.fields(ALGORITHMS[name].Params)}
    options = {k: v for k, v in SMALL_OPTIONS.items() if k in fields}
    if name == "parl":
        options.pop("num_samples")  # exact upper gradients: works on every suite
    return options


def test_every_algorithm_runs_on_some_suite():
    assert {a for a, _ in CASES} == set(ALGORITHMS)


@pytest.mark.parametrize(("name", "suite"), CASES)
def test_contract(name, suite):
    module = ALGORITHMS[name]
    lr = 0.05
    optimizer = Optimizer(learning_rate=lr)
    if name == "stoc_sobirl":
        optimizer = Optimizer(learning_rate=lr, schedule="inverse_cube_root", offset=8)
    solver = module.make(optimizer=optimizer, **small_params(name))
    problems = batch(suite)
    keys = jax.random.split(jax.random.key(1), 2)

    state0 = jax.jit(jax.vmap(solver.init))(problems, keys)
    step = jax.jit(jax.vmap(solver.step))
    state1, metrics = step(state0, problems)

    keys_ = set(COMMON_METRICS) | set(EXACT_METRICS)
    assert keys_ <= set(metrics), f"missing {keys_ - set(metrics)}"
    for metric, value in metrics.items():
        assert value.shape == (2,), metric
        assert value.dtype == jnp.float32, (metric, value.dtype)
        assert np.isfinite(np.asarray(value)).all(), metric
    for leaf in jax.tree.leaves((state1.x, state1.follower, state1.opt_state)):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert leaf.dtype == jnp.float32, leaf.dtype
            assert np.isfinite(np.asarray(leaf)).all()

    # grad_norm is the norm of the direction applied: ‖x_1 - x_0‖ = lr_0 ‖d_0‖.
    step_size = np.asarray(metrics.get("step_size", np.full(2, lr)))
    moved = jax.vmap(lambda a, b: jnp.linalg.norm(a - b))(state1.x, state0.x)
    np.testing.assert_allclose(moved, step_size * metrics["grad_norm"], rtol=1e-4)

    # exact_f and exact_grad_norm are f(x_0, pi*_{x_0}) and ‖∇φ(x_0)‖ (float64
    # references; float32 loses ~1e-3 on Four-Rooms, gamma 0.99 and tau 0.005).
    for i in range(2):
        one = jax.tree.map(lambda a: to64(a[i]), problems)
        reward_fn, upper = one.bind()
        pi = soft_optimal_policy(one.mdp, reward_fn(one.x0), tol=1e-12)
        np.testing.assert_allclose(
            metrics["exact_f"][i], upper(one.x0, pi), rtol=5e-3, atol=1e-5
        )
        g = hypergradient(upper, reward_fn, one.x0, one.mdp, tol=1e-12)
        np.testing.assert_allclose(
            metrics["exact_grad_norm"][i], jnp.linalg.norm(g), rtol=5e-3, atol=1e-5
        )


def to64(a):
    return a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a


# ----------------------------------------------------- options round-trip

ALTERNATIVE_STRINGS = {
    "w0": "zeros",
    "solver_method": "value_iteration",
    "momentum": "average",
    "sample_reuse": "likelihood_ratio",
    "upper_reward": "target",
    "baseline": "leave_one_out",
}


def alternative(name, value):
    """A valid non-default value of a ``Params`` field, as ``-p`` text."""
    if isinstance(value, Optimizer):
        return None
    if isinstance(value, bool):
        return "false" if value else "true"
    if isinstance(value, int):
        return str(value + 1)
    if isinstance(value, float):
        return "0.25" if value in (0.0, float("inf")) or value > 1 else str(value / 2)
    if value is None:
        return "0.5" if name == "average_weight" else "3"
    assert name in ALTERNATIVE_STRINGS, f"add a non-default value for {name!r}"
    return ALTERNATIVE_STRINGS[name]


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_option_round_trips_through_toml_and_the_command_line(name, tmp_path):
    suite = accepted_suites(name)[0]
    fields = dataclasses.fields(ALGORITHMS[name].Params)
    assignments = ["optimizer.name=adam", "optimizer.learning_rate=0.125"]
    assignments += ["optimizer.b1=0.8"]
    for f in fields:
        text = alternative(f.name, getattr(ALGORITHMS[name].Params(), f.name))
        if text is not None:
            assignments.append(f"{f.name}={text}")
    argv = ["run", "--algorithm", name, "--suite", suite, "--out", str(tmp_path)]
    for item in assignments:
        argv += ["-p", item]
    cfg, _, _ = resolve_config(build_parser().parse_args(argv))

    params = cfg.algorithm_params
    default = ALGORITHMS[name].Params()
    for f in fields:
        if f.name == "optimizer":
            assert params["optimizer"].name == "adam"
            assert params["optimizer"].learning_rate == 0.125
            assert dict(params["optimizer"].kwargs) == {"b1": 0.8}
        elif ALTERNATIVE_STRINGS.get(f.name) != getattr(default, f.name):
            assert params[f.name] != getattr(default, f.name), f.name

    path = tmp_path / "config.toml"
    path.write_text(to_toml(cfg, comments=True))
    assert load_config(str(path)) == cfg
    assert make_config({"algorithm": name, "suite": suite}).algorithm_params == {
        f.name: getattr(default, f.name) for f in fields
    }


# ------------------------------------------------------ deprecated names

ALIAS_CASES = [
    (name, old, new)
    for name, module in ALGORITHMS.items()
    for old, new in getattr(module, "ALIASES", {}).items()
]


@pytest.mark.parametrize(("name", "old", "new"), ALIAS_CASES)
def test_old_option_names_warn_and_set_the_new_option(name, old, new):
    from bilevel_rl.algorithms.params import from_kwargs

    module = ALGORITHMS[name]
    value = 3 if new in ("inner_steps", "num_samples") else 0.375
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated"):
        params = from_kwargs(module.Params, {old: value}, module.ALIASES)
    if new.startswith("optimizer."):
        key = new.split(".", 1)[1]
        default = module.Params().optimizer
        assert params.optimizer == Optimizer.from_dict(
            {**default.to_dict(), key: value}
        )
    else:
        assert getattr(params, new) == value
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated"):
        module.make(**{old: value})  # still accepted by the one-call entry


def test_stoc_sobirl_old_schedule_names_set_its_optimizer():
    from bilevel_rl.algorithms import stoc_sobirl
    from bilevel_rl.algorithms.params import from_kwargs

    with pytest.warns(DeprecationWarning) as caught:
        params = from_kwargs(
            stoc_sobirl.Params, {"a": 0.25, "w": 4.0}, stoc_sobirl.ALIASES
        )
    assert {str(w.message).split(":")[1].split(" is")[0].strip() for w in caught} == {
        "a",
        "w",
    }
    assert params.optimizer == Optimizer(
        learning_rate=0.25, schedule="inverse_cube_root", offset=4.0
    )
    assert params.optimizer.step_size(0) == 0.25 / 4.0 ** (1 / 3)


def test_bad_options_name_the_field():
    from bilevel_rl.algorithms import m_sobirl, parl, stoc_sobirl

    with pytest.raises(ValueError, match="zeta: must be finite and > 0"):
        m_sobirl.make(zeta=-1.0)
    with pytest.raises(ValueError, match="num_samples: must be >= 2"):
        parl.make(num_samples=1)
    with pytest.raises(ValueError, match="optimizer.name"):
        m_sobirl.make(optimizer={"name": "nope"})
    with pytest.raises(ValueError, match="optimizer.bogus: not an argument"):
        m_sobirl.make(optimizer={"name": "adam", "bogus": 1.0})
    with pytest.raises(TypeError, match="betta: unknown parameter"):
        m_sobirl.make(betta=1.0)
    with pytest.raises(ValueError, match="average_weight: must lie in"):
        stoc_sobirl.make(momentum="average", average_weight=2.0)
