"""The follower's side, shared by the algorithms: start, inner steps, best response.

* :func:`initial_policy`: ``pi_0``, the soft-optimal policy of the zero reward
  (uniform, or ``pi0 = mdp.ref_policy`` in the KL-regularized case);
* :func:`align_policy`: ``N`` warm-started policy mirror-descent steps toward
  ``pi*_x`` (docs/math.md §4; ``policy_step = inf`` is soft policy iteration);
* :func:`best_response`: ``pi*_x`` solved to :data:`BEST_RESPONSE_TOL` (soft policy
  iteration), for the estimators that use the exact best response.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from bilevel_rl.mdp import TabularMDP
from bilevel_rl.problem import BilevelProblem
from bilevel_rl.soft import (
    SoftSolution,
    policy_mirror_descent_step,
    soft_policy,
    soft_value_iteration,
)
from bilevel_rl.types import Array, PRNGKey, PyTree

BEST_RESPONSE_TOL = 0.0
"""Residual to which :func:`best_response` solves the follower's problem: 0, i.e. to
the dtype's round-off floor (soft policy iteration's ``"roundoff_floor"`` stop,
docs/math.md §1), in 2-4 rounds."""


def initial_policy(mdp: TabularMDP) -> Array:
    """``pi_0 = softmax(0 + log pi0)``: uniform, or ``mdp.ref_policy``; ``[S, A]``."""
    return soft_policy(mdp, jnp.zeros(mdp.P.shape[-3:-1], mdp.P.dtype))


class PolicyFollower(NamedTuple):
    """A follower that keeps its (warm-started) tabular policy ``[S, A]``."""

    policy: Array


class NoFollower(NamedTuple):
    """The state of an estimator that solves the follower from scratch each step."""


def init_policy_follower(
    problem: BilevelProblem, x0: PyTree, key: PRNGKey
) -> PolicyFollower:
    """``PolicyFollower(pi_0)`` with ``pi_0`` = :func:`initial_policy`."""
    return PolicyFollower(initial_policy(problem.mdp))


def init_no_follower(problem: BilevelProblem, x0: PyTree, key: PRNGKey) -> NoFollower:
    """``NoFollower()``."""
    return NoFollower()


def align_policy(
    mdp: TabularMDP,
    reward: Array,
    policy: Array,
    *,
    policy_step: float,
    inner_steps: int,
    inner_tol: float = 0.0,
) -> tuple[Array, Array]:
    """``N`` warm-started PMD steps toward ``pi*`` (fewer once ``inner_tol`` is met).

    Args:
        mdp: one MDP.
        reward: ``[S, A]``.
        policy: ``[S, A]`` the warm start.
        policy_step: PMD step ``eta`` (``inf``: soft policy iteration).
        inner_steps: ``N``, the most steps taken.
        inner_tol: stop once a step changes the policy by less than this in
            sup-norm (``0``: always ``N`` steps).

    Returns:
        ``(policy, change)``: the new ``[S, A]`` policy and the sup-norm change of
        its last step (the inner residual).
    """

    def cond(carry):
        _, change, t = carry
        return (t < inner_steps) & (change > inner_tol)

    def body(carry):
        pi, _, t = carry
        nxt = policy_mirror_descent_step(mdp, reward, pi, policy_step)
        return nxt, jnp.max(jnp.abs(nxt - pi)), t + 1

    init = (policy, jnp.asarray(jnp.inf, policy.dtype), jnp.asarray(0, jnp.int32))
    pi, change, _ = jax.lax.while_loop(cond, body, init)
    return pi, change


def best_response(mdp: TabularMDP, reward: Array) -> SoftSolution:
    """The follower's soft-optimal solution, by soft policy iteration.

    Args:
        mdp: one MDP.
        reward: ``[S, A]`` (not differentiated: the solve is ``stop_gradient``-ed).

    Returns:
        :class:`~bilevel_rl.soft.SoftSolution` with residual at most
        :data:`BEST_RESPONSE_TOL` (or the dtype's round-off floor).
    """
    return soft_value_iteration(
        mdp,
        jax.lax.stop_gradient(reward),
        method="policy_iteration",
        tol=BEST_RESPONSE_TOL,
    )


def check_trajectory_problem(problem: BilevelProblem, name: str) -> None:
    """Raises ``ValueError`` unless ``problem`` has a trajectory loss and horizon."""
    if problem.trajectory_loss is None:
        raise ValueError(
            f"problem.trajectory_loss: {name} needs a trajectory-level upper loss "
            "(see BilevelProblem); this problem has none"
        )
    if problem.horizon < 1:
        raise ValueError(f"problem.horizon: must be >= 1, got {problem.horizon}")
