"""``run``: scan a solver for ``num_iters`` steps, batched, fault-masked, resumable.

One compiled program initializes the state (``init``) and one advances it by a
segment of iterations (``lax.scan`` of ``step``); a batch of problems is
``jax.vmap``-ed, chunked to the cache and sharded over the devices of every process
(:func:`bilevel_rl.devices.batch_map`). Both programs are compiled ahead of time,
once per process and shape, so their compile time is reported separately.

Faults: after every step the new state and metrics are tested for NaN/inf. An
instance whose step produced a non-finite value keeps its last finite state from
then on (its ``finite`` metric is ``False`` from that iteration onward) while the
other instances of the batch keep going. The scan also counts each instance's
finite steps, which is its first non-finite iteration once it has one
(:func:`diverged_at`, exact whatever is recorded).

History: per-run metrics at every ``record_every``-th iteration; with a history
folder also batch statistics at every iteration, computed on the device, and the
segments written to disk as the run goes (:mod:`bilevel_rl.experiment.history`).
The iterations not recorded take ``solver.untracked_step`` where the solver has
one: the same state without the costly diagnostic metrics (``track_exact``'s), which
are NaN there (no statistics; ``nonfinite`` 0).

Checkpoints: with ``checkpoint_dir`` the run advances in segments of
``segment_length`` iterations and saves the state, the keys, the finite flags and
the iteration reached (:mod:`bilevel_rl.experiment.checkpoint`; no history: that is
in the history folder) every ``checkpoint_every`` iterations or
``checkpoint_seconds`` seconds and at the end. Calling :func:`run` again with the
same folder resumes from the newest intact checkpoint, after deleting the history
segments past it; the result equals an uninterrupted run with the same segment
length bitwise.
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bilevel_rl.algorithms.base import Solver, check_positive, check_x0, tree_finite
from bilevel_rl.devices import batch_map, cache_bytes, replicate, replicated
from bilevel_rl.experiment import checkpoint, history
from bilevel_rl.problem import BilevelProblem
from bilevel_rl.types import PRNGKey

DEFAULT_SEGMENT = 100
"""Iterations per compiled segment when checkpointing and no length is given."""


class Progress(NamedTuple):
    """What :func:`run` passes to its ``callback`` after every segment.

    Attributes:
        iteration: iterations completed so far.
        num_iters: iterations requested.
        history: the last segment as host arrays: every metric at the recorded
            iterations, ``[R]`` (or ``[B, R]``), and with a history folder the
            statistics ``<metric>.<stat>`` at every iteration, ``[length]``.
        compile_s: seconds spent compiling (0 when the programs were cached).
        run_s: seconds spent running segments in this call (compile excluded).
        resumed_from: iteration of the checkpoint this call resumed from (0 if
            none).
    """

    iteration: int
    num_iters: int
    history: dict[str, np.ndarray]
    compile_s: float
    run_s: float
    resumed_from: int


def run(
    solver: Solver,
    problem: BilevelProblem,
    key: PRNGKey,
    num_iters: int,
    *,
    chunk_size: int | None = None,
    segment_length: int | None = None,
    record_every: int = 1,
    history_dir: str | None = None,
    checkpoint_dir: str | None = None,
    checkpoint_every: int | None = None,
    checkpoint_seconds: float | None = None,
    callback: Callable[[Progress], None] | None = None,
) -> tuple[Any, dict]:
    """Runs ``num_iters`` steps of ``solver`` on one problem or a batch.

    Args:
        solver: from an algorithm's ``make(...)``.
        problem: one instance, or a batch (``problem.mdp.P: [B, S, A, S]`` and every
            other array field with a leading ``B``).
        key: a PRNG key; for a batch either one key (split into ``B``) or ``[B]``
            keys (e.g. one per seed). Instance ``i`` of a batch run with keys
            ``ks`` gives the same result as that instance run alone with ``ks[i]``.
        num_iters: number of outer iterations.
        chunk_size: for a batch, the number of instances that run a segment
            together before the next chunk starts (``lax.map`` with
            ``batch_size``); ``None`` fills about half the L2 cache on CPU (the
            whole batch on accelerators). Results do not depend on it.
        segment_length: iterations per compiled call; the state comes back to the
            host (for ``callback``, checkpoints and history files) between
            segments. Default: ``checkpoint_every`` (or :data:`DEFAULT_SEGMENT`)
            when checkpointing, ``ceil(num_iters / 20)`` with only a ``callback``,
            else ``num_iters``.
        record_every: record the per-run metrics at iterations ``k`` with
            ``(k + 1) % record_every == 0`` and at the last one
            (:func:`~bilevel_rl.experiment.history.recorded_iterations`); the
            default records every iteration. A ``segment_length`` that is a
            multiple of it compiles one segment program. The other iterations
            take ``solver.untracked_step`` (when not ``None``): the metrics it
            leaves out are computed at the recorded iterations only.
        history_dir: write the history there as the run goes, one file per
            segment (:mod:`bilevel_rl.experiment.history`), with batch statistics
            of every metric at every iteration; nothing of it is kept in memory.
            Default: ``checkpoint_dir/history`` when checkpointing, else none (the
            history is kept in memory).
        checkpoint_dir: folder for checkpoints; an existing checkpoint there is
            resumed (it must come from the same problem, key and
            ``record_every``).
        checkpoint_every: save every this many iterations (rounded up to whole
            segments); default: every segment.
        checkpoint_seconds: also save when this many seconds have passed since
            the last save.
        callback: called with a :class:`Progress` after every segment.

    Returns:
        ``(final_state, history)``. Without ``history_dir``, ``history`` maps each
        metric name to a host (NumPy) array ``[R]`` (``[B, R]`` for a batch) of
        the recorded iterations (``R = num_iters`` by default) and always holds
        ``finite``: ``False`` from the iteration whose step produced a NaN/inf on
        (the state is then held at its last finite value); with ``record_every >
        1`` also ``iterations`` (``[R]``) and ``diverged_at``. With
        ``history_dir``, ``history`` is ``load_history(history_dir,
        per_run=False)`` (the statistics, ``iterations`` and ``diverged_at``; in a
        process other than the first only ``diverged_at``).

    Raises:
        ValueError: ``num_iters < 1``, ``problem.x0`` does not fit the reward model,
            a batch of keys of the wrong length, or bad segment/record/checkpoint
            settings.
        bilevel_rl.checkpoint.CheckpointError: ``checkpoint_dir`` holds a
            checkpoint of a different problem/key/``record_every``, none that is
            intact, or its history segments are missing.
    """
    num_iters = check_positive("num_iters", num_iters, integer=True)
    record_every = check_positive("record_every", record_every, integer=True)
    check_x0(problem)
    batch = problem.mdp.P.shape[:-3]
    if len(batch) > 1:
        raise ValueError(f"problem.mdp.P: expected at most one batch axis, got {batch}")
    if batch:
        if key.shape not in ((), batch):
            raise ValueError(
                f"key: expected one key or {batch[0]} keys, got shape {key.shape}"
            )
        keys = key if key.shape == batch else jax.random.split(key, batch[0])
        if chunk_size is None:
            chunk_size = _auto_chunk(problem, batch[0])
        chunk = min(check_positive("chunk_size", chunk_size, integer=True), batch[0])
    else:
        keys, chunk = key, 0
    if checkpoint_every is not None:
        checkpoint_every = check_positive(
            "checkpoint_every", checkpoint_every, integer=True
        )
    if checkpoint_seconds is not None:
        checkpoint_seconds = check_positive("checkpoint_seconds", checkpoint_seconds)
    if segment_length is None:
        if checkpoint_dir is not None:
            segment_length = checkpoint_every or DEFAULT_SEGMENT
        elif callback is not None:
            segment_length = -(-num_iters // 20)
        else:
            segment_length = num_iters
    segment = check_positive("segment_length", segment_length, integer=True)
    folder = history_dir
    if folder is None and checkpoint_dir is not None:
        folder = os.path.join(checkpoint_dir, "history")

    t0 = time.perf_counter()
    init = _compiled("init", solver, _signature((problem, keys)), 0, chunk)
    compile_s = time.perf_counter() - t0
    carry, in_memory, done, fingerprint = None, {}, 0, None
    primary = jax.process_index() == 0  # the process that writes files
    if checkpoint_dir is not None:
        fingerprint = _fingerprint(problem, keys)
        like = jax.eval_shape(_program("init", solver, 0, chunk), problem, keys)
        loaded = checkpoint.load_latest(checkpoint_dir, like)
        if loaded is not None:
            carry, _, meta = loaded
            done = meta["iteration"]
            if meta.get("fingerprint") != fingerprint:
                raise checkpoint.CheckpointError(
                    f"checkpoint_dir: {checkpoint_dir!r} holds a run of a different "
                    "problem or key; use another folder"
                )
            if meta.get("record_every") != record_every:
                raise checkpoint.CheckpointError(
                    f"checkpoint_dir: {checkpoint_dir!r} holds a run recorded every "
                    f"{meta.get('record_every')} iterations, not {record_every}"
                )
            if done > num_iters:
                raise ValueError(
                    f"num_iters: the checkpoint in {checkpoint_dir!r} is at iteration "
                    f"{done}, past num_iters={num_iters}"
                )
    if folder is not None and primary:
        try:  # the segments past the checkpoint are written again
            history.truncate(folder, done)
        except ValueError as err:
            raise checkpoint.CheckpointError(str(err)) from None
    resumed_from = done
    # Several processes: every one holds the same arrays; make them global.
    problem, keys, carry = replicate((problem, keys, carry))
    if carry is None:
        carry = init(problem, keys)

    run_s, last_save, last_save_t = 0.0, done, time.perf_counter()
    while done < num_iters:
        length = min(segment, num_iters - done)
        local = history.recorded_iterations(
            num_iters, record_every, done, done + length - 1
        )
        record = None if len(local) == length else tuple((local - done).tolist())
        t0 = time.perf_counter()
        advance = _compiled(
            "advance",
            solver,
            _signature((problem, carry)),
            length,
            chunk,
            record,
            folder is not None,
        )
        compile_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        carry, segment_history = advance(problem, carry)
        segment_history = jax.tree.map(np.asarray, segment_history)
        run_s += time.perf_counter() - t0
        if folder is None:
            in_memory = _append(in_memory, segment_history)
        elif primary:
            extra = {"iterations": local, "diverged_at": _diverged(carry)}
            history.write_segment(folder, done, {**segment_history, **extra})
        done += length
        if checkpoint_dir is not None and (
            done == num_iters
            or done - last_save >= (checkpoint_every or 1)
            or (
                checkpoint_seconds is not None
                and time.perf_counter() - last_save_t >= checkpoint_seconds
            )
        ):
            meta = {
                "fingerprint": fingerprint,
                "segment_length": segment,
                "record_every": record_every,
            }
            if primary:
                checkpoint.save(checkpoint_dir, done, carry, meta)
            last_save, last_save_t = done, time.perf_counter()
        if callback is not None:
            callback(
                Progress(
                    done, num_iters, segment_history, compile_s, run_s, resumed_from
                )
            )
    return carry[0], _result(
        in_memory, folder, history_dir is None, record_every, num_iters, carry
    )


def diverged_at(history: dict) -> np.ndarray:
    """First iteration whose step produced a non-finite value, ``-1`` if none.

    Args:
        history: from :func:`run` (or :func:`~bilevel_rl.experiment.load_history`):
            its ``diverged_at`` when it has one, else from ``history["finite"]``,
            ``[K]`` or ``[B, K]``.

    Returns:
        ``[]`` or ``[B]`` int array.
    """
    if "diverged_at" in history:
        return np.asarray(history["diverged_at"])
    finite = np.asarray(history["finite"], bool)
    first_bad = np.argmin(finite, axis=-1)
    return np.where(finite.all(axis=-1), -1, first_bad)


# ------------------------------------------------------------------- internals


def _auto_chunk(problem: BilevelProblem, batch_size: int) -> int:
    if jax.default_backend() != "cpu":
        return batch_size
    per_instance = sum(x.nbytes for x in jax.tree.leaves(problem)) // batch_size
    return max(1, min(batch_size, (cache_bytes() // 2) // max(per_instance, 1)))


def _init_one(solver: Solver, problem, key):
    """``(state, finite, finite_steps)``: once a step is not finite, the count of
    finite steps before it is the iteration it diverged at."""
    state = solver.init(problem, key)
    return state, tree_finite(state), jnp.zeros((), jnp.int32)


def _advance_one(solver: Solver, problem, carry, length: int, tracked=None):
    """Scans ``length`` steps. ``tracked`` (``length`` bools, or ``None`` for all):
    the steps that take ``solver.step``; the others take ``solver.untracked_step``
    and report the metrics it leaves out as NaN. The steps run as repeated blocks
    of untracked steps and one tracked step (:func:`_blocks`), so no step of the
    compiled program branches."""

    def body(step_fn, carry, _=None):
        state, alive, steps = carry
        new, metrics = step_fn(state, problem)
        ok = alive & tree_finite(new) & tree_finite(metrics)
        state = jax.tree.map(lambda n, o: _select(ok, n, o), new, state)
        return (state, ok, steps + ok), {**metrics, "finite": ok}

    if tracked is None:
        return jax.lax.scan(functools.partial(body, solver.step), carry, length=length)
    full = jax.eval_shape(solver.step, carry[0], problem)[1]

    def untracked(carry, _=None):
        carry, metrics = body(solver.untracked_step, carry)
        nan = {k: jnp.full(v.shape, jnp.nan, v.dtype) for k, v in full.items()}
        return carry, {**nan, **metrics}

    def block(carry, _, untracked_steps, tracked_step):
        parts = []
        if untracked_steps:
            carry, out = jax.lax.scan(untracked, carry, length=untracked_steps)
            parts.append(out)
        if tracked_step:
            carry, out = body(solver.step, carry)
            parts.append(jax.tree.map(lambda v: v[None], out))
        return carry, jax.tree.map(lambda *v: jnp.concatenate(v), *parts)

    parts = []
    for repeats, untracked_steps, tracked_step in _blocks(tracked):
        fn = functools.partial(
            block, untracked_steps=untracked_steps, tracked_step=tracked_step
        )
        carry, out = jax.lax.scan(fn, carry, length=repeats)
        parts.append(jax.tree.map(lambda v: v.reshape(-1), out))
    return carry, jax.tree.map(lambda *v: jnp.concatenate(v), *parts)


def _blocks(tracked) -> list[tuple[int, int, int]]:
    """``tracked`` as ``(repeats, untracked_steps, tracked_step)`` pieces, in
    order: each repeats a block of ``untracked_steps`` untracked steps followed by
    ``tracked_step`` (0 or 1) tracked one; e.g. every 5th of 12 tracked:
    ``[(2, 4, 1), (1, 2, 0)]``."""
    pairs, run = [], 0
    for t in tracked:
        if t:
            pairs.append((run, 1))
            run = 0
        else:
            run += 1
    if run:
        pairs.append((run, 0))
    pieces: list[tuple[int, int, int]] = []
    for pair in pairs:
        if pieces and pieces[-1][1:] == pair:
            pieces[-1] = (pieces[-1][0] + 1, *pair)
        else:
            pieces.append((1, *pair))
    return pieces


def _diverged(carry) -> np.ndarray:
    _, alive, steps = carry
    return np.where(np.asarray(alive), -1, np.asarray(steps))


def _result(in_memory, folder, implicit, record_every, num_iters, carry) -> dict:
    """The ``history`` that :func:`run` returns (see there)."""
    if folder is not None and jax.process_index() != 0:
        return {"diverged_at": _diverged(carry)}
    if folder is not None and not implicit:
        return history.load_history(folder, per_run=False)
    if folder is not None:  # checkpointing without history_dir: as in memory
        loaded = history.load_history(folder)
        in_memory = {
            k: v
            for k, v in loaded.items()
            if "." not in k and k not in ("iterations", "diverged_at")
        }
    if record_every > 1:
        in_memory["iterations"] = history.recorded_iterations(num_iters, record_every)
        in_memory["diverged_at"] = _diverged(carry)
    return in_memory


def _select(ok, new, old):
    if jax.dtypes.issubdtype(new.dtype, jax.dtypes.prng_key):
        return new  # keys are always valid; the next key stays fresh
    return jnp.where(ok, new, old)


def _program(
    kind: str,
    solver: Solver,
    length: int,
    chunk: int,
    record: tuple[int, ...] | None = None,
    stats: bool = False,
):
    """The traced function of ``kind`` for one instance (``chunk == 0``) or a batch;
    an ``advance`` keeps the metrics of the ``record`` steps (all when ``None``)
    and adds the batch statistics of every step when ``stats``."""
    tracked = None  # every step tracked
    if record is not None and solver.untracked_step is not None:
        tracked = np.zeros(length, bool)
        tracked[list(record)] = True
        tracked = tuple(tracked.tolist())
    if kind == "init":
        one = functools.partial(_init_one, solver)
    else:

        def one(problem, carry):
            return _advance_one(solver, problem, carry, length, tracked)

    mapped = (
        one
        if chunk == 0
        else lambda *args: batch_map(lambda a: one(*a), args, chunk_size=chunk)
    )
    if kind == "init":
        return mapped

    def advance(problem, carry):
        carry, metrics = mapped(problem, carry)
        out = dict(metrics)
        if record is not None:
            out = {k: v[..., np.asarray(record, int)] for k, v in out.items()}
        if stats:
            out.update(history.batch_stats(metrics, batched=chunk != 0))
        if stats and tracked is not None:  # left-out metrics: no statistics
            mask = np.asarray(tracked)
            for name in _left_out(solver, problem, carry[0], batched=chunk != 0):
                for stat in history.STATS:
                    out[f"{name}.{stat}"] = jnp.where(
                        mask, out[f"{name}.{stat}"], jnp.nan
                    )
                out[f"{name}.nonfinite"] = jnp.where(mask, out[f"{name}.nonfinite"], 0)
        return carry, out

    return advance


def _left_out(solver: Solver, problem, state, batched: bool) -> list[str]:
    """The metrics of ``solver.step`` that ``solver.untracked_step`` leaves out."""
    if batched:
        problem, state = jax.tree.map(lambda a: a[0], (problem, state))
    full = jax.eval_shape(solver.step, state, problem)[1]
    part = jax.eval_shape(solver.untracked_step, state, problem)[1]
    return sorted(set(full) - set(part))


def _signature(args) -> tuple:
    leaves, treedef = jax.tree.flatten(args)
    return treedef, tuple((x.shape, x.dtype) for x in leaves)


@functools.lru_cache(maxsize=64)
def _compiled(
    kind: str,
    solver: Solver,
    signature: tuple,
    length: int,
    chunk: int,
    record: tuple[int, ...] | None = None,
    stats: bool = False,
):
    """Ahead-of-time compiled program, cached per solver, shapes and sizes."""
    treedef, avals = signature
    sharding = replicated()  # None in one process; else every device holds all
    structs = [jax.ShapeDtypeStruct(s, d, sharding=sharding) for s, d in avals]
    args = jax.tree.unflatten(treedef, structs)
    program = jax.jit(
        _program(kind, solver, length, chunk, record, stats), out_shardings=sharding
    )
    return program.lower(*args).compile()


def _fingerprint(problem: BilevelProblem, keys) -> str:
    """SHA-256 of the problem's arrays and the keys: ties a checkpoint to its run."""
    digest = hashlib.sha256()
    for x in jax.tree.leaves((problem, keys)):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        x = np.asarray(x)
        digest.update(f"{x.dtype}{x.shape}".encode())
        digest.update(np.ascontiguousarray(x).reshape(-1).view(np.uint8))  # no copy
    return digest.hexdigest()


def _append(history: dict, segment: dict) -> dict:
    if not history:
        return dict(segment)
    return {k: np.concatenate([history[k], segment[k]], axis=-1) for k in segment}
