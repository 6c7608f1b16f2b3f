"""Convergence of the SoBiRL family on a non-convex suite, on the true objective.

On a batch of random reward-shaping instances (``suites.shaping_problem``:
Dirichlet MDPs, ``r_x = tanh(Phi x)``, the leader's negative H-step return plus a
ridge term; non-convex in ``x``), every method runs ``K`` iterations for the whole
batch in one compiled call and records the exact ``f(x_k, pi*_{x_k})`` and
``‖∇φ(x_k)‖`` (docs/math.md §2). Per method we report the exact ``f`` (mean ± s.e.
at the end, the fraction of instances whose ``f`` decreased, the curve), and for a
grid of ``K`` in [10, K], averaged over the batch,

* ``avg_sq(K) = (1/K) sum_{k<K} ‖∇φ(x_k)‖²`` (the quantity the theorems bound),
* ``min_sq(K) = min_{k<K} ‖∇φ(x_k)‖²``,

against iterations and against the transitions the estimates used.

Two configurations, each with the score term as in the paper (``baseline="none"``)
and with the leave-one-out baseline (``theorem_baseline``, ``constant_baseline``:
``b_j`` the mean loss of the other tuples, unbiased, docs/math.md §5; ``L̃²`` and
``c`` are measured again for it):

* ``theorem`` — each method under its theorem's configuration: exact descent,
  M-SoBiRL and deterministic SoBiRL (exact outer expectation) at one constant step
  ``beta`` with ``beta <= 1 / L_phi`` (``L_phi`` measured along the exact iterates:
  ``O(1/K)``); Stoc-SoBiRL (STORM with fixed samples, moving average, none) with
  ``lr_k = a / (w + k)^{1/3}``, ``eta_{k+1} = c lr_k²``, ``c >= 8 L̃²`` (``L̃²``
  measured: the estimator's mean-square Lipschitz constant for fixed samples),
  ``w`` such that ``eta <= 1``, and the growing sampling schedule ``sample_growth =
  1/3`` (``Õ(K^{-2/3})``). Slopes are fitted over ``K in [100, K]`` for these only.
* ``constant`` — the sampled methods at constant sample sizes (sampled SoBiRL,
  every Stoc-SoBiRL variant incl. likelihood-ratio STORM), ``lr_k = 0.5 / (10 +
  k)^{1/3}``: no theorem covers the constant sizes, so their curves are noise/bias
  floors and no slope is fitted. STORM's ``c`` still follows its condition ``c >=
  8 L̃²``, with ``L̃²`` measured for each sample reuse (fixed samples; likelihood
  ratio weights, whose ``L̃²`` is about 20x larger — its ``eta`` then stays 1, no
  momentum, over the whole run); the moving average uses the fixed-sample ``c``.

Nothing is tuned per method: one ``beta`` for the deterministic methods, one
``(a, w, c)`` and one schedule for every Stoc-SoBiRL variant of a configuration.
The deterministic methods draw no samples, so the ``_baseline`` configurations run
the sampled methods only.

``--configs constant --merge`` re-runs one configuration and carries the others
over from the existing results file, listed under ``carried_over``; the replaced
methods' summaries stay under ``replaced``. Each method records its ``batch``; the
theorem configuration's Stoc-SoBiRL runs go in phases (:func:`phase_ends`).

Writes ``benchmarks/results/convergence_rates.{json,png}``.
Usage: ``python benchmarks/convergence_rates.py [--batch 512] [--iters 3000]
[--theorem-batch 64] [--configs theorem,constant,theorem_baseline,constant_baseline]``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile

import harness
import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bilevel_rl import hypergradient  # noqa: E402
from bilevel_rl.algorithms import (  # noqa: E402
    Optimizer,
    exact,
    m_sobirl,
    sobirl,
    stoc_sobirl,
)
from bilevel_rl.experiment import load_history, run  # noqa: E402
from bilevel_rl.suites import shaping_problem  # noqa: E402

NAME = "convergence_rates"
SUITE = dict(
    num_states=6, num_actions=3, dim=5, horizon=8, gamma=0.8, tau=0.5,
    regularization=0.01,
)  # fmt: skip
BETA = 0.25  # the deterministic methods' shared step (checked against 1 / L_phi)
SIZES = dict(num_samples=4, num_rollouts=1, rollout_length=10, inner_steps=3)
CONSTANT_STEP = dict(learning_rate=0.5, schedule="inverse_cube_root", offset=10.0)
# The constant configuration as first run (commit abeacc1), at c = 20 for every
# variant — outside STORM's condition c >= 8 L̃² — kept as measured: per method the
# final exact f (mean, s.e.) and the fraction of the 512 instances whose f decreased.
EARLIER = {
    "constant at c = 20 (commit abeacc1)": {
        "sobirl": (-2.4462, 0.0146, 0.8633),
        "stoc_sobirl_storm": (-2.3290, 0.0155, 0.7832),
        "stoc_sobirl_storm_lr": (-1.7136, 0.0817, 0.4863),
        "stoc_sobirl_average": (-2.4129, 0.0151, 0.8848),
        "stoc_sobirl_none": (-2.4276, 0.0153, 0.8652),
        "storm - none (paired)": (0.0986, 0.0133),
    }
}
A = 0.5  # a of lr_k = a / (w + k)^{1/3} in the theorem configuration
GROWTH = dict(sample_growth=1 / 3, growth_offset=300.0)
RATES = {"deterministic": -1.0, "stochastic": -2.0 / 3.0}
CONFIGS = ("theorem", "constant", "theorem_baseline", "constant_baseline")
LOO = "leave_one_out"
SUMMARY_KEYS = (
    "batch", "f_initial_mean", "f_final_mean", "f_final_se", "frac_f_decreased",
    "slope_avg_sq", "slope_avg_sq_vs_transitions", "grad_norm_final_median",
)  # fmt: skip  # what --merge keeps of a method it replaces (under "replaced")


def baseline_of(config: str) -> str:
    """The score baseline a configuration runs with."""
    return LOO if config.endswith("_baseline") else "none"


def lipschitz_sq(
    problems, count=64, keys_per=4, delta=1e-3, reuse="fixed", baseline="none"
):
    """Mean of ``‖ĝ(x0; Xi) - ĝ(x0 - δu; Xi)‖² / δ²`` over the first ``count``
    instances and ``keys_per`` draws each, the samples reused as ``reuse``: ``L̃²``."""
    params = stoc_sobirl.Params(**SIZES, baseline=baseline)

    def one(problem, key):
        return stoc_sobirl.correction_sq_ratio(
            params, problem, problem.x0, key, delta, reuse
        )

    subset = jax.tree.map(lambda a: a[:count], problems)
    keys = jax.random.split(jax.random.key(7), (count, keys_per))
    per_key = jax.vmap(lambda p, ks: jax.vmap(lambda k: one(p, k))(ks))
    return float(jnp.mean(jax.jit(per_key)(subset, keys)))


def smoothness(xs, grads):
    """``L_phi``: the largest ``‖∇φ(x_{k+1}) - ∇φ(x_k)‖ / ‖x_{k+1} - x_k‖`` along
    the exact iterates ``xs``, ``grads`` ``[B, K, n]``."""
    dx = np.linalg.norm(np.diff(xs, axis=1), axis=-1)
    dg = np.linalg.norm(np.diff(grads, axis=1), axis=-1)
    keep = dx > 1e-9
    return float(np.max(dg[keep] / dx[keep]))


def exact_path(problems, K):
    """Exact descent's iterates ``[B, K, n]`` and gradients ``[B, K, n]``."""

    def one(problem):
        reward_fn, upper = problem.bind()

        def body(x, _):
            g = hypergradient(upper, reward_fn, x, problem.mdp)
            return x - BETA * g, (x, g)

        return jax.lax.scan(body, problem.x0, None, length=K)[1]

    return tuple(np.asarray(a) for a in jax.jit(jax.vmap(one))(problems))


