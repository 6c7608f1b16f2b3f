"""Reward models: the leader's variable ``x`` mapped to the follower's reward.

Every model is a pure function ``reward_fn(data, x) -> [S, A]`` of explicit problem
data and the leader variable, so that it can be stored (static) in a
:class:`bilevel_rl.BilevelProblem` and ``jax.vmap``-ed over a batch of problems
(docs/math.md §2: ``r_x = reward_fn(x)``). ``data`` is whatever the model reads: nothing
(:func:`tabular_reward`), a feature tensor (:func:`linear_reward`,
:func:`tanh_reward`) or a pytree with named fields (:func:`quadratic_form_reward`,
:func:`state_incentive_reward`).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from bilevel_rl.types import Array

__all__ = [
    "linear_reward",
    "quadratic_form_reward",
    "state_incentive_reward",
    "tabular_reward",
    "tanh_reward",
]


def tabular_reward(data: Any, x: Array) -> Array:
    """The leader chooses the reward table itself: ``r_x = x``.

    Args:
        data: ignored (kept for the ``reward_fn(data, x)`` convention).
        x: ``[S, A]`` reward.

    Returns:
        ``[S, A]``, ``x`` unchanged.
    """
    del data
    return x


def linear_reward(features: Array, x: Array) -> Array:
    """Linear reward model ``r_x(s, a) = phi(s, a)^T x`` (docs/math.md §9, §9.4).

    Args:
        features: ``[S, A, d]`` features ``phi``.
        x: ``[d]`` parameters.

    Returns:
        ``[S, A]`` reward.
    """
    return jnp.einsum("sad,d->sa", features, x)


def tanh_reward(features: Array, x: Array) -> Array:
    """Bounded non-linear reward model ``r_x(s, a) = tanh(phi(s, a)^T x)`` (§9.2).

    Args:
        features: ``[S, A, d]`` features ``phi``.
        x: ``[d]`` parameters.

    Returns:
        ``[S, A]`` reward in ``(-1, 1)``.
    """
    return jnp.tanh(linear_reward(features, x))


@jax.custom_jvp
def symmetric_quadratic_form(M: Array, x: Array) -> Array:
    """``x^T M x`` for a symmetric ``M`` (``[d, d]``), ``x: [d]``; ``[]``.

    Its derivative ``2 (M x) . dx`` reuses the product ``M x`` of the value, so
    value and gradient read ``M`` once (automatic differentiation of ``x @ M @ x``
    would read it twice: ``M x`` and ``M^T (.)``). Assumes ``M = M^T``.
    """
    return x @ (M @ x)


@functools.partial(symmetric_quadratic_form.defjvp, symbolic_zeros=True)
def _symmetric_quadratic_form_jvp(primals, tangents):
    M, x = primals
    dM, dx = tangents
    y = M @ x
    tangent = jnp.zeros((), y.dtype)
    if type(dx) is not SymbolicZero:
        tangent = tangent + 2.0 * (y @ dx)
    if type(dM) is not SymbolicZero:
        tangent = tangent + x @ (dM @ x)
    return x @ y, tangent


def quadratic_form_reward(data: Any, x: Array) -> Array:
    """SoBiRL synthetic reward ``r_x(s, a) = c[s, a] * x^T M x`` (docs/math.md §3).

    ``data.M`` must be symmetric: only the symmetric part of a quadratic form
    matters, and :func:`bilevel_rl.suites.sobirl_synthetic` stores
    ``(M + M^T) / 2`` so that value and gradient read it once
    (:func:`symmetric_quadratic_form`).

    Args:
        data: a pytree with fields ``M``: ``[d, d]`` and ``c``: ``[S, A]`` (e.g.
            :class:`bilevel_rl.suites.SoBiRLData`).
        x: ``[d]`` leader variable.

    Returns:
        ``[S, A]`` reward.

    References:
        Yang, Gao, Yuan, "Bilevel Reinforcement Learning via the Development of
        Hyper-gradient without Lower-Level Convexity", AISTATS 2025, synthetic
        experiment; docs/math.md §3.
    """
    return data.c * symmetric_quadratic_form(data.M, x)


def state_incentive_reward(data: Any, x: Array) -> Array:
    """Base reward plus a per-state incentive: ``r_x(s, a) = base[s, a] + x[s]``.

    The leader pays ``x[s]`` to the follower on every visit to state ``s``,
    whichever action it takes (Four-Rooms incentive design, docs/math.md §9).

    Args:
        data: a pytree with field ``base_reward``: ``[S, A]`` (e.g.
            :class:`bilevel_rl.objectives.IncentiveData`).
        x: ``[S]`` incentives.

    Returns:
        ``[S, A]`` reward.
    """
    return data.base_reward + x[:, None]
