"""Writes ``reference_histories.npz``: fixed-seed histories of every algorithm.

Run ONCE against the code before the estimator-protocol refactor (commit 0212bb4);
``tests/test_reference_histories.py`` checks that the refactored algorithms
reproduce these arrays to 1e-12 in float64. Kept for provenance; re-running it on
the refactored code would overwrite the reference with the code under test.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

from bilevel_rl import algorithms as al  # noqa: E402
from bilevel_rl import suites  # noqa: E402
from bilevel_rl.algorithms.hpgd import target_reward  # noqa: E402

F64 = jnp.float64
ITERS = 12
KEY = jax.random.key(7)


def problems():
    k = jax.random.key(3)
    return {
        "sobirl": suites.sobirl_synthetic(
            k, num_states=5, num_actions=3, dim=6, dtype=F64
        ),
        "shaping": suites.shaping_problem(
            k, num_states=5, num_actions=3, dim=4, horizon=4, dtype=F64
        ),
        "alignment": suites.alignment_problem(
            k,
            num_states=4,
            num_actions=3,
            dim=3,
            num_demos=20,
            demo_horizon=8,
            num_comparisons=50,
            dtype=F64,
        ),
        "four_rooms": suites.four_rooms_problem(dtype=F64),
    }


CASES = {
    # name: (suite, old make call)
    "exact": ("sobirl", lambda: al.exact.make(beta=0.05)),
    "m_sobirl": (
        "sobirl",
        lambda: al.m_sobirl.make(beta=0.05, zeta=0.5, inner_steps=5),
    ),
    "m_sobirl_w0_data": ("sobirl", lambda: al.m_sobirl.make(beta=0.05, w0="data")),
    "pbrl": (
        "sobirl",
        lambda: al.pbrl.make(beta=0.05, penalty=5.0, policy_step=0.5, policy_steps=2),
    ),
    "parl": ("sobirl", lambda: al.parl.make(beta=0.05, inner_steps=5, pg_step=0.5)),
    "parl_sampled": (
        "shaping",
        lambda: al.parl.make(beta=0.05, inner_steps=5, num_samples=4),
    ),
    "sobirl": (
        "shaping",
        lambda: al.sobirl.make(beta=0.05, inner_steps=3, num_samples=4),
    ),
    "sobirl_pmd": (
        "shaping",
        lambda: al.sobirl.make(
            beta=0.05, inner_steps=3, eta=2.0, inner_tol=1e-3, num_samples=4
        ),
    ),
    "stoc_sobirl": (
        "shaping",
        lambda: al.stoc_sobirl.make(
            num_samples=3, num_rollouts=2, rollout_length=5, inner_steps=3
        ),
    ),
    "stoc_sobirl_average": (
        "shaping",
        lambda: al.stoc_sobirl.make(
            momentum="average",
            num_samples=3,
            num_rollouts=2,
            rollout_length=5,
            inner_steps=3,
        ),
    ),
    "stoc_sobirl_average_const": (
        "shaping",
        lambda: al.stoc_sobirl.make(
            momentum="average",
            average_weight=0.3,
            num_samples=3,
            num_rollouts=2,
            rollout_length=5,
            inner_steps=3,
            eta=1.5,
        ),
    ),
    "aihf": ("alignment", lambda: al.aihf.make(eta=0.5, inner_steps=3)),
    "aihf_sampled": (
        "alignment",
        lambda: al.aihf.make(
            eta=0.5, inner_steps=3, num_trajectories=5, horizon=6, pmd_eta=3.0
        ),
    ),
    "drlhf": ("alignment", lambda: al.drlhf.make(eta=0.5, inner_steps=2)),
    "hpgd": (
        "four_rooms",
        lambda: al.hpgd.make(
            upper_reward=target_reward, beta=0.1, num_trajectories=4, horizon=20
        ),
    ),
}


def main(path):
    probs = problems()
    out = {}
    for name, (suite, build) in CASES.items():
        _, history = al.run(build(), probs[suite], KEY, ITERS)
        for metric, values in history.items():
            out[f"{name}/{metric}"] = np.asarray(values)
        print(name, sorted(history))
    np.savez(path, **out)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/data/reference_histories.npz")
