"""Momentum as a wrapper around a sampled estimator (docs/math.md §5).

A sampled estimator splits in two halves (:class:`SplitEstimator`): ``align``
moves the follower toward ``pi*_{x_k}`` and ``evaluate`` draws the estimate at a
FIXED follower state from a key. The wrappers turn it into an
:class:`~bilevel_rl.types.Estimator` whose ``grad`` is the momentum direction
``d_k``:

* :func:`plain`: ``d_k = ĝ_k`` (no momentum);
* :func:`storm`: ``d_k = ĝ(x_k, pi_k; Xi_k) + (1 - eta_k)(d_{k-1} -
  ĝ(x_{k-1}, pi_{k-1}; Xi_k))``, ``d_0 = ĝ_0`` **[reconstructed, STORM form]**; the
  samples ``Xi_k`` are re-used at the previous point by re-using the key;
* :func:`moving_average`: ``d_k = (1 - eta_k) d_{k-1} + eta_k ĝ_k``, ``d_0 = ĝ_0``.

``eta_0 = 1`` and ``eta_{k+1} = clip(c lr_k^2, 0, 1)`` with ``lr_k`` the leader's
step at ``k`` (or a constant ``eta``). Metrics added: ``estimate_norm`` (``‖ĝ_k‖``),
``momentum_weight`` (``eta_k``) and ``step_size`` (``lr_k``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from bilevel_rl.algorithms.base import tree_norm
from bilevel_rl.types import Array, Estimator, EstimatorInit, FollowerState, PyTree

AlignFn = Callable[[FollowerState, Any, PyTree], tuple[FollowerState, Array]]
"""``align(follower, problem, x) -> (follower, inner_residual)``."""

EvaluateFn = Callable[[FollowerState, Any, PyTree, Array], tuple[Array, PyTree]]
"""``evaluate(follower, problem, x, key) -> (f, grad)`` at a fixed follower: the
same key gives the same samples."""


class SplitEstimator(NamedTuple):
    """A sampled estimator in two halves (see the module docstring)."""

    init: EstimatorInit
    align: AlignFn
    evaluate: EvaluateFn


class MomentumState(NamedTuple):
    """Follower state of a momentum estimator.

    Attributes:
        inner: the wrapped estimator's follower at ``k - 1`` (``pi_{k-1}``: the warm
            start of ``align`` and the previous point STORM re-evaluates).
        x_prev: ``x_{k-1}`` (``x_0`` at ``k = 0``).
        d: the direction ``d_{k-1}`` (pytree like ``x``).
        weight: ``[]`` ``eta_k``.
        k: ``[]`` int32 iteration counter.
    """

    inner: FollowerState
    x_prev: PyTree
    d: PyTree
    weight: Array
    k: Array


def plain(split: SplitEstimator) -> Estimator:
    """``align`` then ``evaluate``: the estimate itself, no momentum."""

    def estimate(follower, problem, x, key):
        follower, change = split.align(follower, problem, x)
        f, g = split.evaluate(follower, problem, x, key)
        return g, follower, {"f": f, "inner_residual": change}

    return Estimator(split.init, estimate)


def _momentum(split, combine, step_size, scale, reevaluate) -> Estimator:
    def init(problem, x0, key) -> MomentumState:
        inner = split.init(problem, x0, key)
        dtype = problem.mdp.P.dtype
        zeros = jax.tree.map(jnp.zeros_like, x0)
        one, k = jnp.asarray(1.0, dtype), jnp.asarray(0, jnp.int32)
        return MomentumState(inner, x0, zeros, one, k)

    def estimate(state: MomentumState, problem, x, key):
        inner, change = split.align(state.inner, problem, x)
        f, g_hat = split.evaluate(inner, problem, x, key)
        g_prev = None
        if reevaluate:  # the same samples (key) at the previous point
            _, g_prev = split.evaluate(state.inner, problem, state.x_prev, key)
        update = combine(g_hat, state.d, g_prev, state.weight)
        first = state.k == 0
        d = jax.tree.map(lambda g, u: jnp.where(first, g, u), g_hat, update)
        lr = step_size(state.k)
        weight = jnp.clip(scale * lr**2, 0.0, 1.0).astype(state.weight.dtype)
        metrics = {
            "f": f,
            "inner_residual": change,
            "estimate_norm": tree_norm(g_hat),
            "step_size": jnp.asarray(lr, f.dtype),
            "momentum_weight": state.weight,
        }
        return d, MomentumState(inner, x, d, weight, state.k + 1), metrics

    return Estimator(init, estimate)


def storm(
    split: SplitEstimator, *, step_size: Callable[[Array], Array], scale: float
) -> Estimator:
    """STORM momentum; ``eta_{k+1} = clip(scale * step_size(k)^2, 0, 1)``."""

    def combine(g, d, g_prev, eta):
        return jax.tree.map(lambda g, d, gp: g + (1.0 - eta) * (d - gp), g, d, g_prev)

    return _momentum(split, combine, step_size, scale, reevaluate=True)


def moving_average(
    split: SplitEstimator,
    *,
    step_size: Callable[[Array], Array],
    scale: float,
    weight: float | None = None,
) -> Estimator:
    """Moving average with ``eta_k`` from the schedule, or the constant ``weight``."""

    def combine(g, d, _, eta):
        w = eta if weight is None else weight
        return jax.tree.map(lambda g, d: (1.0 - w) * d + w * g, g, d)

    return _momentum(split, combine, step_size, scale, reevaluate=False)
