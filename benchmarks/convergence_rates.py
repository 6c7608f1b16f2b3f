"""Convergence rates of the SoBiRL family on a non-convex suite, one call per method.

On a batch of random reward-shaping instances (``suites.shaping_problem``:
Dirichlet MDPs, ``r_x = tanh(Phi x)``, the leader's negative H-step return plus a
ridge term; non-convex in ``x``), every method runs ``K`` iterations for the whole
batch in one compiled call and records the exact ``‖∇φ(x_k)‖`` (docs/math.md §2). For a
grid of ``K`` in [100, K_max] we report, averaged over the batch,

* ``avg_sq(K) = (1/K) sum_{k<K} ‖∇φ(x_k)‖²`` (the quantity the theory bounds:
  ``O(1/K)`` for exact, M-SoBiRL and SoBiRL, ``Õ(K^{-2/3})`` for Stoc-SoBiRL),
* ``min_sq(K) = min_{k<K} ‖∇φ(x_k)‖²``,

and fit log-log slopes over ``K in [100, K_max]``, next to the exact objective
itself (mean, s.e. and the fraction of instances whose ``f`` decreased). Methods:
exact hyper-gradient descent, M-SoBiRL, SoBiRL, Stoc-SoBiRL with STORM (fixed
samples, and likelihood-ratio weighted), the moving average and no momentum. The
sampled methods run at constant sample sizes and steps: their curves are floors
(``rate_is_floor``), not the theorems' rates.
Nothing is tuned per method beyond one step size shared by the deterministic ones.

Writes ``benchmarks/results/convergence_rates.{json,png}``.
Usage: ``python benchmarks/convergence_rates.py [--batch 512] [--iters 3000]``.
"""

from __future__ import annotations

import os
import sys

import harness
import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

from bilevel_rl.algorithms import (  # noqa: E402
    Optimizer,
    exact,
    m_sobirl,
    sobirl,
    stoc_sobirl,
)
from bilevel_rl.experiment import run  # noqa: E402
from bilevel_rl.suites import shaping_problem  # noqa: E402

NAME = "convergence_rates"
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
SGD = Optimizer(learning_rate=BETA)
BOUNDS = {
    "exact": -1.0,
    "m_sobirl": -1.0,
    "sobirl": -1.0,
    "stoc_sobirl_storm": -2.0 / 3.0,
    "stoc_sobirl_storm_lr": -2.0 / 3.0,
    "stoc_sobirl_average": -2.0 / 3.0,
    "stoc_sobirl_none": None,
}
FLOORS = {
    "sobirl",
    "stoc_sobirl_storm",
    "stoc_sobirl_storm_lr",
    "stoc_sobirl_average",
    "stoc_sobirl_none",
}
"""Sampled methods at constant sample sizes and steps: their theorems' rates need
growing sizes (SoBiRL: the exact outer expectation; Stoc-SoBiRL: growing D, E and
L = O(log k)), so their curves here are noise/bias floors, not rates."""


def methods(quick: bool):
    stoc = dict(num_samples=4, num_rollouts=1, rollout_length=10, inner_steps=3)
    if quick:
        stoc = dict(num_samples=2, num_rollouts=1, rollout_length=4, inner_steps=2)
    return {
        "exact": exact.make(optimizer=SGD),
        "m_sobirl": m_sobirl.make(optimizer=SGD, zeta=0.5, inner_steps=3, w0="zeros"),
        "sobirl": sobirl.make(optimizer=SGD, num_samples=8, inner_steps=3),
        "stoc_sobirl_storm": stoc_sobirl.make(momentum="storm", **stoc),
        "stoc_sobirl_storm_lr": stoc_sobirl.make(
            momentum="storm", sample_reuse="likelihood_ratio", **stoc
        ),
        "stoc_sobirl_average": stoc_sobirl.make(momentum="average", **stoc),
        "stoc_sobirl_none": stoc_sobirl.make(momentum="none", **stoc),
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


def main(argv=None):
    parser = harness.parser(__doc__)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--iters", type=int, default=3000)
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.iters = 4, 120
    # One XLA host device per core: the batch is sharded over the cores.
    harness.set_host_devices(os.cpu_count() or 1)
    bench = harness.Bench(NAME, args, argv)
    B, K = args.batch, args.iters

    keys = jax.random.split(jax.random.key(0), B)
    problems = jax.vmap(lambda k: shaping_problem(k, **SUITE))(keys)
    grid = np.unique(np.geomspace(10, K, 30).astype(int))

    results = {}
    for name, solver in methods(args.quick).items():
        wall, _, (_, hist) = harness.once(
            lambda solver=solver: run(solver, problems, keys, K)
        )
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
            "rate_is_floor": name in FLOORS,
            "f_initial_mean": float(f[:, 0].mean()),
            "f_final_mean": float(f[:, -1].mean()),
            "f_final_se": float(f[:, -1].std() / np.sqrt(B)),
            "f_mean_curve": f.mean(0)[grid - 1].tolist(),
            "frac_f_decreased": float(np.mean(f[:, -1] < f[:, 0])),
            "transitions_per_iter": float(np.asarray(hist["transitions"]).mean()),
            "grad_norm_final_median": float(np.median(g[:, -1])),
        }
        bench.log(
            f"{name:22s} slope avg_sq {results[name]['slope_avg_sq']:+.3f} "
            f"min_sq {results[name]['slope_min_sq']:+.3f} "
            f"f {results[name]['f_initial_mean']:.4f} -> "
            f"{results[name]['f_final_mean']:.4f} "
            f"(decreased on {results[name]['frac_f_decreased']:.0%})  ({wall:.1f} s)"
        )

    bench.result.update(
        {
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
        }
    )
    bench.save(plot(grid, results, B), dpi=120)


def plot(grid, results, B):
    """avg_sq(K) and min_sq(K) of every method, with the K^-1 and K^-2/3 rates."""
    plt = harness.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    for ax, key, title in (
        (axes[0], "avg_sq", "(1/K) Σ_k ‖∇φ(x_k)‖²"),
        (axes[1], "min_sq", "min_k ‖∇φ(x_k)‖²"),
    ):
        for name, res in results.items():
            what = "floor" if res["rate_is_floor"] else "slope"
            label = f"{name} ({what} fit {res['slope_' + key]:+.2f})"
            ax.loglog(grid, res[key], label=label, ls="--" if what == "floor" else "-")
        ref = np.asarray(results["exact"][key])
        ax.loglog(grid, ref[0] * (grid / grid[0]) ** -1.0, "k:", lw=1, label="K^-1")
        ax.loglog(
            grid, ref[0] * (grid / grid[0]) ** (-2 / 3), "k--", lw=1, label="K^-2/3"
        )
        ax.set_xlabel("K")
        ax.set_title(title + f", mean over {B} instances")
        ax.legend(fontsize=7)
    for name, res in results.items():
        label = f"{name} ({res['frac_f_decreased']:.0%} decreased)"
        axes[2].semilogx(grid, res["f_mean_curve"], label=label)
    axes[2].set_xlabel("k")
    axes[2].set_title("mean exact f(x_k, π*)")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main(sys.argv[1:])
