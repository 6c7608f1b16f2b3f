"""HPGD: stochastic hyper-policy gradient descent with the exact soft best response.

For a leader whose objective is its own discounted return under the follower's
soft-optimal policy, ``f(x, pi) = -V_u^pi(rho) + c(x)`` with an upper reward
``r_u[S, A]`` (e.g. Four-Rooms incentive design: ``r_u(s, a) = target[s]``), the
policy-gradient theorem and ``grad_x log pi*_x = (dQ_l - dV_l) / tau`` (docs/math.md §4)
give (docs/math.md §8)

    grad phi(x) = grad_x c(x)
                  - (1/tau) E_{pi*_x} [ sum_t gamma^t A_u(s_t, a_t) dA_l(s_t, a_t) ]

with ``A_u = Q_u - V_u`` the leader's advantage under ``pi*_x`` and
``dA_l = dQ*/dx - dV*/dx`` the follower's advantage Jacobian (Prop. 5.1). HPGD
samples the trajectories (``num_samples`` from ``rho``, ``horizon`` steps:
bias ``O(gamma^H)``) and uses the exact tabular ``A_u`` and ``dA_l`` at the exact
best response; :func:`hpgd_estimate` is unbiased for the truncated sum.

References:
    Thoma, Pasztor, Krause, Ramponi, Hu, "Contextual Bilevel Reinforcement Learning
    for Incentive Alignment" (HPGD), 2024; docs/math.md §8.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from bilevel_rl.algorithms.base import Solver, build_solver
from bilevel_rl.algorithms.follower import best_response, init_no_follower
from bilevel_rl.algorithms.params import (
    Optimizer,
    as_optimizer,
    count,
    flag,
    option,
    validate,
)
from bilevel_rl.hypergrad import q_value_jacobian
from bilevel_rl.objectives import target_reward
from bilevel_rl.problem import BilevelProblem
from bilevel_rl.sampling import rollout
from bilevel_rl.types import Array, Estimator, PRNGKey, PyTree

DESCRIPTION = (
    "HPGD (Thoma et al. 2024): hyper-policy gradient, exact soft best response"
)
NEEDS = "incentive"
ALIASES = {"beta": "optimizer.learning_rate", "num_trajectories": "num_samples"}


UPPER_REWARDS: dict[str, Callable[[PyTree], Array]] = {"target": target_reward}
"""Upper rewards by name, for configuration files."""


def _upper_reward(name, value):
    if callable(value):
        return value
    if value not in UPPER_REWARDS:
        raise ValueError(
            f"{name}: must be a function of problem.data or one of "
            f"{sorted(UPPER_REWARDS)}, got {value!r}"
        )
    return value


@dataclasses.dataclass(frozen=True)
class Params:
    """Options of HPGD."""

    upper_reward: str | Callable[[PyTree], Array] = option(
        "target",
        "the leader's per-step reward r_u(data) -> [S, A]: a name (target: the "
        "incentive problem's target cells) or a function",
        _upper_reward,
    )
    optimizer: Optimizer = option(
        Optimizer(learning_rate=1e-2), "the leader's update", as_optimizer
    )
    num_samples: int = option(16, "trajectories per estimate", count)
    horizon: int = option(50, "steps per trajectory (bias O(gamma^H))", count)
    track_exact: bool = option(True, "record exact_f and exact_grad_norm", flag)

    def __post_init__(self):
        validate(self)


def hpgd_estimate(
    key: PRNGKey,
    problem: BilevelProblem,
    x: PyTree,
    upper_reward: Array,
    *,
    num_trajectories: int,
    horizon: int,
    with_solution: bool = False,
) -> PyTree | tuple[Array, PyTree, Array]:
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
        with_solution: also return ``f(x, pi*_x)`` and the residual of the
            follower's solve (static).

    Returns:
        A pytree like ``x``, or ``(f, grad, residual)``.
    """
    mdp = problem.mdp
    reward = problem.reward(x)
    sol = best_response(mdp, reward)
    policy = sol.policy
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
    f, direct = jax.value_and_grad(problem.objective)(x, policy)
    grad = jax.tree.map(lambda d, g: d - g / mdp.tau, direct, pg)
    return (f, grad, sol.residual) if with_solution else grad


def estimator(params: Params) -> Estimator:
    """HPGD's estimate at the exact best response; metrics ``f``
    (``f(x_k, pi*_{x_k})``) and ``inner_residual`` (the best response's residual)."""
    upper_reward = params.upper_reward
    if isinstance(upper_reward, str):
        upper_reward = UPPER_REWARDS[upper_reward]

    def estimate(follower, problem: BilevelProblem, x, key):
        f, g, residual = hpgd_estimate(
            key,
            problem,
            x,
            upper_reward(problem.data),
            num_trajectories=params.num_samples,
            horizon=params.horizon,
            with_solution=True,
        )
        drawn = jnp.asarray(params.num_samples * params.horizon, f.dtype)
        return g, follower, {"f": f, "inner_residual": residual, "transitions": drawn}

    return Estimator(init_no_follower, estimate)


def make(**kwargs) -> Solver:
    """Builds HPGD from :class:`Params` fields.

    Deprecated: ``beta`` (use ``optimizer``), ``num_trajectories``
    (``num_samples``).

    Raises:
        ValueError/TypeError: a field breaks its rule (the message names it).
    """
    return build_solver(Params, estimator, kwargs, ALIASES)
