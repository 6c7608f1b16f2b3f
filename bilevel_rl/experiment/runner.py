"""``run``: scan a solver for ``num_iters`` steps, batched, fault-masked, resumable.

One compiled program initializes the state (``init``) and one advances it by a
segment of iterations (``lax.scan`` of ``step``); a batch of problems is
``jax.vmap``-ed, chunked to the cache and sharded over the devices of every process
(:func:`bilevel_rl.devices.batch_map`). Both programs are compiled ahead of time,
once per process and shape, so their compile time is reported separately.

Faults: after every step the new state and metrics are tested for NaN/inf. An
instance whose step produced a non-finite value keeps its last finite state from
then on (its ``finite`` metric is ``False`` from that iteration onward) while the
other instances of the batch keep going; :func:`diverged_at` reads the iteration
from the history.

Checkpoints: with ``checkpoint_dir`` the run advances in segments of
``segment_length`` iterations and saves the state, the keys and the history so far
(:mod:`bilevel_rl.experiment.checkpoint`) every ``checkpoint_every`` iterations or
``checkpoint_seconds`` seconds and at the end. Calling :func:`run` again with the
same folder resumes from the newest intact checkpoint; the result equals an
uninterrupted run with the same segment length bitwise.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bilevel_rl.algorithms.base import Solver, check_positive, check_x0
from bilevel_rl.devices import batch_map, cache_bytes, replicate, replicated
from bilevel_rl.experiment import checkpoint
from bilevel_rl.problem import BilevelProblem
from bilevel_rl.types import PRNGKey

DEFAULT_SEGMENT = 100
"""Iterations per compiled segment when checkpointing and no length is given."""


class Progress(NamedTuple):
    """What :func:`run` passes to its ``callback`` after every segment.

    Attributes:
        iteration: iterations completed so far.
        num_iters: iterations requested.
        history: the last segment's metrics as host arrays, ``[length]`` (or
            ``[B, length]``).
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
            host (for ``callback`` and checkpoints) between segments. Default:
            ``checkpoint_every`` (or :data:`DEFAULT_SEGMENT`) when checkpointing,
            ``ceil(num_iters / 20)`` with only a ``callback``, else ``num_iters``.
        checkpoint_dir: folder for checkpoints; an existing checkpoint there is
            resumed (it must come from the same problem and key).
        checkpoint_every: save every this many iterations (rounded up to whole
            segments); default: every segment.
        checkpoint_seconds: also save when this many seconds have passed since
            the last save.
        callback: called with a :class:`Progress` after every segment.

    Returns:
        ``(final_state, history)``. ``history`` maps each metric name to a host
        (NumPy) array ``[num_iters]`` (``[B, num_iters]`` for a batch) and always holds
        ``finite``: ``False`` from the iteration whose step produced a NaN/inf on
        (the state is then held at its last finite value).

    Raises:
        ValueError: ``num_iters < 1``, ``problem.x0`` does not fit the reward model,
            a batch of keys of the wrong length, or bad segment/checkpoint
            settings.
        bilevel_rl.checkpoint.CheckpointError: ``checkpoint_dir`` holds a
            checkpoint of a different problem/key, or none that is intact.
    """
    num_iters = check_positive("num_iters", num_iters, integer=True)
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

    t0 = time.perf_counter()
    init = _compiled("init", solver, _signature((problem, keys)), 0, chunk)
    compile_s = time.perf_counter() - t0
    carry, history, done, fingerprint = None, {}, 0, None
    primary = jax.process_index() == 0  # the process that writes checkpoints
    if checkpoint_dir is not None:
        fingerprint = _fingerprint(problem, keys)
        like = jax.eval_shape(_program("init", solver, 0, chunk), problem, keys)
        loaded = checkpoint.load_latest(checkpoint_dir, like)
        if loaded is not None:
            carry, history, meta = loaded
            done = meta["iteration"]
            if meta.get("fingerprint") != fingerprint:
                raise checkpoint.CheckpointError(
                    f"checkpoint_dir: {checkpoint_dir!r} holds a run of a different "
                    "problem or key; use another folder"
                )
            if done > num_iters:
                raise ValueError(
                    f"num_iters: the checkpoint in {checkpoint_dir!r} is at iteration "
                    f"{done}, past num_iters={num_iters}"
                )
    resumed_from = done
    # Several processes: every one holds the same arrays; make them global.
    problem, keys, carry = replicate((problem, keys, carry))
    if carry is None:
        carry = init(problem, keys)

    run_s, last_save, last_save_t = 0.0, done, time.perf_counter()
    while done < num_iters:
        length = min(segment, num_iters - done)
        t0 = time.perf_counter()
        advance = _compiled(
            "advance", solver, _signature((problem, carry)), length, chunk
        )
        compile_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        carry, segment_history = advance(problem, carry)
        segment_history = jax.tree.map(np.asarray, segment_history)
        run_s += time.perf_counter() - t0
        done += length
        history = _append(history, segment_history)
        if checkpoint_dir is not None and (
            done == num_iters
            or done - last_save >= (checkpoint_every or 1)
            or (
                checkpoint_seconds is not None
                and time.perf_counter() - last_save_t >= checkpoint_seconds
            )
        ):
            meta = {"fingerprint": fingerprint, "segment_length": segment}
            if primary:
                checkpoint.save(checkpoint_dir, done, carry, meta, extras=history)
            last_save, last_save_t = done, time.perf_counter()
        if callback is not None:
            callback(
                Progress(
                    done, num_iters, segment_history, compile_s, run_s, resumed_from
                )
            )
    state, _ = carry
    return state, history


def diverged_at(history: dict) -> np.ndarray:
    """First iteration whose step produced a non-finite value, ``-1`` if none.

    Args:
        history: from :func:`run`; ``history["finite"]`` is ``[K]`` or ``[B, K]``.

    Returns:
        ``[]`` or ``[B]`` int array.
    """
    finite = np.asarray(history["finite"], bool)
    first_bad = np.argmin(finite, axis=-1)
    return np.where(finite.all(axis=-1), -1, first_bad)


# ------------------------------------------------------------------- internals


def _auto_chunk(problem: BilevelProblem, batch_size: int) -> int:
    if jax.default_backend() != "cpu":
        return batch_size
    per_instance = sum(x.nbytes for x in jax.tree.leaves(problem)) // batch_size
    return max(1, min(batch_size, (cache_bytes() // 2) // max(per_instance, 1)))


def _finite(tree) -> jax.Array:
    """``True`` iff every float/complex leaf of ``tree`` is finite (keys skipped)."""
    checks = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(x.dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack(checks)) if checks else jnp.asarray(True)


def _init_one(solver: Solver, problem, key):
    state = solver.init(problem, key)
    return state, _finite(state)


def _advance_one(solver: Solver, problem, carry, length: int):
    def body(carry, _):
        state, alive = carry
        new, metrics = solver.step(state, problem)
        ok = alive & _finite(new) & _finite(metrics)
        state = jax.tree.map(lambda n, o: _select(ok, n, o), new, state)
        return (state, ok), {**metrics, "finite": ok}

    return jax.lax.scan(body, carry, None, length=length)


def _select(ok, new, old):
    if jax.dtypes.issubdtype(new.dtype, jax.dtypes.prng_key):
        return new  # keys are always valid; the next key stays fresh
    return jnp.where(ok, new, old)


def _program(kind: str, solver: Solver, length: int, chunk: int):
    """The traced function of ``kind`` for one instance (``chunk == 0``) or a batch."""
    if kind == "init":
        one = functools.partial(_init_one, solver)
    else:

        def one(problem, carry):
            return _advance_one(solver, problem, carry, length)

    if chunk == 0:
        return one
    return lambda *args: batch_map(lambda a: one(*a), args, chunk_size=chunk)


def _signature(args) -> tuple:
    leaves, treedef = jax.tree.flatten(args)
    return treedef, tuple((x.shape, x.dtype) for x in leaves)


@functools.lru_cache(maxsize=64)
def _compiled(kind: str, solver: Solver, signature: tuple, length: int, chunk: int):
    """Ahead-of-time compiled program, cached per solver, shapes and sizes."""
    treedef, avals = signature
    sharding = replicated()  # None in one process; else every device holds all
    structs = [jax.ShapeDtypeStruct(s, d, sharding=sharding) for s, d in avals]
    args = jax.tree.unflatten(treedef, structs)
    program = jax.jit(_program(kind, solver, length, chunk), out_shardings=sharding)
    return program.lower(*args).compile()


def _fingerprint(problem: BilevelProblem, keys) -> str:
    """SHA-256 of the problem's arrays and the keys: ties a checkpoint to its run."""
    digest = hashlib.sha256()
    for x in jax.tree.leaves((problem, keys)):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        x = np.asarray(x)
        digest.update(f"{x.dtype}{x.shape}".encode())
        digest.update(np.ascontiguousarray(x).tobytes())
    return digest.hexdigest()


def _append(history: dict, segment: dict) -> dict:
    if not history:
        return dict(segment)
    return {k: np.concatenate([history[k], segment[k]], axis=-1) for k in segment}
