"""Hostile input, fuzzed: every entry point answers with its documented error
(``TypeError``/``ValueError`` naming the field, ``ConfigError``, ``UsageError`` or
argparse's exit 2), never a crash deep in XLA, a hang or a silent NaN.

Error classes covered: wrong rank/shape, empty arrays, bool/complex/string/object
dtypes, integer dtypes, NaN/inf, negative entries, rows not summing to one,
out-of-range scalars (gamma, tau, slip, concentration), non-integer and huge sizes,
unknown keys and wrong types in configs, malformed TOML, hostile command lines.
"""

import math
import string

import hypothesis.extra.numpy as hnp
import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bilevel_rl import TabularMDP, suites
from bilevel_rl.cli import build_parser
from bilevel_rl.cli.common import UsageError
from bilevel_rl.cli.run import resolve_config
from bilevel_rl.experiment.config import ConfigError, RunConfig, make_config

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

FIELDS = ("P:", "rho:", "gamma:", "tau:", "ref_policy:", "dtype:")

dtypes = st.sampled_from(
    [np.bool_, np.int8, np.int64, np.float16, np.float32, np.float64, np.complex64]
)
shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)
values = st.floats(allow_nan=True, allow_infinity=True, width=32) | st.sampled_from(
    [0.0, 0.25, 0.5, 1.0, -1.0, 1e30]
)
arrays = st.one_of(
    hnp.arrays(dtypes, shapes, elements=None),
    hnp.arrays(np.float64, shapes, elements=values),
    st.sampled_from([[], [[1.0]], "P", None, object(), [[0.5, 0.5], [1.0]]]),
)
scalars = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-3, 3),
    st.booleans(),
    st.complex_numbers(max_magnitude=2),
    st.text(max_size=3),
    st.none(),
    st.just(np.ones(2)),
)


def valid_P(S, A, rng=np.random.default_rng(0)):
    return rng.dirichlet(np.ones(S), size=(S, A))


@FUZZ
@given(P=arrays, rho=st.none() | arrays, gamma=scalars, tau=scalars)
def test_tabular_mdp_create_rejects_or_builds_a_valid_mdp(P, rho, gamma, tau):
    try:
        mdp = TabularMDP.create(P, gamma=gamma, tau=tau, rho=rho)
    except (TypeError, ValueError) as err:
        assert str(err).startswith(FIELDS), err
        return
    P = np.asarray(mdp.P)
    assert np.isfinite(P).all() and (P >= 0).all()
    np.testing.assert_allclose(P.sum(-1), 1.0, atol=1e-5)
    assert 0 <= float(mdp.gamma) < 1 and float(mdp.tau) > 0


@FUZZ
@given(
    gamma=scalars,
    tau=scalars,
    ref=st.none() | arrays,
    dtype=st.sampled_from([None, "float32", "int32", "complex64", "bool", "x"]),
)
def test_tabular_mdp_create_scalars_and_dtypes(gamma, tau, ref, dtype):
    try:
        mdp = TabularMDP.create(
            valid_P(3, 2), gamma=gamma, tau=tau, ref_policy=ref, dtype=dtype
        )
    except (TypeError, ValueError) as err:
        assert str(err).startswith(FIELDS), err
        return
    assert np.isfinite(np.asarray(mdp.P)).all()


sizes = st.one_of(
    st.integers(-2, 5),
    st.sampled_from([10**7, 2**40]),
    st.floats(0, 5),
    st.booleans(),
    st.text(max_size=2),
    st.none(),
)
SUITE_FIELDS = (
    "num_states:",
    "num_actions:",
    "branching:",
    "dim:",
    "horizon:",
    "gamma:",
    "tau:",
    "slip:",
    "concentration:",
    "dtype:",
    "height:",
    "width:",
    "sigma:",
    "regularization:",
)


def check_suite_call(make):
    try:
        out = make()
    except (TypeError, ValueError) as err:
        assert str(err).startswith(SUITE_FIELDS), err
        return
    mdp = out.mdp if hasattr(out, "mdp") else out
    P = np.asarray(mdp.P)
    assert P.size and np.isfinite(P).all()
    np.testing.assert_allclose(P.sum(-1), 1.0, atol=1e-5)


KEY = jax.random.key(0)


