"""Types of the arrays and of every callable the API takes, with their shapes.

Shapes: ``S`` states, ``A`` actions, ``H`` horizon, ``m`` trajectories per tuple;
``x`` is the leader's variable (any pytree of arrays), ``data`` a problem's own
arrays (see :class:`bilevel_rl.BilevelProblem`). A batch adds a leading ``[B]`` to
every array of a problem; the callables below always see ONE instance.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

Array = jax.Array
PRNGKey = jax.Array
PyTree = Any
Metrics = dict[str, Array]
"""Scalar (``[]``) metrics of one iteration, by name."""

RewardFn = Callable[[PyTree, PyTree], Array]
"""``reward_fn(data, x) -> [S, A]``: the leader's reward model ``r_x``."""

UpperFn = Callable[[PyTree, PyTree, Array], Array]
"""``upper(data, x, policy[S, A]) -> []``: the upper objective ``f(x, pi)``."""

TrajectoryLoss = Callable[[PyTree, PyTree, Any], Array]
"""``loss(data, x, trajs) -> []``: ``l(xi; x)`` of one tuple ``xi`` of ``m``
trajectories (:class:`bilevel_rl.sampling.Trajectories`, fields ``[m, H]``), with
``upper(data, x, pi) = E_{xi ~ rho(pi)}[loss(data, x, xi)]`` (docs/math.md §4)."""

BoundRewardFn = Callable[[PyTree], Array]
"""``reward_fn(x) -> [S, A]`` of one instance (:meth:`BilevelProblem.bind`)."""

BoundUpperFn = Callable[[PyTree, Array], Array]
"""``upper(x, policy[S, A]) -> []`` of one instance."""

BoundTrajectoryLoss = Callable[[PyTree, Any], Array]
"""``loss(x, trajs) -> []`` of one instance (:meth:`BilevelProblem.loss`)."""

FollowerState = Any
"""An estimator's own state (a ``NamedTuple`` of arrays, e.g. ``policy[S, A]``)."""

EstimatorInit = Callable[[Any, PyTree, PRNGKey], FollowerState]
"""``init(problem, x0, key) -> follower``: the follower's state before step 0."""

EstimateFn = Callable[
    [FollowerState, Any, PyTree, PRNGKey], tuple[PyTree, FollowerState, Metrics]
]
"""``estimate(follower, problem, x, key) -> (grad, follower, metrics)``.

At the leader's ``x_k`` (one instance): moves the follower (e.g. inner steps toward
``pi*_{x_k}``) and returns the hyper-gradient estimate ``grad`` (a pytree like
``x``), the follower's new state and the estimator's metrics, which hold at least
``f`` and ``inner_residual`` (:mod:`bilevel_rl.algorithms.base`). ``key`` is fresh
each step."""


class Estimator(NamedTuple):
    """A hyper-gradient estimator: the pluggable part of every algorithm.

    Attributes:
        init: :data:`EstimatorInit`.
        estimate: :data:`EstimateFn`.
        maximize: ``True`` when ``grad`` is the gradient of an objective to be
            maximized (AIHF's likelihood); the solver then descends ``-grad``.
    """

    init: EstimatorInit
    estimate: EstimateFn
    maximize: bool = False


__all__ = [
    "Array",
    "BoundRewardFn",
    "BoundTrajectoryLoss",
    "BoundUpperFn",
    "EstimateFn",
    "Estimator",
    "EstimatorInit",
    "FollowerState",
    "Metrics",
    "PRNGKey",
    "PyTree",
    "RewardFn",
    "TrajectoryLoss",
    "UpperFn",
]
