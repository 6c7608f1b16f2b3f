"""Solving batches of MDPs: one compiled call, processed in cache-sized chunks.

A soft value-iteration sweep is a matrix-vector product with ``P``; its cost is
reading ``P``. One small MDP's ``P`` fits in the CPU's L2 cache, so a chunk of a few
MDPs that runs *all* its sweeps before the next chunk starts is several times faster
than sweeping the whole batch once per iteration, which streams every ``P`` from DRAM
on each sweep. :func:`solve_batch` does the former with
``lax.map(..., batch_size=chunk)`` inside one ``jit``; instances keep their own
stopping test inside a chunk. With several local devices (accelerators, or CPU
cores exposed as host devices with
``XLA_FLAGS=--xla_force_host_platform_device_count=N``) :func:`batch_map` first
shards the batch over them with ``jax.shard_map``.
The device plumbing (sharding over devices and processes) is
:mod:`bilevel_rl.devices`.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from bilevel_rl.devices import (
    batch_map,
    cache_bytes,
    device_memory_bytes,
    gather,
    replicate,
)
from bilevel_rl.mdp import TabularMDP
from bilevel_rl.soft import SoftSolution, select_method, soft_value_iteration
from bilevel_rl.types import Array


def auto_chunk_size(mdp: TabularMDP, batch_size: int) -> int:
    """Number of MDPs whose ``P`` together fill about half the L2 cache.

    Args:
        mdp: a batched MDP (only its shapes and dtype are read).
        batch_size: the batch size ``B``; the result is at most ``B``.

    Returns:
        A chunk size in ``[1, B]``. On accelerators the whole batch is one chunk.
    """
    if jax.default_backend() != "cpu":
        return batch_size
    # From the shape only: indexing mdp.P[0] would dispatch a device slice.
    per_mdp = math.prod(mdp.P.shape[-3:]) * mdp.P.dtype.itemsize
    return int(max(1, min(batch_size, (cache_bytes() // 2) // per_mdp)))


def batch_method(
    mdp: TabularMDP,
    reward: Array,
    *,
    tol: float,
    max_iters: int,
    method: str = "auto",
) -> str:
    """The method :func:`solve_batch` uses: ``"auto"`` resolved once for the batch
    by :func:`bilevel_rl.soft.select_method` from its sizes, largest ``gamma`` and
    scale ``max |r| + tau log A``; an explicit method is checked and returned.

    Args:
        mdp: batched MDP, ``P: [B, S, A, S]`` (concrete arrays).
        reward: ``[B, S, A]``.
        tol: the solve's tolerance.
        max_iters: the solve's cap.
        method: ``"auto"`` or one of :data:`bilevel_rl.soft.METHODS`.
    """
    S, A = mdp.P.shape[-3:-1]
    if method != "auto":
        return select_method(S, A, mdp.P.dtype, method=method)
    gamma, tau, reward_max = (float(a) for a in _batch_scalars(mdp, reward))
    return select_method(
        S,
        A,
        mdp.P.dtype,
        tol=tol,
        max_iters=max_iters,
        gamma=gamma,
        scale=reward_max + tau * math.log(A),
    )


@jax.jit
def _batch_scalars(mdp: TabularMDP, reward: Array) -> Array:
    """``[3]``: the largest ``gamma``, ``tau`` and ``|reward|`` (one transfer)."""
    return jnp.stack(
        [jnp.max(mdp.gamma), jnp.max(mdp.tau), jnp.max(jnp.abs(reward))]
    ).astype(jnp.float32)


def solve_batch(
    mdp: TabularMDP,
    reward: Array,
    *,
    tol: float = 1e-8,
    max_iters: int = 10_000,
    method: str = "auto",
    init: Array | None = None,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
) -> SoftSolution:
    """Solves a batch of soft MDPs in one jitted call, chunk by chunk.

    Results are identical to ``jax.vmap(soft_value_iteration)`` on the whole batch
    (every instance has its own stopping test); only the order of memory traffic
    changes.

    Args:
        mdp: batched MDP, ``P: [B, S, A, S]``.
        reward: ``[B, S, A]`` rewards.
        tol: see :func:`bilevel_rl.soft_value_iteration`.
        max_iters: see :func:`bilevel_rl.soft_value_iteration`.
        method: see :func:`bilevel_rl.soft_value_iteration`; ``"auto"`` is resolved
            once for the batch (:func:`bilevel_rl.soft.select_method`, from the
            largest ``gamma`` and ``|reward|`` of the batch).
        init: ``[B, S]`` warm starts, or ``None`` for zeros.
        chunk_size: MDPs per chunk; ``None`` picks :func:`auto_chunk_size`.
        memory_budget: bytes the batch's arrays (inputs and results) may occupy
            on the device at once; a larger batch is solved in equal blocks, one
            after the other, by the same compiled function (the last block padded
            by repeating its last MDP), with identical results. ``None``: half of
            the device's memory (:func:`device_memory_bytes`).

    Returns:
        A batched :class:`~bilevel_rl.SoftSolution` (every field with leading ``B``).

    Raises:
        ValueError: ``mdp`` is not batched with one leading axis, ``reward`` has the
            wrong shape, or ``chunk_size < 1``.
    """
    if mdp.P.ndim != 4:
        raise ValueError(
            f"mdp.P: solve_batch needs one leading batch axis [B, S, A, S], got shape "
            f"{mdp.P.shape}"
        )
    B, S, A, _ = mdp.P.shape
    reward = jnp.asarray(reward)
    if reward.shape != (B, S, A):
        raise ValueError(
            f"reward: expected shape [B, S, A] = ({B}, {S}, {A}), got {reward.shape}"
        )
    if init is not None:
        init = jnp.asarray(init)
        if init.shape != (B, S):
            raise ValueError(
                f"init: expected shape [B, S] = ({B}, {S}), got {init.shape}"
            )
    chunk = auto_chunk_size(mdp, B) if chunk_size is None else int(chunk_size)
    if chunk < 1:
        raise ValueError(f"chunk_size: must be >= 1, got {chunk_size!r}")
    budget = device_memory_bytes() // 2 if memory_budget is None else memory_budget
    if not budget >= 1:
        raise ValueError(f"memory_budget: must be >= 1 byte, got {memory_budget!r}")
    # Inputs (P, reward, init, scalars) plus results (q, policy, v, ...) per MDP.
    itemsize = mdp.P.dtype.itemsize
    per_mdp = (S * A * S + 3 * S * A + 3 * S + 8) * itemsize
    block = int(max(1, min(B, budget // per_mdp)))
    method = batch_method(mdp, reward, tol=tol, max_iters=max_iters, method=method)
    args = (float(tol), int(max_iters), method)
    if block == B:
        mdp, reward, init = replicate((mdp, reward, init))
        return gather(_solve_chunked(mdp, reward, init, min(chunk, B), *args))
    parts = []
    for start in range(0, B, block):
        idx = np.minimum(np.arange(start, start + block), B - 1)  # pad: repeat last
        take = functools.partial(jax.tree.map, lambda a: a[idx])
        inputs = replicate(
            (take(mdp), take(reward), None if init is None else take(init))
        )
        sol = gather(_solve_chunked(*inputs, min(chunk, block), *args))
        parts.append(jax.tree.map(lambda a: a[: min(block, B - start)], sol))
    return jax.tree.map(lambda *xs: jnp.concatenate(xs), *parts)


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6))
def _solve_chunked(mdp, reward, init, chunk, tol, max_iters, method):
    # ``init=None`` stays None here (an empty pytree for lax.map): the zero start is
    # built inside the compiled program instead of by a separate dispatch per call.
    def solve_one(args):
        m, r, v0 = args
        return soft_value_iteration(
            m, r, tol=tol, max_iters=max_iters, init=v0, method=method
        )

    return batch_map(solve_one, (mdp, reward, init), chunk_size=chunk)
