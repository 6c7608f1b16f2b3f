"""Cost of one hyper-gradient vs ``S``, and the error of the unrolled one vs ``K``.

Problem: a Dirichlet(1) MDP (:func:`bilevel_rl.suites.dirichlet_mdp`), ``A = 8``,
``tau = 0.5``, the reward model ``r_x = tanh(phi x)`` with Gaussian features
``phi: [S, A, d]``, ``d = 16`` (:func:`bilevel_rl.rewards.tanh_reward`), and the upper
objective ``f(x, pi) = 1/2 ||pi - pi_target||_F^2 + lam/2 ||x||^2``.

**Cost vs S** (float64, ``gamma = 0.9``; plus ``gamma = 0.99`` and float32 at
``S = 200``). In one process run, on the same problem and with the same solver
tolerance ``tol``, it times (compiled ahead of time, ``compile_s``, then the median
of several steady-state calls interleaved across methods, ``block_until_ready``):

* ``forward``: one soft solve to ``tol``
  (:func:`bilevel_rl.soft.soft_value_iteration`, ``value_iteration`` and
  ``policy_iteration``) at the reward ``r_x``, and ``phi(x) = f(x, pi*_x)``;
* ``implicit``: ``jax.value_and_grad`` through
  :func:`bilevel_rl.implicit.soft_optimal_policy` (``adjoint="dense"`` and
  ``"iterative"``) with the same forward solver and ``tol``;
* ``closed_form``: the explicit adjoint formula
  (:func:`bilevel_rl.hypergrad.value_and_hypergradient`, dense adjoint);
* ``unrolled``: ``jax.value_and_grad`` through ``K = 200`` sweeps in a ``lax.scan``;
* ``adjoint``: the adjoint solve alone (:func:`bilevel_rl.implicit.adjoint_weights`)
  at the solution, to show how the backward pass splits.

The acceptance ratio is (implicit hyper-gradient) / (forward solve of the same
``tol`` and the same forward method) at ``S = 200, A = 8`` (target ``<= 3``).
Every gradient is checked against a tight reference (closed form, policy iteration
to round-off).

**Unrolled error vs K** (``S = 64``, float64, ``gamma in {0.9, 0.99}``, the
Dirichlet MDP and a slower-mixing Garnet MDP with branching 2):
``||g_unrolled(K) - g_ref|| / ||g_ref||`` on a geometric grid of ``K`` for two upper
objectives: the policy-only ``f`` above, and ``f + rho^T v`` that also reads ``V``.
A policy is invariant to adding a constant to ``V``, so the slow constant mode of
the error (rate ``gamma``) drops out of the policy-only objective, whose error
decays like ``(gamma |lambda_2|)^K`` (``lambda_2``: second eigenvalue of ``P_pi*``);
the value objective shows the ``gamma^K`` rate. Log-linear slopes are fitted and
reported next to ``log(gamma)`` and ``log(gamma |lambda_2|)``.

Usage::

    python benchmarks/hypergrad.py            # full run
    python benchmarks/hypergrad.py --quick    # smoke test (mostly compiles)
    python benchmarks/hypergrad.py --out /tmp/hg   # writes /tmp/hg.{json,png}
"""

from __future__ import annotations

import sys
import time

import harness
import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _hypergrad.cost import (  # noqa: E402
    DIM,
    K_UNROLLED,
    LAM,
    REF_TOL,
    TAU,
    TOL,
    A,
    bench_size,
)
from _hypergrad.plot import TARGET_RATIO, plot  # noqa: E402
from _hypergrad.unrolled import unrolled_error  # noqa: E402

NAME = "hypergrad"
HEADLINE_S = 200


def headline(sweep: list, S: int) -> dict:
    """Times and implicit/forward ratios at ``S``, against the target ratio."""
    head = next(r for r in sweep if r["S"] == S)
    ratios = {k: v for k, v in head["ratios"].items() if k.startswith("implicit")}
    return {
        "S": S,
        "A": A,
        "gamma": 0.9,
        "dtype": "float64",
        "tol": TOL,
        "median_ms": {k: 1e3 * v["median_s"] for k, v in head["times"].items()},
        "ratio_implicit_over_forward": ratios,
        "target_ratio": TARGET_RATIO,
        "meets_target": {k: bool(v <= TARGET_RATIO) for k, v in ratios.items()},
    }


