"""Stoc-SoBiRL: fully sampled hyper-gradients with momentum (Algorithms 3–4).

Per outer iteration ``k`` (MATH.md §5):

1. ``pi_k``: ``N`` warm-started PMD steps toward ``pi*_{x_k}`` (as in SoBiRL);
2. ``ĝ(x_k, pi_k; Xi_k)``: Algorithm 3 with ``D`` tuples, ``E`` generative rollouts
   of length ``L`` per visited pair
   (:func:`bilevel_rl.estimators.sampled_hypergradient`) **[reconstructed symbols]**;
3. momentum, either STORM (``momentum="storm"``) **[reconstructed]**

   ``d_k = ĝ(x_k, pi_k; Xi_k) + (1 - eta_k) (d_{k-1} - ĝ(x_{k-1}, pi_{k-1}; Xi_k))``,
   ``d_0 = ĝ(x_0, pi_0; Xi_0)`` — the samples ``Xi_k`` are re-used at the previous
   point by re-using the key — or the plain moving average
   (``momentum="average"``) ``d_k = (1 - eta_k) d_{k-1} + eta_k ĝ_k``;
4. ``x_{k+1} = x_k - beta_k d_k`` with ``beta_k = a / (w + k)^{1/3}`` and
   ``eta_{k+1} = clip(c beta_k^2, 0, 1)``.

References:
    Yang, Gao & Yuan, AISTATS 2025, Section 6, Algorithms 3–4; MATH.md §5.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from bilevel_rl.algorithms.base import (
    Solver,
    check_positive,
    exact_metrics,
    tree_norm,
)
from bilevel_rl.algorithms.sobirl import align_policy, check_trajectory_problem
from bilevel_rl.estimators import sampled_hypergradient
from bilevel_rl.problem import BilevelProblem
from bilevel_rl.types import Array, PRNGKey, PyTree

MOMENTUM = ("storm", "average")


class StocSoBiRLState(NamedTuple):
    """Iterate of Stoc-SoBiRL.

    Attributes:
        x: ``x_k``.
        policy: ``[S, A]`` ``pi_{k-1}``: the warm start of the inner loop and the
            policy of the previous point that STORM re-evaluates.
        x_prev: ``x_{k-1}`` (``x_0`` at ``k = 0``).
        d: momentum direction ``d_{k-1}`` (pytree like ``x``).
        momentum_weight: ``[]`` ``eta_k``.
        k: ``[]`` int32 iteration counter.
        key: PRNG key.
    """

    x: PyTree
    policy: Array
    x_prev: PyTree
    d: PyTree
    momentum_weight: Array
    k: Array
    key: PRNGKey


def make(
    *,
    a: float = 0.5,
    w: float = 10.0,
    c: float = 20.0,
    momentum: str = "storm",
    average_weight: float | None = None,
    num_samples: int = 8,
    num_rollouts: int = 4,
    rollout_length: int = 20,
    inner_steps: int = 10,
    eta: float = float("inf"),
    track_exact: bool = True,
) -> Solver:
    """Builds Stoc-SoBiRL.

    Args:
        a, w: step schedule ``beta_k = a / (w + k)^{1/3}`` (the defaults were
            chosen on the reward-shaping suite, ``suites.shaping_problem``).
        c: momentum schedule ``eta_{k+1} = clip(c beta_k^2, 0, 1)``.
        momentum: ``"storm"`` (Algorithm 4) or ``"average"`` (moving average).
        average_weight: a constant ``eta`` for ``"average"`` instead of the
            schedule (``None``: use the schedule).
        num_samples: ``D`` trajectory tuples per estimate.
        num_rollouts: ``E`` generative rollouts per visited pair.
        rollout_length: ``L`` steps per generative rollout (bias ``O(gamma^L)``).
        inner_steps: ``N`` PMD steps per iteration.
        eta: PMD step size (``inf``: soft policy iteration).
        track_exact: also record ``exact_f`` and ``exact_grad_norm``.

    Returns:
        A :class:`~bilevel_rl.algorithms.base.Solver` with metrics ``grad_norm``
        (‖d_k‖), ``estimate_norm`` (‖ĝ_k‖), ``f`` (sample mean of the loss),
        ``step_size`` (``beta_k``), ``momentum_weight`` (``eta_k``),
        ``inner_residual`` and optionally the exact ones.

    Raises:
        ValueError: non-positive ``a``/``w``/``c``/``eta``, an unknown
            ``momentum``, ``average_weight`` outside ``(0, 1]``, or ``D``, ``E``,
            ``L``, ``N`` < 1.
    """
    a = check_positive("a", a)
    w = check_positive("w", w)
    c = check_positive("c", c)
    if momentum not in MOMENTUM:
        raise ValueError(f"momentum: must be one of {MOMENTUM}, got {momentum!r}")
    if average_weight is not None and not 0.0 < float(average_weight) <= 1.0:
        raise ValueError(f"average_weight: must lie in (0, 1], got {average_weight!r}")
    sizes = dict(
        num_samples=check_positive("num_samples", num_samples, integer=True),
        num_rollouts=check_positive("num_rollouts", num_rollouts, integer=True),
        rollout_length=check_positive("rollout_length", rollout_length, integer=True),
    )
    inner_steps = check_positive("inner_steps", inner_steps, integer=True)
    eta = float("inf") if eta == float("inf") else check_positive("eta", eta)

    def step_size(k):
        return a / (w + k) ** (1.0 / 3.0)

    def estimate(key, problem, x, policy):
        return sampled_hypergradient(
            key,
            problem.loss,
            problem.reward,
            x,
            problem.mdp,
            policy,
            horizon=problem.horizon,
            num_trajectories=problem.num_trajectories,
            with_value=True,
            **sizes,
        )

    def init(problem: BilevelProblem, key: PRNGKey) -> StocSoBiRLState:
        check_trajectory_problem(problem, "Stoc-SoBiRL")
        S, A = problem.mdp.num_states, problem.mdp.num_actions
        dtype = problem.mdp.P.dtype
        policy = jnp.full((S, A), 1.0 / A, dtype)
        zeros = jax.tree.map(jnp.zeros_like, problem.x0)
        return StocSoBiRLState(
            problem.x0,
            policy,
            problem.x0,
            zeros,
            jnp.asarray(1.0, dtype),
            jnp.asarray(0, jnp.int32),
            key,
        )

    def step(state: StocSoBiRLState, problem: BilevelProblem):
        key, k_xi = jax.random.split(state.key)
        reward = problem.reward(state.x)
        pi, change = align_policy(
            problem,
            reward,
            state.policy,
            eta=eta,
            inner_steps=inner_steps,
            inner_tol=0.0,
        )
        f, g_hat = estimate(k_xi, problem, state.x, pi)
        eta_k = state.momentum_weight
        if momentum == "storm":
            # The same samples Xi_k (same key) at the previous point.
            _, g_prev = estimate(k_xi, problem, state.x_prev, state.policy)
            update = jax.tree.map(
                lambda g, d, gp: g + (1.0 - eta_k) * (d - gp), g_hat, state.d, g_prev
            )
        else:
            weight = eta_k if average_weight is None else average_weight
            update = jax.tree.map(
                lambda g, d: (1.0 - weight) * d + weight * g, g_hat, state.d
            )
        first = state.k == 0
        d = jax.tree.map(lambda g, u: jnp.where(first, g, u), g_hat, update)
        beta_k = step_size(state.k)
        x = jax.tree.map(lambda p, u: p - beta_k * u, state.x, d)
        eta_next = jnp.clip(c * beta_k**2, 0.0, 1.0).astype(eta_k.dtype)

        metrics = {
            "grad_norm": tree_norm(d),
            "estimate_norm": tree_norm(g_hat),
            "f": f,
            "step_size": jnp.asarray(beta_k, f.dtype),
            "momentum_weight": eta_k,
            "inner_residual": change,
        }
        if track_exact:
            metrics.update(exact_metrics(problem, state.x))
        new_state = StocSoBiRLState(x, pi, state.x, d, eta_next, state.k + 1, key)
        return new_state, metrics

    return Solver(init, step)
