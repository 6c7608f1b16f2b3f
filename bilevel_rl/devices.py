"""Device plumbing: machine facts, processes, sharding and the sharded batch map.

One process is the degenerate case of everything here. Several processes (hosts):
call :func:`initialize` first in every process (the ``bilevel-rl run
--distributed`` flag does); every process then builds the same batch from the same
seed, :func:`replicate` makes its arrays global, :func:`batch_map` shards the batch
over the devices of *all* processes (``jax.devices()``) and every process receives
the whole result (:func:`gather`). Several local devices (accelerators, or CPU
cores exposed as host devices with
``XLA_FLAGS=--xla_force_host_platform_device_count=N``) use the same path.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "batch_map",
    "cache_bytes",
    "device_memory_bytes",
    "gather",
    "initialize",
    "physical_memory",
    "replicate",
    "replicated",
]

DEFAULT_CACHE_BYTES = 2 * 1024 * 1024
"""L2 size assumed when the machine does not report one (2 MiB)."""


@functools.cache
def cache_bytes() -> int:
    """Per-core L2 cache size in bytes, read from sysfs (Linux), else a default.

    Read once per process (not on every ``solve_batch`` call).
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


def physical_memory() -> int:
    """Bytes of physical memory (16 GiB when the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 16 * 2**30


def device_memory_bytes() -> int:
    """Memory of the default device: its allocator limit on accelerators, the
    machine's physical memory on CPU."""
    stats = jax.local_devices()[0].memory_stats() or {}
    return int(stats.get("bytes_limit", physical_memory()))


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
    call and a concatenation, which costs an extra copy of the batch (peak memory
    and throughput at 10^5 MDPs in benchmarks/results/scaling.json).
    """
    chunk = min(chunk, size)
    for d in range(chunk, max(1, chunk // 2) - 1, -1):
        if size % d == 0:
            return d
    return chunk