def theorem_steps(l_sq):
    """``(a, w, c)``: ``c = 8 L̃²`` (rounded up), ``w`` with ``eta_0 = c lr_0² <= 1``."""
    c = momentum_scale(l_sq)
    w = max(10.0, math.ceil((c * A**2) ** 1.5))
    return A, w, c


def momentum_scale(l_sq):
    """STORM's condition ``c >= 8 L̃²``, rounded up."""
    return float(math.ceil(8 * l_sq))


def step_rules(problems, count, baseline):
    """STORM's conditions for one score baseline, measured on the first ``count``
    instances: ``L̃²`` for fixed samples and for likelihood-ratio weights, the
    theorem's ``(a, w, c)`` and the likelihood-ratio ``c``."""
    l_sq = lipschitz_sq(problems, count=count, baseline=baseline)
    l_sq_lr = lipschitz_sq(
        problems, count=count, reuse="likelihood_ratio", baseline=baseline
    )
    return {"l_sq": l_sq, "l_sq_lr": l_sq_lr, "steps": theorem_steps(l_sq),
            "c_lr": momentum_scale(l_sq_lr)}  # fmt: skip


def methods(config, K, rule, top=None):
    """The solvers of one configuration; ``rule`` from :func:`step_rules` for its
    baseline. ``top``: the growing schedule's static shapes are its sizes at
    iteration ``top`` (default ``K``: the whole run; see :func:`phase_ends`)."""
    baseline = baseline_of(config)
    sizes = dict(SIZES, baseline=baseline)
    steps, c_lr = rule["steps"], rule["c_lr"]
    if config.startswith("theorem"):
        sgd = Optimizer(learning_rate=BETA)
        a, w, c = steps
        lr = Optimizer(learning_rate=a, schedule="inverse_cube_root", offset=w)
        stoc = dict(
            optimizer=lr,
            momentum_scale=c,
            schedule_iters=K if top is None else top,
            **GROWTH,
            **sizes,
        )
        sampled = {
            "stoc_sobirl_storm": stoc_sobirl.make(momentum="storm", **stoc),
            "stoc_sobirl_average": stoc_sobirl.make(momentum="average", **stoc),
            "stoc_sobirl_none": stoc_sobirl.make(momentum="none", **stoc),
        }
        if baseline != "none":  # the deterministic methods draw no samples
            return sampled
        return {
            "exact": exact.make(optimizer=sgd),
            "m_sobirl": m_sobirl.make(
                optimizer=sgd, zeta=0.5, inner_steps=3, w0="zeros"
            ),
            "sobirl_deterministic": sobirl.make(
                optimizer=sgd, num_samples=None, inner_steps=3
            ),
            **sampled,
        }
    c = steps[2]
    stoc = dict(optimizer=Optimizer(**CONSTANT_STEP), **sizes)
    return {
        "sobirl": sobirl.make(
            optimizer=Optimizer(learning_rate=BETA),
            num_samples=8,
            inner_steps=3,
            baseline=baseline,
        ),  # fmt: skip
        "stoc_sobirl_storm": stoc_sobirl.make(
            momentum="storm", momentum_scale=c, **stoc
        ),
        "stoc_sobirl_storm_lr": stoc_sobirl.make(
            momentum="storm",
            sample_reuse="likelihood_ratio",
            momentum_scale=c_lr,
            **stoc,
        ),  # fmt: skip
        "stoc_sobirl_average": stoc_sobirl.make(
            momentum="average", momentum_scale=c, **stoc
        ),
        "stoc_sobirl_none": stoc_sobirl.make(momentum="none", **stoc),
    }


