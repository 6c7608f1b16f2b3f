"""Run histories that scale: thinned per-run metrics, full-resolution batch
statistics, append-only segment files and their loader.

:func:`bilevel_rl.experiment.run` records, for every compiled segment of iterations
``first .. last``:

* the per-run value of every metric at the *recorded* iterations only: iteration
  ``k`` is recorded when ``(k + 1) % record_every == 0`` and at the run's last
  iteration (:func:`recorded_iterations`);
* batch statistics of every metric at *every* iteration, computed on the device
  inside the compiled segment (:func:`batch_stats`), so only ``[length]`` arrays come
  back: ``<metric>.p10``, ``.p50``, ``.p90``, ``.min``, ``.max`` over the runs still
  finite at that iteration (NaN when none is) and ``<metric>.nonfinite``, the number
  of runs whose value is NaN/inf (for ``finite``: the number of runs that diverged
  at or before that iteration);
* for a metric that the solver's ``untracked_step`` leaves out (the exact metrics
  of ``track_exact``), the statistics at the iterations not recorded are NaN and
  its ``nonfinite`` count 0: it is computed at the recorded iterations only;
* ``diverged_at`` (``[B]``): the first iteration whose step was not finite, ``-1``
  if none — exact at full resolution whatever ``record_every`` is.

History folder layout (``run(..., history_dir=DIR)``; ``bilevel-rl run`` writes
``OUT/history/``): one file per segment, ``segment-<first:09d>-<last:09d>.npz``
(uncompressed; written to a ``.tmp`` name, ``fsync``-ed and renamed, so a file
either is whole or is not there), holding ``iterations`` (``[R]``, the recorded
iterations in the segment), every metric ``[B, R]`` (``[R]`` for one problem), the
statistics ``[last - first + 1]`` and ``diverged_at`` as of ``last``. Files are only
ever added; checkpoints hold no history, only the iteration they reached, and a
resumed run deletes the segments past its checkpoint before it writes them again
(:func:`truncate`). :func:`load_history` reads a folder back.
"""

from __future__ import annotations

import glob
import os
import re

import numpy as np

STATS = ("p10", "p50", "p90", "min", "max")
"""Per-iteration statistics of a metric over the finite runs (plus ``nonfinite``)."""

_QUANTILES = {"p10": 10, "p50": 50, "p90": 90}
_NAME = re.compile(r"segment-(\d{9})-(\d{9})\.npz$")


def recorded_iterations(
    num_iters: int, record_every: int, first: int = 0, last: int | None = None
) -> np.ndarray:
    """The iterations ``first .. last`` (default: to the end) whose per-run values
    a run of ``num_iters`` iterations records: every ``record_every``-th
    (``(k + 1) % record_every == 0``) and the last one, ``num_iters - 1``."""
    last = num_iters - 1 if last is None else last
    k = np.arange(first, last + 1)
    return k[((k + 1) % record_every == 0) | (k == num_iters - 1)]


def batch_stats(metrics: dict, batched: bool) -> dict:
    """Statistics over the batch (axis 0) at every iteration; traced inside ``jit``.

    Args:
        metrics: each metric ``[B, L]`` (``[L]`` when not ``batched``), with the
            boolean ``finite`` among them.
        batched: whether axis 0 is a batch axis.

    Returns:
        ``<metric>.<stat>`` for every stat of :data:`STATS` (the finite runs' values
        only, linear interpolation between order statistics as ``np.percentile``)
        and ``<metric>.nonfinite``, all ``[L]``.
    """
    import jax.numpy as jnp

    if not batched:
        metrics = {k: v[None] for k, v in metrics.items()}
    finite = metrics["finite"]
    alive = jnp.sum(finite, axis=0)  # runs finite at each iteration
    out = {"finite.nonfinite": finite.shape[0] - alive}
    top = jnp.maximum(alive - 1, 0)
    for name, values in metrics.items():
        if name == "finite":
            continue
        dtype = jnp.promote_types(values.dtype, jnp.float32)
        values = values.astype(dtype)
        out[f"{name}.nonfinite"] = jnp.sum(~jnp.isfinite(values), axis=0)
        # The finite runs' values first, in order; the others after them as +inf.
        ordered = jnp.sort(jnp.where(finite, values, jnp.inf).T, axis=1)

        def at(i, ordered=ordered):
            return jnp.take_along_axis(ordered, i[:, None], axis=1)[:, 0]

        none = jnp.asarray(jnp.nan, dtype)
        stats = {"min": at(jnp.zeros_like(top)), "max": at(top)}
        for stat, q in _QUANTILES.items():
            pos = (q / 100) * top.astype(dtype)
            lo = jnp.floor(pos).astype(top.dtype)
            t = pos - lo.astype(dtype)
            a, b = at(lo), at(jnp.minimum(lo + 1, top))
            diff = b - a  # NumPy's lerp, for the same rounding
            stats[stat] = jnp.where(t >= 0.5, b - diff * (1 - t), a + diff * t)
        for stat in STATS:
            out[f"{name}.{stat}"] = jnp.where(alive > 0, stats[stat], none)
    return out


