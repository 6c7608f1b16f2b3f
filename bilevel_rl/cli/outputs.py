"""What ``bilevel-rl run`` leaves in its output folder.

* ``config.toml`` — the resolved configuration (``--resume`` reads it back);
* ``checkpoints/`` — the two newest checkpoints: solver state, keys, finite flags
  and the iteration reached, no history (:mod:`bilevel_rl.experiment.checkpoint`);
* ``history/`` — the history, written as the run goes, one file per compiled
  segment of ``log_every`` iterations (:mod:`bilevel_rl.experiment.history`):
  ``segment-<first>-<last>.npz`` holds every metric per run at the recorded
  iterations (``[runs, R]``: every ``record_every``-th and the last; ``iterations``
  names them), the batch statistics of every metric at *every* iteration
  (``<metric>.p10``, ``.p50``, ``.p90``, ``.min``, ``.max`` over the runs still
  finite, ``.nonfinite`` counts) and ``diverged_at`` (``[runs]``, exact, -1 if the
  run stayed finite); ``runs.npz`` holds the final leader variable (``x`` or
  ``x/<path>``, ``[runs, ...]``), ``instance`` and ``seed_index`` (``[runs]``: which
  problem instance and which algorithm seed each run is) and ``optimum``
  (``[runs]``, NaN when unknown). ``bilevel_rl.experiment.load_history(OUT)``
  returns all of it as one dict of arrays (what ``history.npz`` held before, plus
  the statistics and ``iterations``);
* ``metrics.json`` — the summary: per metric, the median, 10% and 90% quantiles,
  min and max of the final value over the runs that stayed finite, the diverged
  runs, ``record_every``, timings and versions;
* ``convergence.png`` — ‖ĝ_k‖, the exact ‖∇φ(x_k)‖ (when tracked) and f (or the
  gap f(x_k, π*) − f* when every run has the same known optimum) against k: median
  and 10–90% band over the runs still finite at k, at every iteration (the batch
  statistics; no per-run data needed).
"""

from __future__ import annotations

import json
import os
import platform

import numpy as np

from bilevel_rl.experiment.history import load_final

QUANTILES = {"median": "p50", "p10": "p10", "p90": "p90"}
"""metrics.json's name of each quantile -> the history's statistic."""


def write_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def runs_arrays(cfg, problems, state) -> dict[str, np.ndarray]:
    """The arrays of ``history/runs.npz``: per run, the final leader variable,
    which instance and seed it is, and the known optimum."""
    import jax

    arrays = {}
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
    return arrays


def metric_names(stats: dict[str, np.ndarray]) -> list[str]:
    """The metrics of a history (those with batch statistics), ``finite`` aside."""
    return [k[: -len(".p50")] for k in stats if k.endswith(".p50")]


def summary(cfg, stats, runs, final, timing: dict) -> dict:
    """``metrics.json``: final-value statistics over the finite runs, timings.

    ``stats``: the history's batch statistics (:func:`load_history` with
    ``per_run=False``); their last entries are the final values' statistics over
    the runs still finite at the end, i.e. those that stayed finite. ``runs``: the
    arrays of ``runs.npz``; ``final``: the per-run final values
    (:func:`bilevel_rl.experiment.history.load_final`).
    """
    import jax

    where = stats["diverged_at"]
    ok = where < 0
    report_final = {}
    for name in metric_names(stats):
        report_final[name] = (
            {k: float(stats[f"{name}.{q}"][-1]) for k, q in QUANTILES.items()}
            | {s: float(stats[f"{name}.{s}"][-1]) for s in ("min", "max")}
            if ok.any()
            else None
        )
    report = {
        "algorithm": cfg.algorithm,
        "suite": cfg.suite,
        "runs": cfg.num_runs,
        "batch": cfg.batch,
        "seeds": cfg.seeds,
        "iterations": cfg.iterations,
        "dtype": cfg.dtype,
        "record_every": cfg.recording,
        "final": report_final,
        "finite_runs": int(ok.sum()),
        "diverged": [
            {
                "run": int(r),
                "instance": int(runs["instance"][r]),
                "seed_index": int(runs["seed_index"][r]),
                "iteration": int(where[r]),
            }
            for r in np.flatnonzero(~ok)
        ],
        **timing,
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "jax_version": jax.__version__,
        "python": platform.python_version(),
    }
    if "exact_f" in final and np.isfinite(runs["optimum"]).any():
        gap = np.abs(final["exact_f"][ok] - runs["optimum"][ok])
        if gap.size:
            report["optimum_gap_max"] = float(gap.max())
    return report


def plot(stats: dict[str, np.ndarray], optimum, path: str, title: str) -> None:
    """``convergence.png`` from the batch statistics at every iteration: median
    and 10–90% band over the runs still finite at each iteration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("grad_norm", "‖ĝ_k‖ (the algorithm's estimate)", True),
        ("exact_grad_norm", "exact ‖∇φ(x_k)‖", True),
        ("f", "f(x_k, π_k)", False),
    ]
    panels = [p for p in panels if f"{p[0]}.p50" in stats]
    shift = 0.0
    optimum = np.asarray(optimum, np.float64)
    if "exact_f.p50" in stats and np.isfinite(optimum).all() and np.ptp(optimum) == 0:
        # One known optimum: the quantiles of f(x_k, π*_{x_k}) − f* are those of
        # exact f shifted; show the gap on a log scale.
        shift = float(optimum.flat[0])
        panels[-1] = ("exact_f", "f(x_k, π*_{x_k}) − f*", True)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    alive = stats["finite.nonfinite"] < len(stats["diverged_at"].reshape(-1))
    k = np.arange(len(alive))
    for ax, (name, label, log) in zip(np.atleast_1d(axes), panels, strict=True):
        band = [stats[f"{name}.{q}"].astype(np.float64) for q in ("p10", "p50", "p90")]
        if name == "exact_f":
            band = [b - shift for b in band]
        if log:
            band = [np.maximum(np.abs(b), np.finfo(np.float64).tiny) for b in band]
        lo, mid, hi = band
        shown = alive & np.isfinite(mid)  # exact metrics: at recorded iterations
        if shown.any():
            ax.fill_between(k[shown], lo[shown], hi[shown], alpha=0.3, label="10–90%")
            ax.plot(k[shown], mid[shown], label="median")
        ax.set_xlabel("iteration k")
        ax.set_title(label, fontsize=10)
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    if alive.any():
        np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(folder: str, cfg, problems, state, stats, timing: dict) -> dict:
    """Writes ``history/runs.npz``, ``metrics.json`` and ``convergence.png``.

    ``stats``: what :func:`bilevel_rl.experiment.run` returned with
    ``history_dir=folder/history`` (the batch statistics and ``diverged_at``).
    """
    history_dir = os.path.join(folder, "history")
    runs = runs_arrays(cfg, problems, state)
    tmp = os.path.join(history_dir, ".runs.npz.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **runs)
    os.replace(tmp, os.path.join(history_dir, "runs.npz"))
    report = summary(cfg, stats, runs, load_final(history_dir), timing)
    write_atomic(os.path.join(folder, "metrics.json"), json.dumps(report, indent=2))
    title = f"{cfg.algorithm} on {cfg.suite}: {cfg.num_runs} runs, {cfg.dtype}"
    plot(stats, runs["optimum"], os.path.join(folder, "convergence.png"), title)
    return report