def phase_ends(K: int, min_length: int) -> list[int]:
    """Ends of the phases a theorem-configuration run is split into.

    The growing schedule's shapes are static: one compiled program draws at its
    largest sizes and masks down to ``(D_k, E_k, L_k)``, so early iterations pay
    for the late sizes. A phase ``[start, end)`` runs a solver whose static shapes
    are the sizes at ``end - 1`` (``schedule_iters = end - 1``: the same
    ``(D_k, E_k, L_k)`` for every ``k`` in the phase), continuing from the last
    phase's checkpoint. Phases end where the sizes change, at least
    ``min_length`` iterations apart; the last ends at ``K``. The algorithm and its
    sample sizes are those of the single-program run at every ``k``; its draws
    are too while the static ``E`` agrees (the draws are prefix-consistent in
    ``D`` and ``L``, not in ``E``: tests/test_storm.py), else they are other
    draws of the same distribution.
    """
    params = stoc_sobirl.Params(**SIZES, **GROWTH, schedule_iters=K)
    sizes = [stoc_sobirl.sample_sizes(params, k, np) for k in range(K)]
    ends, start = [], 0
    for k in range(1, K):
        if sizes[k] != sizes[k - 1] and k - start >= min_length:
            ends, start = [*ends, k], k
    return [*ends, K]


