"""Momentum as a wrapper around a sampled estimator (docs/math.md §5).

A sampled estimator splits in three parts (:class:`SplitEstimator`): ``align``
moves the follower toward ``pi*_{x_k}``, ``draw`` draws the samples ``Xi_k`` (the
stored trajectories) under the aligned follower, and ``evaluate`` computes the
estimate from given samples at any ``x`` (optionally importance-weighted to
another follower). The wrappers turn it into an
:class:`~bilevel_rl.types.Estimator` whose ``grad`` is the direction ``d_k``:

* :func:`plain`: ``d_k = ĝ_k`` (no momentum);
* :func:`storm`: ``d_k = ĝ(x_k, pi_k; Xi_k) + (1 - eta_k)(d_{k-1} -
  ĝ(x_{k-1}, pi_{k-1}; Xi_k))``, ``d_0 = ĝ_0`` **[reconstructed, STORM form;
  corrected]**: ``Xi_k`` is drawn ONCE, at ``(x_k, pi_k)``, and the same stored
  trajectories are re-evaluated at ``x_{k-1}`` (``reuse="fixed"``, the paper's
  Lemma I.4), or also importance-weighted by their likelihood ratio
  ``pi_{k-1} / pi_k`` (``reuse="likelihood_ratio"``, unbiased up to clipping);
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

REUSE = ("fixed", "likelihood_ratio")

AlignFn = Callable[[FollowerState, Any, PyTree], tuple[FollowerState, Array]]
"""``align(follower, problem, x) -> (follower, inner_residual)``."""

DrawFn = Callable[[FollowerState, Any, PyTree, Array, Array], Any]
"""``draw(follower, problem, x, key, k) -> samples`` at iteration ``k`` (``[]``
int32, for a sampling schedule): a pytree of stored draws with a
``num_transitions()`` method (the transitions the estimate uses)."""

EvaluateFn = Callable[
    [Any, Any, PyTree, tuple[FollowerState, FollowerState] | None],
    tuple[Array, PyTree],
]
"""``evaluate(samples, problem, x, reweight) -> (f, grad)``; ``reweight`` is
``None`` or ``(target, sampling)`` followers: weight the samples (drawn under
``sampling``) by their likelihood ratio under ``target``."""


class SplitEstimator(NamedTuple):
    """A sampled estimator in three parts (see the module docstring)."""

    init: EstimatorInit
    align: AlignFn
    draw: DrawFn
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


def correction_sq_ratio(
    split: SplitEstimator,
    problem,
    followers: tuple[FollowerState, FollowerState],
    points: tuple[PyTree, PyTree],
    key: Array,
    reuse: str = "fixed",
) -> Array:
    """``‖ĝ(x; Xi) - ĝ(x'; Xi)‖² / ‖x - x'‖²`` for ``Xi`` drawn once at ``x``.

    The mean of this ratio over keys is ``L̃²``, the mean-square Lipschitz constant
    of the estimator for fixed samples (the paper's Lemma I.4) that STORM's
    correction relies on: its share of the direction's error is about
    ``L̃² ‖d‖² / c`` for ``eta = c lr²`` (docs/math.md §5), so ``c`` must be large
    against it.

    Args:
        split: the sampled estimator.
        problem: one problem.
        followers: ``(now, prev)`` followers at ``x`` and ``x'`` (``now`` draws).
        points: ``(x, x')``.
        key: the key of the draw.
        reuse: ``"fixed"`` or ``"likelihood_ratio"`` (as in :func:`storm`).

    Returns:
        ``[]`` the ratio.
    """
    (now, prev), (x, x_prev) = followers, points
    samples = split.draw(now, problem, x, key, jnp.asarray(0, jnp.int32))
    _, g = split.evaluate(samples, problem, x, None)
    reweight = (prev, now) if reuse == "likelihood_ratio" else None
    _, g_prev = split.evaluate(samples, problem, x_prev, reweight)
    diff = jax.tree.map(jnp.subtract, g, g_prev)
    step = jax.tree.map(jnp.subtract, x, x_prev)
    return tree_norm(diff) ** 2 / tree_norm(step) ** 2


def storm_direction(g: PyTree, d_prev: PyTree, g_prev: PyTree, eta) -> PyTree:
    """STORM's ``d_k = ĝ_k + (1 - eta)(d_{k-1} - ĝ_{k-1})``, leafwise; ``g_prev``
    is the estimate at the previous point on the samples of ``g``."""
    return jax.tree.map(lambda g, d, gp: g + (1.0 - eta) * (d - gp), g, d_prev, g_prev)


def average_direction(g: PyTree, d_prev: PyTree, eta) -> PyTree:
    """The moving average ``d_k = (1 - eta) d_{k-1} + eta ĝ_k``, leafwise."""
    return jax.tree.map(lambda g, d: (1.0 - eta) * d + eta * g, g, d_prev)


def _estimate_now(split, follower, problem, x, key, k):
    inner, change = split.align(follower, problem, x)
    samples = split.draw(inner, problem, x, key, k)
    f, g_hat = split.evaluate(samples, problem, x, None)
    metrics = {
        "f": f,
        "inner_residual": change,
        "transitions": jnp.asarray(samples.num_transitions(), f.dtype),
    }
    return inner, samples, g_hat, metrics


def plain(split: SplitEstimator) -> Estimator:
    """``align``, ``draw`` and ``evaluate``: the estimate itself, no momentum
    (``d_k = ĝ_k``; the state keeps ``k`` for the sampling schedule)."""
    return _momentum(split, None, None, None, None)


def _momentum(split, combine, step_size, scale, reuse) -> Estimator:
    def init(problem, x0, key) -> MomentumState:
        inner = split.init(problem, x0, key)
        dtype = problem.mdp.P.dtype
        zeros = jax.tree.map(jnp.zeros_like, x0)
        one, k = jnp.asarray(1.0, dtype), jnp.asarray(0, jnp.int32)
        return MomentumState(inner, x0, zeros, one, k)

    def estimate(state: MomentumState, problem, x, key):
        inner, samples, g_hat, own = _estimate_now(
            split, state.inner, problem, x, key, state.k
        )
        if combine is None:  # plain: x_prev, d and weight stay as initialized
            return g_hat, state._replace(inner=inner, k=state.k + 1), own
        g_prev = None
        if reuse is not None:  # the same samples Xi_k at the previous point
            reweight = (state.inner, inner) if reuse == "likelihood_ratio" else None
            _, g_prev = split.evaluate(samples, problem, state.x_prev, reweight)
        update = combine(g_hat, state.d, g_prev, state.weight)
        first = state.k == 0
        d = jax.tree.map(lambda g, u: jnp.where(first, g, u), g_hat, update)
        lr = step_size(state.k)
        weight = jnp.clip(scale * lr**2, 0.0, 1.0).astype(state.weight.dtype)
        metrics = {
            **own,
            "estimate_norm": tree_norm(g_hat),
            "step_size": jnp.asarray(lr, own["f"].dtype),
            "momentum_weight": state.weight,
        }
        return d, MomentumState(inner, x, d, weight, state.k + 1), metrics

    return Estimator(init, estimate)


def storm(
    split: SplitEstimator,
    *,
    step_size: Callable[[Array], Array],
    scale: float,
    reuse: str = "fixed",
) -> Estimator:
    """STORM momentum; ``eta_{k+1} = clip(scale * step_size(k)^2, 0, 1)``.

    Raises:
        ValueError: ``reuse`` not in :data:`REUSE`.
    """
    if reuse not in REUSE:
        raise ValueError(f"reuse: must be one of {REUSE}, got {reuse!r}")

    return _momentum(split, storm_direction, step_size, scale, reuse)


def moving_average(
    split: SplitEstimator,
    *,
    step_size: Callable[[Array], Array],
    scale: float,
    weight: float | None = None,
) -> Estimator:
    """Moving average with ``eta_k`` from the schedule, or the constant ``weight``."""

    def combine(g, d, _, eta):
        return average_direction(g, d, eta if weight is None else weight)

    return _momentum(split, combine, step_size, scale, None)
