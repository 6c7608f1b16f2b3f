"""Atomic, self-checking checkpoints of a run: one ``.npz`` file per checkpoint.

Format: ``ckpt-<iteration:09d>.npz``, an uncompressed NumPy zip archive holding the
arrays ``leaf_<i>`` (the flattened leaves of the saved pytree, PRNG keys as their raw
key data) and ``meta`` (a JSON string: iteration, a format version, which leaves are
keys, and whatever the caller adds). Why not orbax: our state is a few host arrays
per instance, the write must be synchronous (a checkpoint that returns must be on
disk), and a zip archive already carries a CRC-32 of every member, so a file cut
short by a crash or a full disk is detected on load without a separate manifest —
no extra dependency needed.

A write goes to ``.ckpt-<iteration>.npz.tmp``, is ``fsync``-ed, renamed over the final
name (atomic on POSIX) and the folder is ``fsync``-ed; a process killed mid-write
leaves only a ``.tmp`` file, which is ignored. The newest ``keep`` checkpoints are
kept; :func:`load_latest` returns the newest one that reads back intact, so a
damaged newest file falls back to the one before.
"""

from __future__ import annotations

import glob
import json
import os
import zipfile
import zlib

import jax
import numpy as np

from bilevel_rl.types import PyTree

FORMAT_VERSION = 1
_PATTERN = "ckpt-*.npz"


class CheckpointError(ValueError):
    """A checkpoint folder holds no usable checkpoint, or one for another run."""


class DamagedCheckpoint(CheckpointError):
    """A checkpoint file that does not read back (truncated, bad CRC, not a zip)."""


_READ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def save(
    directory: str,
    iteration: int,
    tree: PyTree,
    meta: dict,
    *,
    extras: dict[str, np.ndarray] | None = None,
    keep: int = 2,
) -> str:
    """Writes ``tree`` (arrays, incl. PRNG keys) as checkpoint ``iteration``.

    Args:
        directory: folder of the run's checkpoints (created if missing).
        iteration: number of iterations the saved state has completed.
        tree: pytree of arrays to save (moved to host); read back into the same
            structure by :func:`read`.
        meta: JSON-serializable information stored alongside.
        extras: named arrays of any shape saved as they are (e.g. the history so
            far); returned by :func:`read` without checking.
        keep: number of newest checkpoints to keep (older ones are deleted after
            the new one is safely on disk).

    Returns:
        The path of the written file.
    """
    os.makedirs(directory, exist_ok=True)
    leaves = jax.tree.leaves(tree)
    keys = [i for i, x in enumerate(leaves) if _is_key(x)]
    arrays = {
        f"leaf_{i}": np.asarray(jax.random.key_data(x) if i in keys else x)
        for i, x in enumerate(leaves)
    }
    info = {**meta, "iteration": int(iteration), "format": FORMAT_VERSION}
    info["key_leaves"] = {str(i): str(jax.random.key_impl(leaves[i])) for i in keys}
    info["extras"] = sorted(extras or {})
    arrays.update({f"extra_{k}": np.asarray(v) for k, v in (extras or {}).items()})
    arrays["meta"] = np.asarray(json.dumps(info))
    final = os.path.join(directory, f"ckpt-{int(iteration):09d}.npz")
    tmp = os.path.join(directory, f".ckpt-{int(iteration):09d}.npz.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    _fsync_dir(directory)
    for old in list_checkpoints(directory)[:-keep]:
        os.remove(old)
    return final


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_checkpoints(directory: str) -> list[str]:
    """Checkpoint files in ``directory``, oldest first (``.tmp`` files excluded)."""
    return sorted(glob.glob(os.path.join(directory, _PATTERN)))


def read(path: str, like: PyTree) -> tuple[PyTree, dict[str, np.ndarray], dict]:
    """Reads one checkpoint into the structure of ``like``.

    Args:
        path: a ``ckpt-*.npz`` file.
        like: a pytree (arrays or ``jax.ShapeDtypeStruct``) with the expected
            structure, shapes and dtypes.

    Returns:
        ``(tree, extras, meta)``.

    Raises:
        DamagedCheckpoint: the file does not read back (truncated, bad CRC).
        CheckpointError: the file does not match ``like`` (names the first
            mismatching leaf).
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            data = {name: archive[name] for name in archive.files}
        meta = json.loads(str(data.pop("meta")))
        extras = {k: data.pop(f"extra_{k}") for k in meta.get("extras", [])}
    except _READ_ERRORS as err:
        raise DamagedCheckpoint(f"{path}: damaged checkpoint ({err})") from None
    expected, treedef = jax.tree.flatten(like)
    if len(data) != len(expected) or meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: holds {len(data)} arrays, this run's state has {len(expected)} "
            "(a checkpoint of a different run or version)"
        )
    leaves = []
    for i, want in enumerate(expected):
        got = data[f"leaf_{i}"]
        if _is_key(want):
            impl = meta["key_leaves"].get(str(i))
            if impl is None:
                raise CheckpointError(f"{path}: leaf {i} should be a PRNG key")
            leaves.append(jax.random.wrap_key_data(got, impl=impl))
            continue
        if got.shape != tuple(want.shape) or got.dtype != want.dtype:
            raise CheckpointError(
                f"{path}: leaf {i} is {got.dtype}{list(got.shape)}, this run expects "
                f"{want.dtype}{list(want.shape)} (a checkpoint of a different run)"
            )
        leaves.append(got)
    return jax.tree.unflatten(treedef, leaves), extras, meta


def load_latest(directory: str, like: PyTree):
    """The newest checkpoint in ``directory`` that reads back intact.

    A damaged newest file (e.g. cut short by a crash) is skipped in favour of the
    one before it; a mismatch with ``like`` is an error, not a fall-back.

    Returns:
        ``(tree, extras, meta)`` as :func:`read`, or ``None`` when the folder holds
        no checkpoint.

    Raises:
        CheckpointError: checkpoints exist but none is intact, or the newest intact
            one belongs to a different run.
    """
    files = list_checkpoints(directory)
    damaged: list[str] = []
    for path in reversed(files):
        try:
            return read(path, like)
        except DamagedCheckpoint as err:
            damaged.append(str(err))
    if damaged:
        raise CheckpointError("no intact checkpoint: " + "; ".join(damaged))
    return None
