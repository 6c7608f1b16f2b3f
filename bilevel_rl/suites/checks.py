"""Argument checks of the problem generators (run at trace time, outside XLA).

Sizes are static Python integers, so a generator can always check them; ``gamma``,
``tau`` and the like are checked when they are concrete numbers (a traced value,
e.g. a ``jax.vmap``-ed sweep over ``gamma``, is the caller's responsibility). Every
check raises ``TypeError``/``ValueError`` naming the argument and the rule, so a bad
size never reaches XLA as an empty or impossible allocation.
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from bilevel_rl.devices import physical_memory

MEMORY_FRACTION = 0.5
"""A generated transition tensor may use at most this fraction of physical memory."""


def check_size(name: str, value, *, minimum: int = 1) -> int:
    """``value`` as an ``int >= minimum``; bools, floats and strings are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {value!r}")
    return int(value)


def check_array_size(name: str, what: str, shape: tuple[int, ...], dtype) -> None:
    """Refuses an array of ``shape`` larger than :data:`MEMORY_FRACTION` of memory.

    Args:
        name: the argument to blame (e.g. ``"num_states"``).
        what: the array's name in the message (e.g. ``"P"``).
        shape: its shape.
        dtype: its dtype.
    """
    need = math.prod(shape) * jnp.dtype(dtype).itemsize
    limit = MEMORY_FRACTION * physical_memory()
    if need > limit:
        raise ValueError(
            f"{name}: {what} of shape {list(shape)} needs {need / 2**30:.3g} GiB, "
            f"more than {limit / 2**30:.3g} GiB (half this machine's memory)"
        )


def check_transition_size(num_states: int, num_actions: int, dtype) -> None:
    """Refuses ``P: [S, A, S]`` larger than :data:`MEMORY_FRACTION` of memory."""
    check_array_size("num_states", "P", (num_states, num_actions, num_states), dtype)


def check_number(
    name: str, value, low: float, high: float, *, open_low=False, open_high=False
) -> None:
    """When ``value`` is a concrete real number, checks it lies in the interval."""
    if isinstance(value, jax.core.Tracer):
        return  # traced (e.g. vmapped over gamma): the caller's responsibility
    real = isinstance(value, numbers.Real | np.ndarray | np.generic | jax.Array)
    if isinstance(value, bool) or not real:
        raise TypeError(f"{name}: must be a real number, got {value!r}")
    if np.ndim(value) != 0:
        raise ValueError(f"{name}: must be a scalar, got shape {np.shape(value)}")
    if not np.issubdtype(np.asarray(value).dtype, np.number) or np.iscomplexobj(value):
        raise TypeError(f"{name}: must be a real number, got {value!r}")
    v = float(value)
    ok = (
        math.isfinite(v)
        and (v > low if open_low else v >= low)
        and (v < high if open_high else v <= high)
    )
    if not ok:
        lo, hi = "(" if open_low else "[", ")" if open_high else "]"
        raise ValueError(f"{name}: must lie in {lo}{low:g}, {high:g}{hi}, got {v!r}")