def run_phased(make, batch, keys, ends):
    """``run`` in phases (:func:`phase_ends`): ``make(top)`` is the solver whose
    static sample shapes are the sizes at ``top``. Returns the per-run history."""
    with tempfile.TemporaryDirectory() as folder:
        start = 0
        for end in ends:
            solver = make(end - 1)
            run(solver, batch, keys, end, checkpoint_dir=folder,
                segment_length=end - start)  # fmt: skip
            start = end
        return load_history(os.path.join(folder, "history"))


def rate_curves(grad_norms: np.ndarray, grid: np.ndarray):
    """Batch means of avg_sq(K) and min_sq(K) for K in ``grid``."""
    sq = grad_norms.astype(np.float64) ** 2  # [B, K]
    avg = np.cumsum(sq, axis=1)[:, grid - 1] / grid
    mins = np.minimum.accumulate(sq, axis=1)[:, grid - 1]
    return avg.mean(0), mins.mean(0)


def fit_slope(x, values, keep):
    keep = keep & (values > 0) & (x > 0)
    return float(np.polyfit(np.log(x[keep]), np.log(values[keep]), 1)[0])


def summarize(name, config, hist, grid, wall):
    g = np.asarray(hist["exact_grad_norm"])
    f = np.asarray(hist["exact_f"])
    B = f.shape[0]
    avg, mins = rate_curves(g, grid)
    used = np.cumsum(np.asarray(hist["transitions"], np.float64), axis=1).mean(0)
    kind = "stochastic" if name.startswith("stoc") else "deterministic"
    rated = config.startswith("theorem")
    in_range = grid >= 100
    res = {
        "configuration": config,
        "rate_is_floor": not rated,
        "theory_rate": RATES[kind] if rated else None,
        "wall_s_incl_compile": wall,
        "all_finite": bool(np.all(hist["finite"])),
        "f_initial_mean": float(f[:, 0].mean()),
        "f_final_mean": float(f[:, -1].mean()),
        "f_final_se": float(f[:, -1].std() / np.sqrt(B)),
        "f_final": f[:, -1].tolist(),
        "frac_f_decreased": float(np.mean(f[:, -1] < f[:, 0])),
        "f_mean_curve": f.mean(0)[grid - 1].tolist(),
        "avg_sq": avg.tolist(),
        "min_sq": mins.tolist(),
        "transitions_cumulative": used[grid - 1].tolist(),
        "transitions_total": float(used[-1]),
        "grad_norm_final_median": float(np.median(g[:, -1])),
        "grad_norm_final_max": float(np.max(g[:, -1])),
    }
    if rated:
        res["slope_avg_sq"] = fit_slope(grid, avg, in_range)
        res["slope_min_sq"] = fit_slope(grid, mins, in_range)
        if used[-1] > 0:
            res["slope_avg_sq_vs_transitions"] = fit_slope(
                used[grid - 1], avg, in_range
            )
    slope = f"slope {res['slope_avg_sq']:+.3f}" if rated else "floor"
    harness.log(
        f"{config:17s} {name:22s} {slope}  f {res['f_initial_mean']:.4f} -> "
        f"{res['f_final_mean']:.4f} ± {res['f_final_se']:.4f} (decreased on "
        f"{res['frac_f_decreased']:.1%})  ({wall:.1f} s)"
    )
    return res


def paired(results, a, b):
    """Mean and s.e. of the per-instance difference ``f_a - f_b`` at the end."""
    d = np.asarray(results[a]["f_final"]) - np.asarray(results[b]["f_final"])
    return {"mean": float(d.mean()), "se": float(d.std() / np.sqrt(d.size))}


