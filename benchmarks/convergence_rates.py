"""Convergence rates of the SoBiRL family on a non-convex suite, one call per method.

On a batch of random reward-shaping instances (``suites.shaping_problem``:
Dirichlet MDPs, ``r_x = tanh(Phi x)``, the leader's negative H-step return plus a
ridge term; non-convex in ``x``), every method runs ``K`` iterations for the whole
batch in one compiled call and records the exact ``‖∇φ(x_k)‖`` (MATH.md §2). For a
grid of ``K`` in [100, K_max] we report, averaged over the batch,

* ``avg_sq(K) = (1/K) sum_{k<K} ‖∇φ(x_k)‖²`` (the quantity the theory bounds:
  ``O(1/K)`` for exact, M-SoBiRL and SoBiRL, ``Õ(K^{-2/3})`` for Stoc-SoBiRL),
* ``min_sq(K) = min_{k<K} ‖∇φ(x_k)‖²``,

and fit log-log slopes over ``K in [100, K_max]``. Methods: exact hyper-gradient
descent, M-SoBiRL, SoBiRL, Stoc-SoBiRL (STORM) and its moving-average variant.
Nothing is tuned per method beyond one step size shared by the deterministic ones.

Writes ``benchmarks/results/convergence_rates.{json,png}``.
Usage: ``python benchmarks/convergence_rates.py [--batch 512] [--iters 3000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault(
    "XLA_FLAGS", f"--xla_force_host_platform_device_count={os.cpu_count()}"
)

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
from machine import cpu_model  # noqa: E402

from bilevel_rl.algorithms import (  # noqa: E402
    exact,
    m_sobirl,
    run,
    sobirl,
    stoc_sobirl,
)
from bilevel_rl.suites import shaping_problem  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SUITE = dict(
    num_states=6,
    num_actions=3,
    dim=5,
    horizon=8,
    gamma=0.8,
    tau=0.5,
    regularization=0.01,
)
BETA = 0.5  # shared constant step of the deterministic-step methods
BOUNDS = {
    "exact": -1.0,
    "m_sobirl": -1.0,
    "sobirl": -1.0,
    "stoc_sobirl_storm": -2.0 / 3.0,
    "stoc_sobirl_average": -2.0 / 3.0,
}


def methods(quick: bool):
    stoc = dict(num_samples=4, num_rollouts=1, rollout_length=10, inner_steps=3)
    if quick:
        stoc = dict(num_samples=2, num_rollouts=1, rollout_length=4, inner_steps=2)
    return {
        "exact": exact.make(beta=BETA),
        "m_sobirl": m_sobirl.make(beta=BETA, zeta=0.5, inner_steps=3, w0="zeros"),
        "sobirl": sobirl.make(beta=BETA, num_samples=8, inner_steps=3),
        "stoc_sobirl_storm": stoc_sobirl.make(momentum="storm", **stoc),
        "stoc_sobirl_average": stoc_sobirl.make(momentum="average", **stoc),
    }


def rate_curves(grad_norms: np.ndarray, grid: np.ndarray):
    """Batch means of avg_sq(K) and min_sq(K) for K in ``grid``."""
    sq = grad_norms.astype(np.float64) ** 2  # [B, K]
    csum = np.cumsum(sq, axis=1)
    cmin = np.minimum.accumulate(sq, axis=1)
    avg = csum[:, grid - 1] / grid
    mins = cmin[:, grid - 1]
    return avg.mean(0), mins.mean(0), np.median(avg, 0), np.median(mins, 0)


def fit_slope(grid, values, k_min=100):
    keep = (grid >= k_min) & (values > 0)
    return float(np.polyfit(np.log(grid[keep]), np.log(values[keep]), 1)[0])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--iters", type=int, default=3000)
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument(
        "--out", default=os.path.join(HERE, "results", "convergence_rates")
    )
    args = parser.parse_args()
    if args.quick:
        args.batch, args.iters = 4, 120
    B, K = args.batch, args.iters
    load = os.getloadavg()

    keys = jax.random.split(jax.random.key(0), B)
    problems = jax.vmap(lambda k: shaping_problem(k, **SUITE))(keys)
    grid = np.unique(np.geomspace(10, K, 30).astype(int))

    results = {}
    for name, solver in methods(args.quick).items():
        t0 = time.perf_counter()
        _, hist = jax.block_until_ready(run(solver, problems, keys, K))
        wall = time.perf_counter() - t0
        g = np.asarray(hist["exact_grad_norm"])
        f = np.asarray(hist["exact_f"])
        avg, mins, avg_med, mins_med = rate_curves(g, grid)
        results[name] = {
            "wall_s_incl_compile": wall,
            "all_finite": bool(np.all(hist["finite"])),
            "avg_sq": avg.tolist(),
            "min_sq": mins.tolist(),
            "avg_sq_median": avg_med.tolist(),
            "min_sq_median": mins_med.tolist(),
            "slope_avg_sq": fit_slope(grid, avg),
            "slope_min_sq": fit_slope(grid, mins),
            "theory_bound_slope": BOUNDS[name],
            "f_initial_mean": float(f[:, 0].mean()),
            "f_final_mean": float(f[:, -1].mean()),
            "grad_norm_final_median": float(np.median(g[:, -1])),
        }
        print(
            f"{name:22s} slope avg_sq {results[name]['slope_avg_sq']:+.3f} "
            f"min_sq {results[name]['slope_min_sq']:+.3f} "
            f"f {results[name]['f_initial_mean']:.4f} -> "
            f"{results[name]['f_final_mean']:.4f}  ({wall:.1f} s)",
            flush=True,
        )

    out = {
        "benchmark": "convergence_rates",
        "suite": {
            "generator": "bilevel_rl.suites.shaping_problem",
            **SUITE,
            "batch": B,
            "seeds": "jax.random.split(key(0), batch)",
        },
        "iters": K,
        "grid": grid.tolist(),
        "fit_range": [100, K],
        "shared_beta": BETA,
        "methods": results,
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "devices": [str(d) for d in jax.devices()],
            "jax": jax.__version__,
            "load_average_at_start": load,
        },
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as fh:
        json.dump(out, fh, indent=2)
    _plot(grid, results, args.out + ".png", B)


def _plot(grid, results, path, B):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in (
        (axes[0], "avg_sq", "(1/K) Σ_k ‖∇φ(x_k)‖²"),
        (axes[1], "min_sq", "min_k ‖∇φ(x_k)‖²"),
    ):
        for name, res in results.items():
            ax.loglog(
                grid, res[key], label=f"{name} (slope {res['slope_' + key]:+.2f})"
            )
        ref = np.asarray(results["exact"][key])
        ax.loglog(grid, ref[0] * (grid / grid[0]) ** -1.0, "k:", lw=1, label="K^-1")
        ax.loglog(
            grid, ref[0] * (grid / grid[0]) ** (-2 / 3), "k--", lw=1, label="K^-2/3"
        )
        ax.set_xlabel("K")
        ax.set_title(title + f", mean over {B} instances")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
