"""SoBiRL: model-free hyper-gradient descent (SoBiRL paper, Algorithm 1).

Per outer iteration ``k`` (MATH.md §4):

1. bring ``pi_k`` close to ``pi*_{x_k}`` by ``N`` steps of entropy-regularized policy
   mirror descent warm-started at ``pi_{k-1}``
   (:func:`bilevel_rl.soft.policy_mirror_descent_step`, step ``eta``; ``eta = inf``
   is soft policy iteration) **[reconstructed inner rule]**; optionally stop early
   once successive policies differ by less than ``inner_tol``;
2. estimate (12)+(13) of Prop. 5.2 with ``pi_k`` in place of ``pi*``: ``D`` tuples
   of trajectories sampled from ``pi_k`` and the exact tabular ``∂Q/∂V`` of
   Prop. 5.1 (:func:`bilevel_rl.estimators.sampled_outer_hypergradient`);
3. ``x <- x - beta ĝ`` (or any optax transformation of ``ĝ``).

The problem must carry a ``trajectory_loss`` (see :class:`bilevel_rl.BilevelProblem`).

References:
    Yang, Gao & Yuan, "Bilevel Reinforcement Learning via the Development of
    Hyper-gradient without Lower-Level Convexity", AISTATS 2025, Algorithm 1.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from bilevel_rl.algorithms.base import (
    Solver,
    check_positive,
    exact_metrics,
    tree_norm,
)
from bilevel_rl.estimators import sampled_outer_hypergradient
from bilevel_rl.problem import BilevelProblem
from bilevel_rl.soft import policy_mirror_descent_step
from bilevel_rl.types import Array, PRNGKey, PyTree


class SoBiRLState(NamedTuple):
    """Iterate of SoBiRL: ``x_k``, the warm-started policy, optax state, key."""

    x: PyTree
    policy: Array
    opt_state: optax.OptState
    key: PRNGKey


def align_policy(problem, reward, policy, *, eta, inner_steps, inner_tol):
    """``N`` warm-started PMD steps toward ``pi*`` (fewer if ``inner_tol`` is met).

    Returns:
        ``(policy, change)``: the new ``[S, A]`` policy and the sup-norm change of
        its last step (the inner residual).
    """

    def cond(carry):
        _, change, t = carry
        return (t < inner_steps) & (change > inner_tol)

    def body(carry):
        pi, _, t = carry
        nxt = policy_mirror_descent_step(problem.mdp, reward, pi, eta)
        return nxt, jnp.max(jnp.abs(nxt - pi)), t + 1

    init = (policy, jnp.asarray(jnp.inf, policy.dtype), jnp.asarray(0, jnp.int32))
    pi, change, _ = jax.lax.while_loop(cond, body, init)
    return pi, change


def check_trajectory_problem(problem: BilevelProblem, name: str) -> None:
    """Raises ``ValueError`` unless ``problem`` has a trajectory loss and horizon."""
    if problem.trajectory_loss is None:
        raise ValueError(
            f"problem.trajectory_loss: {name} needs a trajectory-level upper loss "
            "(see BilevelProblem); this problem has none"
        )
    if problem.horizon < 1:
        raise ValueError(f"problem.horizon: must be >= 1, got {problem.horizon}")


def make(
    *,
    beta: float = 1e-2,
    inner_steps: int = 10,
    eta: float = float("inf"),
    inner_tol: float = 0.0,
    num_samples: int = 16,
    optimizer: optax.GradientTransformation | None = None,
    track_exact: bool = True,
) -> Solver:
    """Builds SoBiRL.

    Args:
        beta: step size of the default ``optax.sgd(beta)``.
        inner_steps: ``N``, maximum PMD steps per outer iteration.
        eta: PMD step size (``inf``: soft policy iteration).
        inner_tol: ``epsilon``: stop the inner loop once the policy changes by
            less than this in sup-norm (``0``: always ``N`` steps).
        num_samples: ``D`` trajectory tuples per estimate.
        optimizer: any optax transformation of the estimate.
        track_exact: also record ``exact_f`` and ``exact_grad_norm`` (MATH.md §2,
            from ``problem.upper``).

    Returns:
        A :class:`~bilevel_rl.algorithms.base.Solver` with metrics ``grad_norm``
        (‖ĝ_k‖), ``f`` (sample mean of the loss), ``inner_residual``
        and, with ``track_exact``, ``exact_f`` and ``exact_grad_norm``.

    Raises:
        ValueError: non-positive ``beta``/``eta``, ``inner_steps < 1``,
            ``num_samples < 1`` or negative ``inner_tol``.
    """
    beta = check_positive("beta", beta)
    inner_steps = check_positive("inner_steps", inner_steps, integer=True)
    eta = float("inf") if eta == float("inf") else check_positive("eta", eta)
    inner_tol = check_positive("inner_tol", inner_tol, allow_zero=True)
    num_samples = check_positive("num_samples", num_samples, integer=True)
    opt = optimizer if optimizer is not None else optax.sgd(beta)

    def init(problem: BilevelProblem, key: PRNGKey) -> SoBiRLState:
        check_trajectory_problem(problem, "SoBiRL")
        S, A = problem.mdp.num_states, problem.mdp.num_actions
        policy = jnp.full((S, A), 1.0 / A, problem.mdp.P.dtype)
        return SoBiRLState(problem.x0, policy, opt.init(problem.x0), key)

    def step(state: SoBiRLState, problem: BilevelProblem):
        key, k_est = jax.random.split(state.key)
        reward = problem.reward(state.x)
        pi, change = align_policy(
            problem,
            reward,
            state.policy,
            eta=eta,
            inner_steps=inner_steps,
            inner_tol=inner_tol,
        )
        f, g_hat = sampled_outer_hypergradient(
            k_est,
            problem.loss,
            problem.reward,
            state.x,
            problem.mdp,
            pi,
            horizon=problem.horizon,
            num_samples=num_samples,
            num_trajectories=problem.num_trajectories,
            with_value=True,
        )
        updates, opt_state = opt.update(g_hat, state.opt_state, state.x)
        x = optax.apply_updates(state.x, updates)
        metrics = {"grad_norm": tree_norm(g_hat), "f": f, "inner_residual": change}
        if track_exact:
            metrics.update(exact_metrics(problem, state.x))
        return SoBiRLState(x, pi, opt_state, key), metrics

    return Solver(init, step)