@FUZZ
@given(S=sizes, A=sizes, b=sizes, gamma=scalars, dtype=st.sampled_from(
    [None, "float32", "int32", "complex64"]))  # fmt: skip
def test_random_mdp_generators(S, A, b, gamma, dtype):
    check_suite_call(lambda: suites.dirichlet_mdp(KEY, S, A, gamma=gamma, dtype=dtype))
    check_suite_call(lambda: suites.garnet_mdp(KEY, S, A, b, dtype=dtype))


@FUZZ
@given(S=sizes, A=sizes, d=sizes, h=sizes, slip=scalars, tau=scalars)
def test_problem_and_grid_generators(S, A, d, h, slip, tau):
    check_suite_call(lambda: suites.sobirl_synthetic(KEY, num_states=S, dim=d))
    check_suite_call(
        lambda: suites.shaping_problem(
            KEY, num_states=S, num_actions=A, dim=d, horizon=h, tau=tau
        )
    )
    check_suite_call(lambda: suites.chain_mdp(None, S, slip=slip))
    check_suite_call(lambda: suites.gridworld_mdp(None, S, A, slip=slip))
    check_suite_call(lambda: suites.bandit_mdp(A, tau=tau))


# ------------------------------------------------------------------- configs

toml_scalars = st.one_of(
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(string.ascii_letters + "_", max_size=8),
)
known = list(RunConfig.__dataclass_fields__) + ["learning_rate", "", "x"]
config_values = st.dictionaries(
    st.sampled_from(known),
    toml_scalars
    | st.dictionaries(
        st.sampled_from(
            [
                "optimizer",
                "zeta",
                "inner_steps",
                "num_states",
                "dim",
                "gamma",
                "tau",
                "w0",
                "bogus",
            ]
        ),  # fmt: skip
        toml_scalars,
        max_size=3,
    ),
    max_size=5,
)


@FUZZ
@given(values=config_values)
def test_make_config_rejects_with_config_error_or_accepts(values):
    try:
        cfg = make_config(values)
    except ConfigError as err:
        assert str(err).split(":")[0].split(".")[0] in (
            *RunConfig.__dataclass_fields__,
            *values,
            "config",
        ), err
        return
    assert cfg.batch >= 1 and cfg.iterations >= 1
    assert math.isfinite(cfg.checkpoint_seconds)


@FUZZ
@given(text=st.text(max_size=60))
def test_arbitrary_toml_text_gives_config_error(tmp_path, text):
    from bilevel_rl.experiment.config import load_config

    path = tmp_path / "fuzz.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_config(str(path))
    except ConfigError:
        pass


# ---------------------------------------------------------------- command line

tokens = st.sampled_from(
    [
        "--batch", "--iterations", "--algorithm", "--suite", "--seed", "--dtype",
        "--seeds", "-p", "--suite-param", "--log-every", "--checkpoint-seconds",
        "--resume", "0", "-1", "3", "1e400", "nan", "float16", "m_sobirl", "sobirl",
        "stoc_sobirl", "beta=-1", "beta", "num_states=0", "gamma=2", "dim=x", "=",
        "", "--", "é",
    ]
)  # fmt: skip


@FUZZ
@given(argv=st.lists(tokens, max_size=6))
def test_hostile_command_lines_are_usage_errors(tmp_path, argv):
    parser = build_parser()
    try:
        args = parser.parse_args(["run", *argv, "--out", str(tmp_path / "o")])
    except SystemExit as stop:
        assert stop.code == 2
        return
    try:
        resolve_config(args)
    except UsageError as err:
        assert str(err) and "\n" not in str(err)


def test_fuzz_examples_are_bounded():
    # The fuzz suite must stay cheap in CI: a guard against raising the budget.
    assert FUZZ.max_examples <= 100


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.ones((2, 2, 2), np.complex64) / 2, "P: must hold real numbers"),
        (np.ones((2, 2, 2), bool), "P: must hold real numbers"),
        (np.zeros((0, 2, 0)), "P: must not be empty"),
        (np.full((2, 2, 2), np.inf), "P: entries must be finite"),
    ],
)
def test_named_error_classes(bad, message):
    with pytest.raises((TypeError, ValueError), match=message):
        TabularMDP.create(bad, gamma=0.9, tau=1.0)
