"""Stoc-SoBiRL's STORM momentum re-uses the SAME samples (docs/math.md §5, corrected).

(a) The correction ``ĝ(x_k; Xi) - ĝ(x_{k-1}; Xi)`` is Lipschitz in the step: with
the samples held fixed (and with likelihood-ratio weights) ``E‖Δĝ‖² / δ²`` does not
grow as ``δ`` shrinks (a key re-draw at the previous point made it grow like
``1/δ``). (b) At matched samples per iteration, STORM's direction error
``E‖d_k - ∇φ(x_k)‖²`` is below the no-momentum estimator's after a burn-in.
(c) The growing sampling schedule (the theorem's configuration) uses exactly the
first ``(D_k, E_k, L_k)`` of its static draws and counts them.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilevel_rl import suites
from bilevel_rl.algorithms import sobirl, stoc_sobirl
from bilevel_rl.algorithms.follower import PolicyFollower, best_response
from bilevel_rl.estimators import HypergradientSamples

TINY = dict(num_states=4, num_actions=2, dim=3, horizon=3, gamma=0.8, tau=0.7)
SIZES = dict(num_samples=2, num_rollouts=1, inner_steps=3)


@functools.cache
def problem():
    return suites.shaping_problem(jax.random.key(5), **TINY, dtype=jnp.float64)


@functools.cache
def sq_change_fn(reuse):
    """Jitted ``(keys, δ) -> ‖ĝ(x; Xi) - ĝ(x - δu; Xi)‖² / δ²`` per key, for random
    unit directions ``u`` and ``Xi`` drawn at ``(x, pi*_x)``; with
    ``reuse="likelihood_ratio"`` the previous point's term is weighted by
    ``pi*_{x-δu} / pi*_x``."""
    prob = problem()
    params = stoc_sobirl.Params(rollout_length=4, **SIZES)

    def one(key, delta):
        return stoc_sobirl.correction_sq_ratio(params, prob, prob.x0, key, delta, reuse)

    return jax.jit(jax.vmap(one, in_axes=(0, None)))


def mean_sq_change(delta, reuse, num_keys=256):
    keys = jax.random.split(jax.random.key(0), num_keys)
    return float(np.mean(sq_change_fn(reuse)(keys, jnp.float64(delta))))


@pytest.mark.parametrize("reuse", ["fixed", "likelihood_ratio"])
def test_storm_correction_is_lipschitz(reuse):
    coarse = mean_sq_change(1e-2, reuse)
    fine = mean_sq_change(1e-4, reuse)
    assert 0.5 < fine / coarse < 2.0, (coarse, fine)
    assert 0 < coarse < 1e3  # bounded, not a ~1/δ blow-up


@functools.cache
def direction_errors(momentum, iters=200, seeds=32):
    """``‖d_k - ∇φ(x_k)‖²`` ``[seeds, iters]`` on one fixed instance."""
    optimizer = {"learning_rate": 0.5, "schedule": "inverse_cube_root", "offset": 10.0}
    keys = jax.random.split(jax.random.key(1), seeds)
    err, _ = stoc_sobirl.direction_errors(
        problem(), keys, iters, optimizer=optimizer, momentum_scale=20.0,
        rollout_length=15, momentum=momentum, **SIZES,
    )  # fmt: skip
    return np.asarray(err)


def test_storm_direction_error_is_below_no_momentum_after_burn_in():
    storm = direction_errors("storm")[:, 100:].mean(axis=1)  # per seed
    plain = direction_errors("none")[:, 100:].mean(axis=1)
    se = np.hypot(storm.std(), plain.std()) / np.sqrt(len(storm))
    assert storm.mean() + 3 * se < plain.mean(), (storm.mean(), plain.mean(), se)


def test_transitions_count_every_drawn_step():
    # D tuples of m trajectories of H steps, and 2 E rollouts of L steps per visit.
    D, E, L = 2, 3, 4
    m, H = 1, TINY["horizon"]
    solver = stoc_sobirl.make(
        num_samples=D, num_rollouts=E, rollout_length=L, inner_steps=1,
        momentum="none", track_exact=False,
    )  # fmt: skip
    prob = problem()
    _, metrics = solver.step(solver.init(prob, jax.random.key(0)), prob)
    assert float(metrics["transitions"]) == D * m * H * (1 + 2 * E * L)


def test_sample_schedule_grows_from_the_constant_sizes_and_stops_at_its_horizon():
    base = dict(num_samples=4, num_rollouts=2, rollout_length=10)
    constant = stoc_sobirl.Params(**base)
    assert stoc_sobirl.sample_sizes(constant, 10**6, np) == (4, 2, 10)
    params = stoc_sobirl.Params(**base, sample_growth=1 / 3, schedule_iters=3000)
    ks = [0, 1, 50, 100, 999, 3000, 10**5]
    sizes = np.array([stoc_sobirl.sample_sizes(params, k, np) for k in ks])
    traced = jax.jit(jax.vmap(lambda k: stoc_sobirl.sample_sizes(params, k)))
    np.testing.assert_array_equal(traced(jnp.asarray(ks, jnp.int32)), sizes)
    np.testing.assert_array_equal(sizes[0], (4, 2, 10))
    assert np.all(np.diff(sizes, axis=0) >= 0)
    growth = (1 + 3000 / 100) ** (1 / 3)  # k_0 = 100: D_K = floor(D (1 + K/k_0)^p)
    expected = (int(4 * growth), int(2 * growth), int(10 * (1 + np.log(31) / 3)))
    np.testing.assert_array_equal(sizes[-2], expected)
    np.testing.assert_array_equal(sizes[-1], sizes[-2])
    with pytest.raises(ValueError, match="schedule_iters: required"):
        stoc_sobirl.Params(sample_growth=0.5)


def test_baseline_options_are_checked_before_compiling():
    with pytest.raises(ValueError, match="baseline: 'leave_one_out' needs D >= 2"):
        stoc_sobirl.Params(num_samples=1, baseline="leave_one_out")
    with pytest.raises(ValueError, match="baseline: must be one of"):
        stoc_sobirl.Params(baseline="mean")
    with pytest.raises(ValueError, match="baseline: applies to the sampled"):
        sobirl.Params(num_samples=None, baseline="leave_one_out")
    with pytest.raises(ValueError, match="baseline: 'leave_one_out' needs D >= 2"):
        sobirl.Params(num_samples=1, baseline="leave_one_out")


def _sliced(samples: HypergradientSamples, D, E, L) -> HypergradientSamples:
    """The first ``D`` tuples, ``E`` rollouts and ``L`` rollout steps, as arrays."""
    tuples = jax.tree.map(lambda a: a[:D], samples.tuples)
    cut = lambda a: a[:D, ..., :E, :L] if a.ndim == 5 else a[:D, ..., :E]  # noqa: E731
    q, v = (jax.tree.map(cut, r) for r in (samples.q_rollouts, samples.v_rollouts))
    return HypergradientSamples(tuples, q, v)


@pytest.mark.parametrize(
    "reweight, baseline",
    [(False, "none"), (True, "none"), (False, "leave_one_out")],
)
def test_scheduled_estimate_equals_the_estimate_on_the_first_draws(reweight, baseline):
    prob = problem()
    params = stoc_sobirl.Params(
        num_samples=5, num_rollouts=3, rollout_length=6, baseline=baseline
    )
    split = stoc_sobirl.split_estimator(params)
    now, prev = (
        PolicyFollower(best_response(prob.mdp, prob.reward(z)).policy)
        for z in (prob.x0, 0.5 * prob.x0)
    )
    full = jax.jit(split.draw)(now, prob, prob.x0, jax.random.key(3), 0)
    masked = full._replace(sizes=jnp.asarray([2, 2, 4], jnp.int32))
    weights = (prev, now) if reweight else None
    evaluate = jax.jit(lambda samples: split.evaluate(samples, prob, prob.x0, weights))
    f_mask, g_mask = evaluate(masked)
    f_cut, g_cut = evaluate(_sliced(full, 2, 2, 4))
    np.testing.assert_allclose(f_mask, f_cut, rtol=1e-12)
    np.testing.assert_allclose(g_mask, g_cut, rtol=1e-10, atol=1e-12)
    assert masked.num_transitions() == _sliced(full, 2, 2, 4).num_transitions()
    # every size at its static value: the unmasked estimate
    same = full._replace(sizes=jnp.asarray([5, 3, 6], jnp.int32))
    np.testing.assert_allclose(
        evaluate(same)[1], evaluate(full)[1], rtol=1e-10, atol=1e-12
    )


def test_scheduled_solver_counts_the_transitions_it_uses():
    m, H = 1, TINY["horizon"]
    params = dict(
        num_samples=2, num_rollouts=1, rollout_length=3, sample_growth=1.0,
        growth_offset=0.5, schedule_iters=4, inner_steps=1, track_exact=False,
    )  # fmt: skip
    solver = stoc_sobirl.make(**params)
    prob = problem()
    state = solver.init(prob, jax.random.key(0))
    step = jax.jit(solver.step)
    counts = []
    for _ in range(6):
        state, metrics = step(state, prob)
        counts.append(float(metrics["transitions"]))
    p = stoc_sobirl.Params(**params)
    sizes = [stoc_sobirl.sample_sizes(p, k, np) for k in range(6)]
    assert [D * m * H * (1 + 2 * E * L) for D, E, L in sizes] == counts
    assert counts[0] < counts[-1] and counts[-1] == counts[-2]  # grows, then stops


def test_schedule_stopped_early_runs_the_same_iterates_up_to_its_stop():
    """A solver whose schedule stops at ``k_1`` (static shapes = the sizes at
    ``k_1``) uses the same sizes as the full schedule for ``k <= k_1``, and, where
    the two static shapes differ only in ``D`` and ``L`` (the draws are
    prefix-consistent along those, not along ``E``), the same draws: bitwise the
    same iterates. So a long run can go in phases, each compiled at its own
    smaller shapes (benchmarks/convergence_rates.py)."""
    params = dict(
        num_samples=2, num_rollouts=1, rollout_length=3, sample_growth=0.5,
        growth_offset=1.0, inner_steps=1, baseline="leave_one_out",
        track_exact=False,
    )  # fmt: skip

    def top(stop):
        p = stoc_sobirl.Params(**params, schedule_iters=stop)
        return stoc_sobirl.sample_sizes(p, stop, np)

    assert (top(1), top(2)) == ((2, 1, 4), (3, 1, 4))  # D differs, E does not
    prob = problem()
    solvers = [stoc_sobirl.make(**params, schedule_iters=k) for k in (2, 1)]
    states = [s.init(prob, jax.random.key(0)) for s in solvers]
    steps = [jax.jit(s.step) for s in solvers]
    for _ in range(2):  # k = 0, 1
        outs = [step(state, prob) for step, state in zip(steps, states)]
        states = [state for state, _ in outs]
        assert outs[0][1]["transitions"] == outs[1][1]["transitions"]
    full, short = (s._replace(key=jax.random.key_data(s.key)) for s in states)
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(short)):
        np.testing.assert_array_equal(a, b)
