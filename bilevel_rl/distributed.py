"""Solving batches of MDPs: one compiled call, processed in cache-sized chunks.

A soft value-iteration sweep is a matrix-vector product with ``P``; its cost is
reading ``P``. One small MDP's ``P`` fits in the CPU's L2 cache, so a chunk of a few
MDPs that runs *all* its sweeps before the next chunk starts is several times faster
than sweeping the whole batch once per iteration, which streams every ``P`` from DRAM
on each sweep (DESIGN.md "Scale"). :func:`solve_batch` does the former with
``lax.map(..., batch_size=chunk)`` inside one ``jit``; instances keep their own
stopping test inside a chunk. With several local devices (accelerators, or CPU
cores exposed as host devices with
``XLA_FLAGS=--xla_force_host_platform_device_count=N``) :func:`batch_map` first
shards the batch over them with ``jax.shard_map``.

Several processes (hosts): call :func:`initialize` first in every process (the
``bilevel-rl run --distributed`` flag does); every process then builds the same
batch from the same seed, :func:`replicate` makes its arrays global, and the batch
is sharded over the devices of *all* processes (``jax.devices()``), each process
receiving the whole result (:func:`gather`). One process is the degenerate case.
"""

from __future__ import annotations

import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from bilevel_rl.mdp import TabularMDP
from bilevel_rl.soft import SoftSolution, soft_value_iteration
from bilevel_rl.types import Array

DEFAULT_CACHE_BYTES = 2 * 1024 * 1024
"""L2 size assumed when the machine does not report one (2 MiB)."""


