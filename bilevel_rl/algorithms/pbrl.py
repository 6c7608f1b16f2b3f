"""PBRL with a value penalty (Shen et al. 2024), a first-order bilevel baseline.

Replaces the bilevel problem by the penalized single-level problem

    min_{x, pi}  f(x, pi) + lam * (V*_x(rho) - V^pi_x(rho))

(docs/math.md §8): the gap ``V*_x(rho) - V^pi_x(rho) >= 0`` vanishes only at
``pi = pi*_x``. Per iteration:

* ``x``: a gradient step on ``grad_x f(x, pi) + lam * J^T (d*(s,a) - d_pi(s,a))``,
  using Danskin's theorem ``grad_x V*_x(rho) = sum_{s,a} d*(s,a) grad_x r_x(s,a)``
  with ``d`` the unnormalized discounted occupancy (``occupancy / (1 - gamma)``) of
  ``pi*_x`` (one exact soft solve) and the same for the fixed ``pi``;
* ``pi``: ``inner_steps`` natural mirror-descent steps
  (``pi <- pi exp(-policy_step G / (lam d_pi(s))) / Z``) on
  ``f(x, pi) - lam V^pi_x(rho)`` with ``G`` its exact gradient through the linear
  soft policy evaluation and ``d_pi(s)`` the unnormalized discounted state
  occupancy; ``policy_step = 1/tau`` makes the penalty part one soft
  policy-iteration step.

``lam`` trades accuracy for conditioning: the penalized solution approaches the
bilevel one as ``lam`` grows.

References:
    Shen, Yang, Chen, "Principled Penalty-based Methods for Bilevel Reinforcement
    Learning and RLHF", ICML 2024; docs/math.md §8.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from bilevel_rl.algorithms.base import Solver, build_solver
from bilevel_rl.algorithms.follower import (
    PolicyFollower,
    best_response,
    init_policy_follower,
)
from bilevel_rl.algorithms.params import (
    Optimizer,
    as_optimizer,
    count,
    flag,
    option,
    positive,
    validate,
)
from bilevel_rl.mdp import TabularMDP
from bilevel_rl.problem import BilevelProblem
from bilevel_rl.soft import occupancy_measure, soft_policy_evaluation
from bilevel_rl.types import Array, Estimator, PyTree

DESCRIPTION = "PBRL (Shen et al. 2024): value-penalty single-level reformulation"
NEEDS = None
ALIASES = {"beta": "optimizer.learning_rate", "policy_steps": "inner_steps"}


@dataclasses.dataclass(frozen=True)
class Params:
    """Options of PBRL (value penalty)."""

    optimizer: Optimizer = option(
        Optimizer(learning_rate=1e-2), "the update of x", as_optimizer
    )
    penalty: float = option(10.0, "lam > 0 of the value penalty", positive)
    policy_step: float = option(
        1.0, "natural mirror-descent step of the policy (1/tau: soft PI)", positive
    )
    inner_steps: int = option(1, "policy steps per iteration", count)
    track_exact: bool = option(
        True, "record exact_f and exact_grad_norm of the bilevel problem", flag
    )

    def __post_init__(self):
        validate(self)


def optimal_value_gradient(
    mdp: TabularMDP, reward_fn, x: PyTree, *, policy: Array | None = None
) -> PyTree:
    """``grad_x V^pi_{r_x}(rho) = J^T d_pi`` (Danskin for ``pi = pi*_x``).

    Args:
        mdp: one MDP.
        reward_fn: ``reward_fn(x) -> [S, A]``.
        x: leader variable.
        policy: ``[S, A]`` a fixed policy; ``None`` uses ``pi*_x`` (then this is
            ``grad_x V*_x(rho)``, the entropy term not depending on ``x``).

    Returns:
        A pytree like ``x``.
    """
    reward, vjp = jax.vjp(reward_fn, x)
    if policy is None:
        policy = best_response(mdp, reward).policy
    visits = occupancy_measure(mdp, policy) / (1.0 - mdp.gamma)
    (g,) = vjp(visits.astype(reward.dtype))
    return g


def estimator(params: Params) -> Estimator:
    """PBRL's gradient of the penalized objective in ``x``; metrics ``f``
    (``f(x_k, pi_k)``), ``inner_residual`` (sup-norm change of the last policy
    step) and ``value_gap`` (``V*_x(rho) - V^pi(rho)``)."""
    lam, step = params.penalty, params.policy_step

    def penalized(problem, x, policy, reward):
        v, _ = soft_policy_evaluation(problem.mdp, reward, policy)
        return problem.objective(x, policy) - lam * problem.mdp.rho @ v

    def estimate(follower: PolicyFollower, problem: BilevelProblem, x, key):
        mdp = problem.mdp
        reward = problem.reward(x)

        def policy_update(carry, _):
            policy, _ = carry
            G = jax.grad(penalized, argnums=2)(problem, x, policy, reward)
            # Natural-gradient scaling: divide by lam * d_pi(s) (> 0 for rho > 0),
            # so that policy_step = 1/tau is a soft policy-iteration step on the
            # penalty.
            d_state = occupancy_measure(mdp, policy).sum(-1) / (1.0 - mdp.gamma)
            logits = jnp.log(policy) - step * G / (lam * d_state[:, None])
            new = jax.nn.softmax(logits, axis=-1)
            return (new, jnp.max(jnp.abs(new - policy))), None

        start = (follower.policy, jnp.zeros((), follower.policy.dtype))
        (policy, change), _ = jax.lax.scan(
            policy_update, start, None, params.inner_steps
        )
        f, grad_f = jax.value_and_grad(problem.objective)(x, policy)
        star = best_response(mdp, reward)
        # Danskin: grad_x V*_x(rho) - grad_x V^pi_x(rho), the tested helper.
        g_star, g_pi = (
            optimal_value_gradient(mdp, problem.reward, x, policy=p)
            for p in (star.policy, policy)
        )
        grad = jax.tree.map(lambda f, a, b: f + lam * (a - b), grad_f, g_star, g_pi)
        v_pi, _ = soft_policy_evaluation(mdp, reward, policy)
        metrics = {
            "f": f,
            "inner_residual": change,
            "value_gap": mdp.rho @ (star.v - v_pi),
            "transitions": jnp.zeros((), f.dtype),
        }
        return grad, PolicyFollower(policy), metrics

    return Estimator(init_policy_follower, estimate)


def make(**kwargs) -> Solver:
    """Builds PBRL (value penalty) from :class:`Params` fields.

    Deprecated: ``beta`` (use ``optimizer``), ``policy_steps`` (``inner_steps``).

    Raises:
        ValueError/TypeError: a field breaks its rule (the message names it).
    """
    return build_solver(Params, estimator, kwargs, ALIASES)
