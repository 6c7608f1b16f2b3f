"""PBRL with a value penalty (Shen et al. 2024), a first-order bilevel baseline.

Replaces the bilevel problem by the penalized single-level problem

    min_{x, pi}  f(x, pi) + lam * (V*_x(rho) - V^pi_x(rho))

(MATH.md §8): the gap ``V*_x(rho) - V^pi_x(rho) >= 0`` vanishes only at
``pi = pi*_x``. Per iteration:

* ``x``: a gradient step on ``grad_x f(x, pi) + lam * J^T (d*(s,a) - d_pi(s,a))``,
  using Danskin's theorem ``grad_x V*_x(rho) = sum_{s,a} d*(s,a) grad_x r_x(s,a)``
  with ``d`` the unnormalized discounted occupancy (``occupancy / (1 - gamma)``) of
  ``pi*_x`` (one exact soft solve) and the same for the fixed ``pi``;
* ``pi``: ``policy_steps`` natural mirror-descent steps
  (``pi <- pi exp(-eta G / (lam d_pi(s))) / Z``) on ``f(x, pi) - lam V^pi_x(rho)``
  with ``G`` its exact gradient through the linear soft policy evaluation and
  ``d_pi(s)`` the unnormalized discounted state occupancy; ``eta = 1/tau`` makes
  the penalty part one soft policy-iteration step.

``lam`` trades accuracy for conditioning: the penalized solution approaches the
bilevel one as ``lam`` grows.

References:
    Shen, Yang, Chen, "Principled Penalty-based Methods for Bilevel Reinforcement
    Learning and RLHF", ICML 2024; MATH.md §8.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from bilevel_rl.algorithms.base import Solver, check_positive, exact_metrics, tree_norm
from bilevel_rl.mdp import TabularMDP
from bilevel_rl.problem import BilevelProblem
from bilevel_rl.soft import (
    occupancy_measure,
    soft_policy_evaluation,
    soft_value_iteration,
)
from bilevel_rl.types import Array, PRNGKey, PyTree


class PBRLState(NamedTuple):
    """Iterate of PBRL: ``x``, the free policy ``pi`` ``[S, A]``, optax state, key."""

    x: PyTree
    policy: Array
    opt_state: optax.OptState
    key: PRNGKey


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
        policy = soft_value_iteration(
            mdp, jax.lax.stop_gradient(reward), method="policy_iteration", tol=1e-12
        ).policy
    visits = occupancy_measure(mdp, policy) / (1.0 - mdp.gamma)
    (g,) = vjp(visits.astype(reward.dtype))
    return g


def make(
    *,
    beta: float = 1e-2,
    penalty: float = 10.0,
    policy_step: float = 1.0,
    policy_steps: int = 1,
    optimizer: optax.GradientTransformation | None = None,
    track_exact: bool = True,
) -> Solver:
    """Builds PBRL (value penalty).

    Args:
        beta: step size of ``x`` (default ``optax.sgd(beta)``).
        penalty: ``lam > 0``.
        policy_step: natural mirror-descent step ``eta`` of the policy (``1/tau``
            is soft policy iteration on the penalty term).
        policy_steps: policy steps per iteration.
        optimizer: optax transformation of the ``x`` gradient.
        track_exact: record ``exact_f`` and ``exact_grad_norm`` of the bilevel
            problem at ``x_k``.

    Returns:
        A :class:`~bilevel_rl.algorithms.base.Solver` with metrics ``grad_norm``
        (‖x-gradient‖), ``f`` (``f(x_k, pi_k)``), ``value_gap``
        (``V*_x(rho) - V^pi(rho)``) and the exact ones.

    Raises:
        ValueError: non-positive ``beta``/``penalty``/``policy_step`` or
            ``policy_steps < 1``.
    """
    beta = check_positive("beta", beta)
    lam = check_positive("penalty", penalty)
    eta = check_positive("policy_step", policy_step)
    policy_steps = check_positive("policy_steps", policy_steps, integer=True)
    opt = optimizer if optimizer is not None else optax.sgd(beta)

    def init(problem: BilevelProblem, key: PRNGKey) -> PBRLState:
        S, A = problem.mdp.num_states, problem.mdp.num_actions
        policy = jnp.full((S, A), 1.0 / A, problem.mdp.P.dtype)
        return PBRLState(problem.x0, policy, opt.init(problem.x0), key)

    def penalized(problem, x, policy, reward):
        v, _ = soft_policy_evaluation(problem.mdp, reward, policy)
        return problem.objective(x, policy) - lam * problem.mdp.rho @ v

    def step(state: PBRLState, problem: BilevelProblem):
        mdp = problem.mdp
        reward = problem.reward(state.x)

        def policy_update(policy, _):
            G = jax.grad(penalized, argnums=2)(problem, state.x, policy, reward)
            # Natural-gradient scaling: divide by lam * d_pi(s) (> 0 for rho > 0),
            # so that eta = 1/tau is a soft policy-iteration step on the penalty.
            d_state = occupancy_measure(mdp, policy).sum(-1) / (1.0 - mdp.gamma)
            logits = jnp.log(policy) - eta * G / (lam * d_state[:, None])
            return jax.nn.softmax(logits, axis=-1), None

        policy, _ = jax.lax.scan(policy_update, state.policy, None, policy_steps)
        f, grad_f = jax.value_and_grad(problem.objective)(state.x, policy)
        star = soft_value_iteration(mdp, reward, method="policy_iteration", tol=1e-12)
        # Danskin: grad_x V*_x(rho) - grad_x V^pi_x(rho), the tested helper.
        g_star, g_pi = (
            optimal_value_gradient(mdp, problem.reward, state.x, policy=p)
            for p in (star.policy, policy)
        )
        grad = jax.tree.map(lambda f, a, b: f + lam * (a - b), grad_f, g_star, g_pi)
        v_pi, _ = soft_policy_evaluation(mdp, reward, policy)
        metrics = {
            "grad_norm": tree_norm(grad),
            "f": f,
            "value_gap": mdp.rho @ (star.v - v_pi),
        }
        if track_exact:
            metrics.update(exact_metrics(problem, state.x))
        updates, opt_state = opt.update(grad, state.opt_state, state.x)
        x = optax.apply_updates(state.x, updates)
        return PBRLState(x, policy, opt_state, state.key), metrics

    return Solver(init, step)
