"""Behaviour preserved across the estimator-protocol refactor.

``tests/data/reference_histories.npz`` holds fixed-seed histories of every
algorithm recorded with the code before the refactor
(``tests/data/make_reference_histories.py``, old option names). Each case below
builds the same solver with today's names; its history must equal the reference to
1e-12 in float64. Changed on purpose: HPGD's ``f`` is now ``f(x_k, pi*_{x_k})`` from
its own best response (solved to 1e-12; it was ``exact_f``, solved to 1e-10), and
every solver records ``inner_residual`` (new where the reference lacks it).
"""

import functools

import jax
import numpy as np
import pytest

from bilevel_rl import suites
from bilevel_rl.algorithms import (
    Optimizer,
    aihf,
    drlhf,
    exact,
    hpgd,
    m_sobirl,
    parl,
    pbrl,
    sobirl,
    stoc_sobirl,
)
from bilevel_rl.experiment import run

F64 = np.float64
REFERENCE = "tests/data/reference_histories.npz"
ITERS, KEY_SEED = 12, 7


def sgd(lr):
    return Optimizer(learning_rate=lr)


@functools.cache
def problem(name):
    jax.config.update("jax_enable_x64", True)
    k = jax.random.key(3)
    if name == "sobirl":
        return suites.sobirl_synthetic(k, num_states=5, num_actions=3, dim=6, dtype=F64)
    if name == "shaping":
        return suites.shaping_problem(
            k, num_states=5, num_actions=3, dim=4, horizon=4, dtype=F64
        )
    if name == "alignment":
        return suites.alignment_problem(
            k, num_states=4, num_actions=3, dim=3, num_demos=20, demo_horizon=8,
            num_comparisons=50, dtype=F64,
        )  # fmt: skip
    return suites.four_rooms_problem(dtype=F64)


STOC = dict(num_samples=3, num_rollouts=2, rollout_length=5, inner_steps=3)
CASES = {
    "exact": ("sobirl", lambda: exact.make(optimizer=sgd(0.05))),
    "m_sobirl": (
        "sobirl",
        lambda: m_sobirl.make(optimizer=sgd(0.05), zeta=0.5, inner_steps=5),
    ),
    "m_sobirl_w0_data": (
        "sobirl",
        lambda: m_sobirl.make(optimizer=sgd(0.05), w0="data"),
    ),
    "pbrl": (
        "sobirl",
        lambda: pbrl.make(
            optimizer=sgd(0.05), penalty=5.0, policy_step=0.5, inner_steps=2
        ),
    ),
    "parl": (
        "sobirl",
        lambda: parl.make(optimizer=sgd(0.05), inner_steps=5, policy_step=0.5),
    ),
    "parl_sampled": (
        "shaping",
        lambda: parl.make(optimizer=sgd(0.05), inner_steps=5, num_samples=4),
    ),
    "sobirl": (
        "shaping",
        lambda: sobirl.make(optimizer=sgd(0.05), inner_steps=3, num_samples=4),
    ),
    "sobirl_pmd": (
        "shaping",
        lambda: sobirl.make(
            optimizer=sgd(0.05),
            inner_steps=3,
            policy_step=2.0,
            inner_tol=1e-3,
            num_samples=4,
        ),  # fmt: skip
    ),
    "stoc_sobirl": ("shaping", lambda: stoc_sobirl.make(**STOC)),
    "stoc_sobirl_average": (
        "shaping",
        lambda: stoc_sobirl.make(momentum="average", **STOC),
    ),
    "stoc_sobirl_average_const": (
        "shaping",
        lambda: stoc_sobirl.make(
            momentum="average", average_weight=0.3, policy_step=1.5, **STOC
        ),
    ),
    "aihf": ("alignment", lambda: aihf.make(optimizer=sgd(0.5), inner_steps=3)),
    "aihf_sampled": (
        "alignment",
        lambda: aihf.make(
            optimizer=sgd(0.5),
            inner_steps=3,
            num_samples=5,
            horizon=6,
            policy_step=3.0,
        ),  # fmt: skip
    ),
    "drlhf": ("alignment", lambda: drlhf.make(optimizer=sgd(0.5), inner_steps=2)),
    "hpgd": (
        "four_rooms",
        lambda: hpgd.make(optimizer=sgd(0.1), num_samples=4, horizon=20),
    ),
}
CHANGED = {("hpgd", "f")}
"""Metrics whose definition changed on purpose (module docstring); compared to
1e-9 instead."""
RESOLVED_AT_ROUNDOFF = {"hpgd"}
"""Cases whose best response moved by round-off when its stopping test changed
(soft policy iteration now stops on the Bellman residual at the round-off floor):
HPGD's steps use the exact best response at gamma near 1, where exact_f moved by
7e-12 and grad_norm (~61 at iteration 1) by 9e-12 relative; compared to 1e-9."""
FIRST_ITERATION_ONLY = {"stoc_sobirl"}
"""Cases whose algorithm was corrected after the reference was recorded: STORM
re-evaluated re-drawn trajectories at the previous point (a key re-draw); it now
re-evaluates the same stored ones (docs/math.md §5). Iteration 0 has no
correction term and still equals the reference."""


@pytest.mark.parametrize("name", sorted(CASES))
def test_history_equals_the_pre_refactor_reference(name):
    suite, build = CASES[name]
    _, history = run(build(), problem(suite), jax.random.key(KEY_SEED), ITERS)
    with np.load(REFERENCE) as ref:
        expected = {
            k.split("/", 1)[1]: ref[k] for k in ref.files if k.startswith(name + "/")
        }
    assert expected, name
    missing = set(expected) - set(history)
    assert not missing, f"{name}: metrics no longer recorded: {missing}"
    upto = 1 if name in FIRST_ITERATION_ONLY else ITERS
    for metric, want in expected.items():
        loose = (name, metric) in CHANGED or name in RESOLVED_AT_ROUNDOFF
        tol = 1e-9 if loose else 1e-12
        np.testing.assert_allclose(
            history[metric][:upto], want[:upto], rtol=tol, atol=tol,
            err_msg=f"{name}/{metric}",
        )  # fmt: skip