@functools.cache
def cache_bytes() -> int:
    """Per-core L2 cache size in bytes, read from sysfs (Linux), else a default.

    Read once per process (the sysfs look-up costs ~50 us, which would otherwise
    be paid on every :func:`solve_batch` call).
    """
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in sorted(os.listdir(base)):
            with open(os.path.join(base, entry, "level")) as fh:
                if fh.read().strip() != "2":
                    continue
            with open(os.path.join(base, entry, "size")) as fh:
                text = fh.read().strip().upper()
            scale = {"K": 1024, "M": 1024**2}.get(text[-1], 1)
            return int(text.rstrip("KM")) * scale
    except (OSError, ValueError):
        pass
    return DEFAULT_CACHE_BYTES


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
    # From the shape only: indexing mdp.P[0] would dispatch a slice (~50 us).
    per_mdp = math.prod(mdp.P.shape[-3:]) * mdp.P.dtype.itemsize
    return int(max(1, min(batch_size, (cache_bytes() // 2) // per_mdp)))


@functools.cache
def cpu_collectives_ready() -> bool:
    """Selects gloo for collectives between CPU processes (before backend start)."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    return True


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> tuple[int, int]:
    """Joins a multi-process (multi-host) run: ``jax.distributed.initialize``.

    Call it in every process before any other JAX call. Without arguments the
    cluster is detected from the environment (SLURM, Open MPI, Kubernetes, Cloud
    TPU); otherwise give all three. On CPU the processes exchange data through gloo.

    Args:
        coordinator_address: ``host:port`` of process 0.
        num_processes: number of processes.
        process_id: this process's index in ``[0, num_processes)``.

    Returns:
        ``(process_index, process_count)``.

    Raises:
        ValueError: only some of the three arguments given, or a process id out of
            range.
    """
    given = [a is not None for a in (coordinator_address, num_processes, process_id)]
    if any(given) and not all(given):
        raise ValueError(
            "coordinator_address, num_processes, process_id: give all three or none "
            "(none: detect the cluster from the environment)"
        )
    if all(given) and not 0 <= process_id < num_processes:
        raise ValueError(
            f"process_id: must lie in [0, num_processes={num_processes}), got "
            f"{process_id}"
        )
    cpu_collectives_ready()
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    return jax.process_index(), jax.process_count()


def global_mesh() -> jax.sharding.Mesh:
    """A one-axis (``"batch"``) mesh over the devices of every process."""
    return jax.sharding.Mesh(np.asarray(jax.devices()), ("batch",))


def replicated() -> jax.sharding.NamedSharding | None:
    """Sharding that holds a whole array on every device of every process
    (``None`` in a single process: leave placement to ``jit``)."""
    if jax.process_count() == 1:
        return None
    return jax.sharding.NamedSharding(global_mesh(), jax.sharding.PartitionSpec())


def replicate(tree):
    """Host-identical arrays of every process as global replicated arrays.

    Every process must pass the same values (e.g. built from the same seed). In a
    single process ``tree`` is returned unchanged.
    """
    sharding = replicated()
    if sharding is None:
        return tree

    def one(x):
        if not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree.map(one, tree)


def gather(tree):
    """Global arrays (sharded over all processes) as whole arrays in every process."""
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def solve_batch(
    mdp: TabularMDP,
    reward: Array,
    *,
    tol: float = 1e-8,
    max_iters: int = 10_000,
    method: str = "value_iteration",
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
        method: see :func:`bilevel_rl.soft_value_iteration`.
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


def device_memory_bytes() -> int:
    """Memory of the default device: its allocator limit on accelerators, the
    machine's physical memory on CPU."""
    from bilevel_rl.suites.checks import physical_memory

    stats = jax.local_devices()[0].memory_stats() or {}
    return int(stats.get("bytes_limit", physical_memory()))


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


# ------------------------------------------------------------- sharded batch map


def batch_map(fn, xs, *, chunk_size: int, devices=None):
    """Maps ``fn`` over the leading axis of ``xs``: sharded, then chunked.

    The batch is split over ``devices`` (default: the devices of all processes) with
    ``jax.shard_map`` on a one-axis ``Mesh``; on each device ``lax.map`` runs
    ``chunk_size`` instances at a time (vmapped). An uneven batch is padded by
    repeating its last instance and the padding is dropped from the result. One
    device is the degenerate case of the same path. Call it inside ``jit``.

    Args:
        fn: maps one instance (a pytree without the batch axis) to a pytree.
        xs: pytree whose leaves share a leading batch axis ``B``.
        chunk_size: instances per ``lax.map`` step on each device.
        devices: devices to shard over; default ``jax.devices()``.

    Returns:
        ``fn``'s outputs stacked along a leading axis of size ``B``.
    """
    devices = jax.devices() if devices is None else list(devices)
    n = len(devices)
    B = jax.tree.leaves(xs)[0].shape[0]

    def local(xs):
        size = jax.tree.leaves(xs)[0].shape[0]
        return jax.lax.map(fn, xs, batch_size=_dividing_chunk(chunk_size, size))

    if n == 1:
        return local(xs)
    padded = -(-B // n) * n
    if padded != B:
        xs = jax.tree.map(
            lambda x: jnp.concatenate(
                [x, jnp.broadcast_to(x[-1:], (padded - B, *x.shape[1:]))]
            ),
            xs,
        )
    mesh = jax.sharding.Mesh(np.asarray(devices), ("batch",))
    spec = jax.sharding.PartitionSpec("batch")
    # check_vma=False: instances are independent, nothing is replicated.
    out = jax.shard_map(
        local, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False
    )(xs)
    return jax.tree.map(lambda y: y[:B], out)


def _dividing_chunk(chunk: int, size: int) -> int:
    """The largest divisor of ``size`` in ``[chunk / 2, chunk]``, else ``chunk``.

    ``lax.map`` handles a remainder (``size % chunk != 0``) with a separate vmapped
    call and a concatenation, which costs an extra copy of the batch (measured:
    +70% peak memory and -14% throughput at 10^5 MDPs, benchmarks/scaling.py).
    """
    chunk = min(chunk, size)
    for d in range(chunk, max(1, chunk // 2) - 1, -1):
        if size % d == 0:
            return d
    return chunk
