"""What ``bilevel-rl run`` leaves in its output folder.

* ``config.toml`` — the resolved configuration (``--resume`` reads it back);
* ``checkpoints/`` — the newest checkpoints (:mod:`bilevel_rl.experiment.checkpoint`);
* ``history.npz`` — every metric as ``[runs, iterations]``, the final leader
  variable (``x`` or ``x/<path>``, ``[runs, ...]``), ``instance`` and ``seed_index``
  (``[runs]``: which problem instance and which algorithm seed each run is),
  ``optimum`` (``[runs]``, NaN when unknown) and ``diverged_at`` (``[runs]``, -1 if
  the run stayed finite);
* ``metrics.json`` — the summary: per metric, the median, 10% and 90% quantiles,
  min and max of the final value over the runs that stayed finite, the diverged
  runs, timings and versions;
* ``convergence.png`` — ‖ĝ_k‖, the exact ‖∇φ(x_k)‖ (when tracked) and f (or the
  gap |f(x_k, π*) − f*| when the optimum is known) against k: median over the
  finite runs with a 10–90% band.
"""

from __future__ import annotations

import json
import os
import platform

import numpy as np

from bilevel_rl.experiment import diverged_at

QUANTILES = {"median": 50, "p10": 10, "p90": 90}


def write_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def history_arrays(cfg, problems, state, history) -> dict[str, np.ndarray]:
    """The arrays of ``history.npz``."""
    import jax

    arrays = {name: np.asarray(v) for name, v in history.items()}
    x = getattr(state, "x", None)
    if x is not None:
        leaves = jax.tree.leaves_with_path(x)
        for path, leaf in leaves:
            name = "x" + jax.tree_util.keystr(path, simple=True, separator="/")
            arrays[name if len(leaves) > 1 else "x"] = np.asarray(leaf)
    runs = np.arange(cfg.num_runs)
    arrays["instance"] = runs // cfg.seeds
    arrays["seed_index"] = runs % cfg.seeds
    arrays["optimum"] = np.asarray(problems.optimum, np.float64)
    arrays["diverged_at"] = diverged_at(history)
    return arrays


def summary(cfg, arrays: dict[str, np.ndarray], timing: dict) -> dict:
    """``metrics.json``: final-value statistics over the finite runs, timings."""
    import jax

    where = arrays["diverged_at"]
    ok = where < 0
    final = {}
    for name, values in arrays.items():
        if values.ndim != 2 or name == "finite":
            continue
        last = values[ok, -1].astype(np.float64)
        final[name] = (
            {k: float(np.percentile(last, q)) for k, q in QUANTILES.items()}
            | {"min": float(last.min()), "max": float(last.max())}
            if last.size
            else None
        )
    runs = np.flatnonzero(~ok)
    report = {
        "algorithm": cfg.algorithm,
        "suite": cfg.suite,
        "runs": cfg.num_runs,
        "batch": cfg.batch,
        "seeds": cfg.seeds,
        "iterations": cfg.iterations,
        "dtype": cfg.dtype,
        "final": final,
        "finite_runs": int(ok.sum()),
        "diverged": [
            {
                "run": int(r),
                "instance": int(arrays["instance"][r]),
                "seed_index": int(arrays["seed_index"][r]),
                "iteration": int(where[r]),
            }
            for r in runs
        ],
        **timing,
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "jax_version": jax.__version__,
        "python": platform.python_version(),
    }
    if "exact_f" in arrays and np.isfinite(arrays["optimum"]).any():
        gap = np.abs(arrays["exact_f"][ok, -1] - arrays["optimum"][ok])
        if gap.size:
            report["optimum_gap_max"] = float(gap.max())
    return report


def plot(arrays: dict[str, np.ndarray], path: str, title: str) -> None:
    """``convergence.png``: median and 10–90% band over the runs, each up to the
    iteration where it diverged (if it did)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = arrays["finite"].astype(bool)
    panels = [
        ("grad_norm", "‖ĝ_k‖ (the algorithm's estimate)", True),
        ("exact_grad_norm", "exact ‖∇φ(x_k)‖", True),
        ("f", "f(x_k, π_k)", False),
    ]
    panels = [p for p in panels if p[0] in arrays]
    if "exact_f" in arrays and np.isfinite(arrays["optimum"]).all():
        # A known optimum: show the gap f(x_k, π*_{x_k}) − f* on a log scale.
        arrays = {**arrays, "gap": arrays["exact_f"] - arrays["optimum"][:, None]}
        panels[-1] = ("gap", "f(x_k, π*_{x_k}) − f*", True)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, (name, label, log) in zip(np.atleast_1d(axes), panels, strict=True):
        values = np.where(finite, arrays[name].astype(np.float64), np.nan)
        if log:
            values = np.maximum(np.abs(values), np.finfo(np.float64).tiny)
        k = np.arange(values.shape[-1])
        alive = finite.any(axis=0)
        if alive.any():
            lo, mid, hi = np.nanpercentile(values[:, alive], [10, 50, 90], axis=0)
            ax.fill_between(k[alive], lo, hi, alpha=0.3, label="10–90%")
            ax.plot(k[alive], mid, label="median")
        ax.set_xlabel("iteration k")
        ax.set_title(label, fontsize=10)
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    if finite.any():
        np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(folder: str, cfg, problems, state, history, timing: dict) -> dict:
    """Writes ``history.npz``, ``metrics.json`` and ``convergence.png``."""
    arrays = history_arrays(cfg, problems, state, history)
    tmp = os.path.join(folder, "history.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, os.path.join(folder, "history.npz"))
    report = summary(cfg, arrays, timing)
    write_atomic(os.path.join(folder, "metrics.json"), json.dumps(report, indent=2))
    title = f"{cfg.algorithm} on {cfg.suite}: {cfg.num_runs} runs, {cfg.dtype}"
    plot(arrays, os.path.join(folder, "convergence.png"), title)
    return report