def main(argv=None):
    parser = harness.parser(__doc__)
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[16, 64, 200, 512, 1024]
    )
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument(
        "--large-repeats", type=int, default=5, help="repeats for S >= 1024"
    )
    parser.add_argument("--unrolled-size", type=int, default=64)
    parser.add_argument("--kmax", type=int, default=1000)
    parser.add_argument("--num-k", type=int, default=22, help="points in the K grid")
    parser.add_argument(
        "--skip-extra",
        action="store_true",
        help="skip the gamma=0.99 and float32 points",
    )
    parser.add_argument("--skip-unrolled-error", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.repeats, args.large_repeats = [16], 2, 2
        args.unrolled_size, args.kmax, args.num_k = 16, 40, 5
    bench = harness.Bench(NAME, args, argv)
    log = bench.log
    head_S = HEADLINE_S if HEADLINE_S in args.sizes else args.sizes[-1]

    sweep = []
    for S in args.sizes:
        reps = args.large_repeats if S >= 1024 else args.repeats
        t0 = time.perf_counter()
        rec = bench_size(S, 0.9, jnp.float64, reps)
        rec["wall_s"] = time.perf_counter() - t0
        sweep.append(rec)
        log(
            f"S={S:5d} gamma=0.9 f64 in {rec['wall_s']:.1f}s: "
            + ", ".join(f"{k}={v:.2f}" for k, v in rec["ratios"].items())
        )
    extra = []
    extra_cases = () if args.skip_extra else ((0.99, jnp.float64), (0.9, jnp.float32))
    for gamma, dtype in extra_cases:
        t0 = time.perf_counter()
        extra.append(bench_size(head_S, gamma, dtype, args.repeats))
        extra[-1]["wall_s"] = time.perf_counter() - t0
        log(f"S={head_S} gamma={gamma} {jnp.dtype(dtype).name} done")

    ks = np.unique(np.round(np.geomspace(1, args.kmax, args.num_k)).astype(int))
    gammas = () if args.skip_unrolled_error else (0.9, 0.99)
    unrolled = unrolled_error(args.unrolled_size, gammas, ks)
    log("unrolled error vs K done")

    bench.result.update(
        {
            "config": {
                "A": A,
                "d": DIM,
                "tau": TAU,
                "lam": LAM,
                "gamma": 0.9,
                "tol": TOL,
                "reference_tol": REF_TOL,
                "K_unrolled": K_UNROLLED,
                "sizes": args.sizes,
                "repeats": args.repeats,
                "large_repeats": args.large_repeats,
                "mdp": "dirichlet_mdp(concentration=1)",
                "reward_model": "tanh_reward(features [S, A, d], x [d])",
                "upper": "1/2 ||pi - target||^2 + lam/2 ||x||^2 (+ rho^T v for the "
                "value objective of the unrolled-error study)",
            },
            "notes": [
                "ratio = median time of jax.value_and_grad through "
                "soft_optimal_policy / median time of one forward soft solve "
                "(soft_value_iteration) with the same method and tol, same problem, "
                "timings interleaved in one process.",
                "ratios_of_min_times: the same ratio from the fastest repeat (robust "
                "to load spikes from other processes).",
                "compile_s: ahead-of-time compilation (jit.lower.compile), apart "
                "from the timed calls.",
                "unrolled_error: rel_err of jax.grad through K scanned sweeps from "
                "v=0 vs the closed form at a policy-iteration solution; slope = "
                "least-squares slope of log(rel_err) vs K over K >= 4 and rel_err > "
                "fit_floor.",
            ],
            "headline": headline(sweep, head_S),
            "sweep": sweep,
            "extra_points": extra,
            "unrolled_S": args.unrolled_size,
            "unrolled_error": unrolled,
        }
    )
    bench.save(plot(bench.result), dpi=120)
    for kind, recs in unrolled.items():
        for g, rec in recs.items():
            log(
                f"{kind} gamma={g}: log gamma={rec['log_gamma']:.4f}, "
                f"log(gamma|l2|)={rec['log_gamma_abs_lambda2']:.4f}, "
                f"slope value={rec['value']['slope']}, "
                f"policy={rec['policy']['slope']}"
            )
    ratios = bench.result["headline"]["ratio_implicit_over_forward"]
    log(f"headline S={head_S}: " + ", ".join(f"{k}={v:.2f}" for k, v in ratios.items()))


if __name__ == "__main__":
    main(sys.argv[1:])