# ------------------------------------------------------------------- files


def segments(folder: str) -> list[tuple[int, int, str]]:
    """``(first, last, path)`` of the segment files in ``folder``, in order."""
    found = []
    for path in glob.glob(os.path.join(folder, "segment-*.npz")):
        match = _NAME.search(os.path.basename(path))
        if match:
            found.append((int(match[1]), int(match[2]), path))
    return sorted(found)


def truncate(folder: str, iteration: int) -> None:
    """Deletes the segments from ``iteration`` on (and unfinished ``.tmp`` files).

    Raises:
        ValueError: the segments left do not cover ``0 .. iteration - 1`` exactly.
    """
    os.makedirs(folder, exist_ok=True)
    for path in glob.glob(os.path.join(folder, ".segment-*.tmp")):
        os.remove(path)
    expected = 0
    for first, last, path in segments(folder):
        if first >= iteration:
            os.remove(path)
        elif first != expected or last >= iteration:
            expected = -1
            break
        else:
            expected = last + 1
    if expected != iteration:
        raise ValueError(
            f"{folder}: the history segments do not cover iterations 0 to "
            f"{iteration - 1} (files missing or from another run)"
        )


def write_segment(folder: str, first: int, arrays: dict) -> str:
    """Writes one segment (``arrays`` as described in the module docstring)
    atomically; ``last`` is read from the length of the statistics."""
    length = len(arrays["finite.nonfinite"])
    name = f"segment-{first:09d}-{first + length - 1:09d}.npz"
    tmp = os.path.join(folder, f".{name}.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    path = os.path.join(folder, name)
    os.replace(tmp, path)
    return path


def _history_folder(folder: str) -> str:
    sub = os.path.join(folder, "history")
    return sub if not segments(folder) and os.path.isdir(sub) else folder


def load_history(folder: str, *, per_run: bool = True) -> dict[str, np.ndarray]:
    """A history folder as one dict of arrays.

    Args:
        folder: a history folder, or a ``bilevel-rl run`` output folder (its
            ``history/`` is read, with ``history/runs.npz``).
        per_run: also read the per-run arrays (``[B, R]`` each); ``False`` reads
            only the small ones.

    Returns:
        ``iterations`` (``[R]``: the recorded iterations), every metric ``[B, R]``
        (``[R]`` for one problem; ``per_run`` only), the statistics
        ``<metric>.<stat>`` ``[K]`` (every iteration ``0 .. K-1``), ``diverged_at``
        ``[B]``, and the arrays of ``runs.npz`` when present (``bilevel-rl run``:
        the final ``x``, ``instance``, ``seed_index``, ``optimum``).

    Raises:
        FileNotFoundError: ``folder`` holds no segments.
    """
    folder = _history_folder(folder)
    files = segments(folder)
    if not files:
        raise FileNotFoundError(f"{folder}: no history segments (segment-*.npz)")
    parts: dict[str, list] = {}
    for _, _, path in files:
        with np.load(path) as seg:
            for name in seg.files:
                small = "." in name or name == "iterations"
                if name != "diverged_at" and (per_run or small):
                    parts.setdefault(name, []).append(seg[name])
            diverged = seg["diverged_at"]
    out = {k: np.concatenate(v, axis=-1) for k, v in parts.items()}
    out["diverged_at"] = diverged
    runs = os.path.join(folder, "runs.npz")
    if os.path.exists(runs):
        with np.load(runs) as extra:
            out.update({k: extra[k] for k in extra.files})
    return out


def load_final(folder: str) -> dict[str, np.ndarray]:
    """The per-run value of every metric at the last recorded iteration (the
    run's last iteration), ``[B]`` each, read from the last segment only."""
    files = segments(_history_folder(folder))
    if not files:
        raise FileNotFoundError(f"{folder}: no history segments (segment-*.npz)")
    with np.load(files[-1][2]) as seg:
        return {
            k: seg[k][..., -1]
            for k in seg.files
            if "." not in k and k not in ("iterations", "diverged_at")
        }