def main(argv=None):
    parser = harness.parser(__doc__)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--theorem-batch", type=int, default=64)
    parser.add_argument("--iters", type=int, default=3000)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument(
        "--merge", action="store_true",
        help="carry the configurations not run over from the existing results file",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.quick:  # one configuration per estimator path
        args.batch, args.theorem_batch, args.iters = 4, 4, 120
        args.configs = "theorem,constant_baseline"
    harness.set_host_devices(os.cpu_count() or 1)  # the batch is sharded over cores
    bench = harness.Bench(NAME, args, argv)
    K = args.iters
    if args.merge:  # checked before anything runs
        with open(harness.RESULTS / f"{NAME}.json") as file:
            previous = json.load(file)
        if previous["iters"] != K:
            parser.error(f"--merge: the results file ran {previous['iters']} "
                         f"iterations, not --iters {K}")  # fmt: skip
    grid = np.unique(np.geomspace(10, K, 30).astype(int))
    keys = jax.random.split(jax.random.key(0), args.batch)
    problems = jax.vmap(lambda k: shaping_problem(k, **SUITE))(keys)

    count = min(64, args.batch)
    rules = {b: step_rules(problems, count, b) for b in ("none", LOO)}
    xs, grads = exact_path(jax.tree.map(lambda a: a[:64], problems), min(K, 500))
    l_phi = smoothness(xs, grads)
    for baseline, rule in rules.items():
        harness.log(
            f"baseline {baseline}: L̃² = {rule['l_sq']:.2f} (likelihood ratio "
            f"{rule['l_sq_lr']:.1f}, c = {rule['c_lr']:.0f}) -> (a, w, c) = "
            f"{rule['steps']}"
        )
    harness.log(f"L_phi = {l_phi:.3f}")

    results, configs = {}, args.configs.split(",")
    unknown = sorted(set(configs) - set(CONFIGS))
    if unknown:
        parser.error(f"--configs: unknown {unknown}; known: {', '.join(CONFIGS)}")
    for config in configs:
        B = args.theorem_batch if config.startswith("theorem") else args.batch
        batch = jax.tree.map(lambda a: a[:B], problems)
        rule = rules[baseline_of(config)]
        ends = phase_ends(K, K // 6) if config.startswith("theorem") else [K]
        for name, solver in methods(config, K, rule).items():
            phased = len(ends) > 1 and name.startswith("stoc")
            if not phased:
                wall, _, (_, hist) = harness.once(
                    lambda solver=solver: run(solver, batch, keys[:B], K)
                )
            else:  # the growing schedule, each phase at its own static shapes

                def make(top, name=name):
                    return methods(config, K, rule, top)[name]

                wall, _, hist = harness.once(
                    lambda make=make: run_phased(make, batch, keys[:B], ends)
                )
            res = summarize(name, config, hist, grid, wall)
            phases = ends if phased else [K]
            results[f"{config}/{name}"] = {**res, "batch": B, "phase_ends": phases}

    carried, replaced = [], []
    if args.merge:
        kept = previous["methods"]
        replaced = previous.get("replaced", [])
        gone = {}  # summaries of the methods this run replaces, with their run
        for name, res in kept.items():
            if name.split("/")[0] not in configs:
                results[name], carried = res, [*carried, name]
            else:
                gone[name] = {k: v for k, v in res.items() if k in SUMMARY_KEYS}
        if gone:
            replaced = [*replaced, {"created": previous["created"], "methods": gone}]
        configs = sorted({name.split("/")[0] for name in results})
    comparisons = {}
    for config in configs:
        storm = f"{config}/stoc_sobirl_storm"
        for other in ("stoc_sobirl_none", "stoc_sobirl_average"):
            if storm in results and f"{config}/{other}" in results:
                comparisons[f"{config}: storm - {other}"] = paired(
                    results, storm, f"{config}/{other}"
                )
    steps, c_lr = rules["none"]["steps"], rules["none"]["c_lr"]
    a, w, c = steps
    bench.result.update(
        {
            "suite": {
                "generator": "bilevel_rl.suites.shaping_problem",
                **SUITE,
                "seeds": "jax.random.split(key(0), batch): the first B instances",
            },  # fmt: skip
            "batch": {  # of the configurations run now; per method: its "batch"
                "constant": args.batch,
                "theorem": args.theorem_batch,
            },
            "configurations": {
                config: {"baseline": baseline_of(config)} for config in CONFIGS
            },
            "iters": K,
            "grid": grid.tolist(),
            "fit_range": [100, K],
            "conditions": {
                "beta": BETA,
                "L_phi_measured": l_phi,
                "beta_times_L_phi": BETA * l_phi,
                "beta_rule": "beta <= 1 / L_phi (L_phi: largest ‖Δ∇φ‖/‖Δx‖ "
                "along exact descent, 64 instances)",
                "L_tilde_sq_measured": rules["none"]["l_sq"],
                "a": a,
                "w": w,
                "c": c,
                "c_rule": "c >= 8 L̃² (STORM's correction error L̃²‖d‖²/c <= ‖d‖²/8)",
                "eta_0": c * (a / w ** (1 / 3)) ** 2,
                "schedule": {**GROWTH, "schedule_iters": K, **SIZES},
                "sizes_at_K": stoc_sobirl.sample_sizes(
                    stoc_sobirl.Params(**GROWTH, schedule_iters=K, **SIZES), K, np
                ),
                "L_tilde_sq_likelihood_ratio": rules["none"]["l_sq_lr"],
                "constant": {
                    "step": CONSTANT_STEP,
                    "c": steps[2],
                    "c_likelihood_ratio": c_lr,
                    "eta_likelihood_ratio_at_K": min(
                        1.0, c_lr * float(Optimizer(**CONSTANT_STEP).step_size(K)) ** 2
                    ),
                    **SIZES,
                },
                "leave_one_out": loo_conditions(rules[LOO], K),
            },  # fmt: skip
            "carried_over": carried,
            "replaced": replaced,
            "earlier_runs": EARLIER,
            "storm_vs_others_f_final": comparisons,
            "methods": results,
        }
    )
    bench.save(plot(grid, results), dpi=120)


def loo_conditions(rule, K):
    """The step conditions of the ``_baseline`` configurations."""
    a, w, c = rule["steps"]
    lr_K = float(Optimizer(**CONSTANT_STEP).step_size(K))
    return {
        "L_tilde_sq_measured": rule["l_sq"],
        "L_tilde_sq_likelihood_ratio": rule["l_sq_lr"],
        "a": a,
        "w": w,
        "c": c,
        "eta_0": c * (a / w ** (1 / 3)) ** 2,
        "constant": {
            "c": c,
            "c_likelihood_ratio": rule["c_lr"],
            "eta_likelihood_ratio_at_K": min(1.0, rule["c_lr"] * lr_K**2),
        },
    }


def plot(grid, results):
    """avg_sq vs K and vs transitions, and the exact f, for every method."""
    plt = harness.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
    colors = plt.cm.tab20(np.arange(len(results)) % 20)
    for color, (name, res) in zip(colors, results.items()):
        floor = res["rate_is_floor"]
        fit = "floor" if floor else f"slope {res['slope_avg_sq']:+.2f}"
        style = dict(ls="--" if floor else "-", color=color, label=f"{name} ({fit})")
        axes[0].loglog(grid, res["avg_sq"], **style)
        if res["transitions_total"] > 0:
            axes[1].loglog(res["transitions_cumulative"], res["avg_sq"], **style)
        label = f"{name} ({res['frac_f_decreased']:.0%} decreased)"
        axes[2].semilogx(
            grid, res["f_mean_curve"], ls=style["ls"], color=color, label=label
        )
    ref = next(r["avg_sq"][0] for r in results.values())
    for rate, ls in ((-1.0, "k:"), (-2 / 3, "k-.")):
        reference = ref * (grid / grid[0]) ** rate
        axes[0].loglog(grid, reference, ls, lw=1, label=f"K^{rate:.2f}")
    axes[0].set(xlabel="K", title="(1/K) Σ_k ‖∇φ(x_k)‖² (dashed: floors)")
    axes[1].set(xlabel="transitions used", title="(1/K) Σ_k ‖∇φ(x_k)‖² vs samples")
    axes[2].set(xlabel="k", title="mean exact f(x_k, π*)")
    for ax in axes:
        ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main(sys.argv[1:])
