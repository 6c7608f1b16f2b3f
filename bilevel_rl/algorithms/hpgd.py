"""HPGD: stochastic hyper-policy gradient descent with the exact soft best response.

For a leader whose objective is its own discounted return under the follower's
soft-optimal policy, ``f(x, pi) = -V_u^pi(rho) + c(x)`` with an upper reward
``r_u[S, A]`` (e.g. Four-Rooms incentive design: ``r_u(s, a) = target[s]``), the
policy-gradient theorem and ``grad_x log pi*_x = (dQ_l - dV_l) / tau`` (MATH.md §4)
give (MATH.md §8)

    grad phi(x) = grad_x c(x)
                  - (1/tau) E_{pi*_x} [ sum_t gamma^t A_u(s_t, a_t) dA_l(s_t, a_t) ]

with ``A_u = Q_u - V_u`` the leader's advantage under ``pi*_x`` and
``dA_l = dQ*/dx - dV*/dx`` the follower's advantage Jacobian (Prop. 5.1). HPGD
samples the trajectories (``num_trajectories`` from ``rho``, ``horizon`` steps:
bias ``O(gamma^H)``) and uses the exact tabular ``A_u`` and ``dA_l`` at the exact
best response; :func:`hpgd_estimate` is unbiased for the truncated sum.

References:
    Thoma, Pasztor, Krause, Ramponi, Hu, "Contextual Bilevel Reinforcement Learning
    for Incentive Alignment" (HPGD), 2024; MATH.md §8.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from bilevel_rl.algorithms.base import Solver, check_positive, exact_metrics, tree_norm
from bilevel_rl.hypergrad import q_value_jacobian
from bilevel_rl.problem import BilevelProblem
from bilevel_rl.sampling import rollout
from bilevel_rl.soft import soft_value_iteration
from bilevel_rl.types import Array, PRNGKey, PyTree


class HPGDState(NamedTuple):
    """Iterate of HPGD: ``x``, optax state and the sampling key."""

    x: PyTree
    opt_state: optax.OptState
    key: PRNGKey


def hpgd_estimate(
    key: PRNGKey,
    problem: BilevelProblem,
    x: PyTree,
    upper_reward: Array,
    *,
    num_trajectories: int,
    horizon: int,
) -> PyTree:
    """One HPGD estimate of ``grad phi(x)`` for ``f = -V_u^pi(rho) + c(x)``.

    ``grad_x c`` is taken as ``grad_x f(x, pi)`` at fixed ``pi`` (``problem.upper``
    must depend on ``pi`` only through ``-V_u^pi(rho)``).

    Args:
        key: PRNG key of the trajectories.
        problem: one instance.
        x: leader variable.
        upper_reward: ``[S, A]`` the leader's per-step reward ``r_u``.
        num_trajectories: trajectories per estimate (static).
        horizon: steps per trajectory (static).

    Returns:
        A pytree like ``x``.
    """
    mdp = problem.mdp
    reward = problem.reward(x)
    policy = soft_value_iteration(
        mdp, reward, method="policy_iteration", tol=1e-12
    ).policy
    # The leader's advantage under pi (no entropy term in the leader's return).
    P_pi = jnp.einsum("sa,sat->st", policy, mdp.P)
    S = mdp.num_states
    v_u = jnp.linalg.solve(
        jnp.eye(S, dtype=P_pi.dtype) - mdp.gamma * P_pi,
        jnp.sum(policy * upper_reward, axis=-1),
    )
    adv_u = upper_reward + mdp.gamma * mdp.P @ v_u - v_u[:, None]  # [S, A]
    dq = q_value_jacobian(mdp, problem.reward, x, policy)  # leaves [S, A, ...]
    dv = jax.tree.map(lambda j: jnp.einsum("sa,sa...->s...", policy, j), dq)
    trajs = rollout(
        key, mdp, policy, horizon=horizon, num_trajectories=num_trajectories
    )
    weights = mdp.gamma ** jnp.arange(horizon, dtype=reward.dtype)
    # sum_t gamma^t A_u(s_t, a_t) 1{(s_t, a_t) = (s, a)}, averaged over trajectories.
    w = (
        jnp.zeros_like(reward)
        .at[trajs.states, trajs.actions]
        .add(weights * adv_u[trajs.states, trajs.actions])
        / num_trajectories
    )

    def contract(jq, jv):
        da = jq - jv[:, None]
        return jnp.tensordot(w, da, axes=([0, 1], [0, 1]))

    pg = jax.tree.map(contract, dq, dv)
    direct = jax.grad(problem.objective)(x, policy)
    return jax.tree.map(lambda d, g: d - g / mdp.tau, direct, pg)


def make(
    *,
    upper_reward: Callable[[object], Array],
    beta: float = 1e-2,
    num_trajectories: int = 16,
    horizon: int = 50,
    optimizer: optax.GradientTransformation | None = None,
    track_exact: bool = True,
) -> Solver:
    """Builds HPGD.

    Args:
        upper_reward: ``upper_reward(problem.data) -> [S, A]`` the leader's
            per-step reward (a hashable module-level function).
        beta: step size (default ``optax.sgd(beta)``).
        num_trajectories: trajectories per estimate.
        horizon: trajectory length.
        optimizer: optax transformation of the estimate.
        track_exact: record ``exact_f`` and ``exact_grad_norm``.

    Returns:
        A :class:`~bilevel_rl.algorithms.base.Solver` with metrics ``grad_norm``
        (‖estimate‖), ``f`` (``f(x_k, pi*_{x_k})`` when tracked, else the
        estimate's norm is the only cost-free signal) and the exact ones.

    Raises:
        ValueError: non-positive ``beta``, ``num_trajectories < 1``, ``horizon < 1``.
    """
    beta = check_positive("beta", beta)
    num_trajectories = check_positive(
        "num_trajectories", num_trajectories, integer=True
    )
    horizon = check_positive("horizon", horizon, integer=True)
    opt = optimizer if optimizer is not None else optax.sgd(beta)

    def init(problem: BilevelProblem, key: PRNGKey) -> HPGDState:
        return HPGDState(problem.x0, opt.init(problem.x0), key)

    def step(state: HPGDState, problem: BilevelProblem):
        key, k_est = jax.random.split(state.key)
        g = hpgd_estimate(
            k_est,
            problem,
            state.x,
            upper_reward(problem.data),
            num_trajectories=num_trajectories,
            horizon=horizon,
        )
        metrics = {"grad_norm": tree_norm(g)}
        if track_exact:
            exact = exact_metrics(problem, state.x)
            metrics.update(exact, f=exact["exact_f"])
        updates, opt_state = opt.update(g, state.opt_state, state.x)
        x = optax.apply_updates(state.x, updates)
        return HPGDState(x, opt_state, key), metrics

    return Solver(init, step)


def target_reward(data) -> Array:
    """``r_u(s, a) = target[s]``: the Four-Rooms leader's reward (``IncentiveData``)."""
    return jnp.broadcast_to(data.target[:, None], data.base_reward.shape)
