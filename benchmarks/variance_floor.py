"""Why sampled Stoc-SoBiRL ends above its start on some constant-size instances.

On the first ``--batch`` instances of ``convergence_rates``' suite, at its constant
configuration (sizes ``(D, E, L) = (4, 1, 10)``, ``lr_k = 0.5 / (10 + k)^{1/3}``),
no momentum runs ``K`` iterations; the instances whose exact ``f`` ends above
``f(x_0)`` are the *risers*. On the risers and as many other instances, with the
same steps and keys, we then change one thing at a time:

* exact descent (no sampling at all),
* ``D = 32`` tuples instead of 4 (variance / 8),
* ``L = 40`` rollout steps instead of 10 (truncation bias ``gamma^L`` / 250),
* 30 inner steps instead of 3 (the follower's lag),
* STORM on fixed samples with ``c = 292`` (``c >= 8 L̃²``, as in ``convergence_rates``),
* the leave-one-out score baseline (``convergence_rates``' ``constant_baseline``), with
  no momentum and with STORM at ``c = 20`` (``c >= 8 L̃²`` with the baseline: L̃² = 2.4).

Per variant: the fraction of each group whose ``f`` decreased and the mean change of
``f``. Then on the first riser, over ``--seeds`` keys, the direction's mean-square
error ``‖d_k - ∇φ(x_k)‖²`` next to ``‖∇φ(x_k)‖²`` for no momentum and for STORM at
``c = 292`` and ``c = 20`` (outside the rule without a baseline), and for both with
the baseline (STORM at ``c = 20``, inside its rule), per window of ``k``.

Writes ``benchmarks/results/variance_floor.{json,png}``.
Usage: ``python benchmarks/variance_floor.py [--batch 64] [--iters 3000] [--seeds 16]``.
"""

from __future__ import annotations

import sys

import convergence_rates as rates
import harness
import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

from bilevel_rl.algorithms import Optimizer, exact, stoc_sobirl  # noqa: E402
from bilevel_rl.experiment import run  # noqa: E402
from bilevel_rl.suites import shaping_problem  # noqa: E402

NAME = "variance_floor"
# c = ceil(8 L̃²) measured by convergence_rates without and with the baseline
C_RULE, C_SMALL = 292.0, 20.0


def sampled(**changes):
    """Stoc-SoBiRL at the constant configuration with ``changes``."""
    options = dict(rates.SIZES, momentum="none", optimizer=rates.CONSTANT_STEP)
    return dict(options, **changes)


VARIANTS = {
    "exact": None,
    "none D=32": sampled(num_samples=32),
    "none L=40": sampled(rollout_length=40),
    "none 30 inner steps": sampled(inner_steps=30),
    "storm c=292": sampled(momentum="storm", momentum_scale=C_RULE),
    "none baseline": sampled(baseline=rates.LOO),
    "storm baseline c=20": sampled(
        momentum="storm", momentum_scale=C_SMALL, baseline=rates.LOO
    ),
}


def final_change(solver, problems, keys, K):
    """``f(x_K) - f(x_0)`` per instance ``[B]``."""
    f = np.asarray(run(solver, problems, keys, K)[1]["exact_f"])
    return f[:, -1] - f[:, 0]


def direction_errors(problem, options, iters, seeds):
    """``(‖d_k - ∇φ(x_k)‖², ‖∇φ(x_k)‖²)``, each ``[seeds, iters]``."""
    keys = jax.random.split(jax.random.key(1), seeds)
    out = stoc_sobirl.direction_errors(problem, keys, iters, **options)
    return tuple(np.asarray(a) for a in out)


def main(argv=None):
    parser = harness.parser(__doc__)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--iters", type=int, default=3000)
    parser.add_argument("--seeds", type=int, default=16)
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.iters, args.seeds = 8, 120, 2
    bench = harness.Bench(NAME, args, argv)
    K = args.iters
    keys = jax.random.split(jax.random.key(0), args.batch)  # convergence_rates' seeds
    problems = jax.vmap(lambda k: shaping_problem(k, **rates.SUITE))(keys)

    base = final_change(stoc_sobirl.make(**sampled()), problems, keys, K)
    risers = np.flatnonzero(base > 0)
    others = np.flatnonzero(base <= 0)[: max(len(risers), 1)]
    chosen = np.concatenate([risers, others])
    harness.log(f"no momentum, D=4: {len(risers)}/{args.batch} instances end higher")
    subset = jax.tree.map(lambda a: a[chosen], problems)
    groups = {"risers": slice(0, len(risers)), "others": slice(len(risers), None)}

    def record(name, change):
        rec = {}
        for group, part in groups.items():
            d = change[part]
            rec[group] = {
                "frac_f_decreased": float(np.mean(d < 0)) if d.size else None,
                "f_change_mean": float(np.mean(d)) if d.size else None,
                "f_change": d.tolist(),
            }
        harness.log(
            f"{name:22s} risers decreased {rec['risers']['frac_f_decreased']}, "
            f"others {rec['others']['frac_f_decreased']}"
        )
        return rec

    variants = {"none D=4": record("none D=4", base[chosen])}
    for name, options in VARIANTS.items():
        if options is None:
            solver = exact.make(optimizer=Optimizer(**rates.CONSTANT_STEP))
        else:
            solver = stoc_sobirl.make(**options)
        variants[name] = record(name, final_change(solver, subset, keys[chosen], K))

    probe = int(chosen[0])
    problem = jax.tree.map(lambda a: a[probe], problems)
    windows = [w for w in ((0, 100), (100, 500), (500, 1500), (1500, K)) if w[0] < K]
    errors = {}
    for name, options in {
        "none": sampled(),
        "storm c=292": VARIANTS["storm c=292"],
        "storm c=20": sampled(momentum="storm", momentum_scale=C_SMALL),
        "none baseline": VARIANTS["none baseline"],
        "storm baseline c=20": VARIANTS["storm baseline c=20"],
    }.items():
        err, g2 = direction_errors(problem, options, K, args.seeds)
        errors[name] = [
            {
                "k": [lo, min(hi, K)],
                "direction_mse": float(err[:, lo:hi].mean()),
                "grad_sq": float(g2[:, lo:hi].mean()),
            }
            for lo, hi in windows
        ]
        last = errors[name][-1]
        harness.log(
            f"{name:12s} late direction MSE {last['direction_mse']:.3g} vs "
            f"‖∇φ‖² {last['grad_sq']:.3g}"
        )

    bench.result.update(
        {
            "suite": {"from": "convergence_rates", **rates.SUITE},
            "constant_configuration": {"step": rates.CONSTANT_STEP, **rates.SIZES},
            "batch": args.batch,
            "iters": K,
            "risers": risers.tolist(),
            "others": others.tolist(),
            "variants": variants,
            "direction_error": {"instance": probe, "seeds": args.seeds, **errors},
        }
    )
    bench.save(plot(variants, errors), dpi=110)


def plot(variants, errors):
    plt = harness.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    names = list(variants)
    for i, group in enumerate(("risers", "others")):
        values = [variants[n][group]["f_change_mean"] or 0.0 for n in names]
        axes[0].bar(np.arange(len(names)) + 0.4 * i, values, 0.4, label=group)
    axes[0].axhline(0, color="k", lw=0.8)
    axes[0].set_xticks(np.arange(len(names)) + 0.2, names, rotation=30, fontsize=7)
    axes[0].set(title="mean f(x_K) - f(x_0)")
    axes[0].legend()
    for name, rows in errors.items():
        mids = [np.mean(r["k"]) for r in rows]
        axes[1].loglog(mids, [r["direction_mse"] for r in rows], "o-", label=name)
    rows = errors["none"]
    mids = [np.mean(r["k"]) for r in rows]
    axes[1].loglog(mids, [r["grad_sq"] for r in rows], "k--", label="‖∇φ‖² (none)")
    axes[1].set(xlabel="k (window centre)", title="E‖d_k - ∇φ(x_k)‖², one riser")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main(sys.argv[1:])
