"""Reward shaping with a nonlinear reward model: a non-convex bilevel suite.

The leader shapes the follower's reward through ``r_x = tanh(Phi x)`` (features
``Phi: [S, A, d]``) so that the follower's soft-optimal policy earns a high return
under the leader's own hidden reward ``r_u``. The upper objective is the leader's
negative ``H``-step discounted return plus a small ridge term,

    ``f(x, pi) = E_{tau ~ rho(pi)}[-sum_{t<H} gamma^t r_u(s_t, a_t)] + lam/2 ‖x‖²``,

available both at the policy level (exact, for the model-based algorithms and the
exact hyper-gradient) and as a trajectory loss (for SoBiRL and Stoc-SoBiRL). The
tanh saturation and the softmax make ``phi(x)`` non-convex. Used by
``benchmarks/convergence_rates.py``.

References:
    docs/math.md §4 (reward shaping upper level), §9.2 (random MDPs with feature
    rewards).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

from bilevel_rl.mdp import TabularMDP
from bilevel_rl.objectives import ShapingData, reward_shaping_loss, reward_shaping_value
from bilevel_rl.problem import BilevelProblem
from bilevel_rl.rewards import tanh_reward
from bilevel_rl.suites.checks import check_array_size, check_number, check_size
from bilevel_rl.suites.random_mdps import dirichlet_mdp, float_dtype
from bilevel_rl.types import Array, PRNGKey

__all__ = ["ShapingSuiteData", "shaping_problem"]


@struct.dataclass
class ShapingSuiteData:
    """Data of :func:`shaping_problem`.

    Attributes:
        features: ``[S, A, d]`` reward-model features ``Phi``.
        shaping: :class:`~bilevel_rl.objectives.ShapingData` (``r_u``, ``gamma``).
        mdp: the follower's MDP (the upper objective needs ``P`` and ``rho``);
            ``None`` in the suite's data: the problem passes its own.
        regularization: ``[]`` ridge weight ``lam``.
        horizon: ``H`` (static).
    """

    features: Array
    shaping: ShapingData
    mdp: TabularMDP | None
    regularization: Array
    horizon: int = struct.field(pytree_node=False, default=10)


def shaping_reward(data: ShapingSuiteData, x: Array) -> Array:
    """``r_x = tanh(Phi x)``; ``[S, A]``."""
    return tanh_reward(data.features, x)


def shaping_upper(data: ShapingSuiteData, x: Array, policy: Array) -> Array:
    """Exact ``f(x, pi)``: ``H``-step expected loss plus ``lam/2 ‖x‖²``."""
    value = reward_shaping_value(data.shaping, data.mdp, policy, data.horizon)
    return value + 0.5 * data.regularization * jnp.sum(x**2)


def shaping_loss(data: ShapingSuiteData, x: Array, trajs) -> Array:
    """Trajectory loss ``l(tau; x)`` whose expectation is :func:`shaping_upper`."""
    return reward_shaping_loss(data.shaping, x, trajs) + 0.5 * data.regularization * (
        jnp.sum(x**2)
    )


def shaping_problem(
    key: PRNGKey,
    *,
    num_states: int = 8,
    num_actions: int = 4,
    dim: int = 6,
    horizon: int = 10,
    gamma: float = 0.9,
    tau: float = 0.5,
    regularization: float = 0.01,
    dtype=None,
) -> BilevelProblem:
    """A random reward-shaping instance (jittable, vmappable over keys).

    Dirichlet(1) transitions, uniform ``rho``; ``Phi ~ N(0, 1)`` entries scaled by
    ``2/sqrt(d)``; hidden ``r_u ~ U(0, 1)``; ``x0 ~ N(0, I_d)``.

    Args:
        key: PRNG key.
        num_states: ``S``.
        num_actions: ``A``.
        dim: ``d``.
        horizon: ``H`` of the leader's return (trajectory length).
        gamma: discount of the follower and of the leader's return.
        tau: follower temperature.
        regularization: ridge weight ``lam`` on ``x``.
        dtype: floating dtype (default: JAX's default float).

    Returns:
        ``BilevelProblem`` with both ``upper`` (exact) and ``trajectory_loss``
        (``m = 1``, ``H = horizon``).
    """
    dtype = float_dtype(dtype)
    check_size("dim", dim)
    check_size("horizon", horizon)
    check_size("num_states", num_states)
    check_size("num_actions", num_actions)
    check_array_size("dim", "the features", (num_states, num_actions, dim), dtype)
    check_number("regularization", regularization, 0.0, math.inf, open_high=True)
    k_mdp, k_phi, k_u, k_x = jax.random.split(key, 4)
    mdp = dirichlet_mdp(
        k_mdp, num_states, num_actions, gamma=gamma, tau=tau, dtype=dtype
    )
    features = (
        2.0
        / jnp.sqrt(dim)
        * jax.random.normal(k_phi, (num_states, num_actions, dim), dtype)
    )
    data = ShapingSuiteData(
        features=features,
        shaping=ShapingData(
            upper_reward=jax.random.uniform(k_u, (num_states, num_actions), dtype),
            gamma=jnp.asarray(gamma, dtype),
        ),
        mdp=None,  # the problem passes its MDP (BilevelProblem.bound_data)
        regularization=jnp.asarray(regularization, dtype),
        horizon=horizon,
    )
    return BilevelProblem(
        mdp=mdp,
        data=data,
        x0=jax.random.normal(k_x, (dim,), dtype),
        reward_fn=shaping_reward,
        upper=shaping_upper,
        trajectory_loss=shaping_loss,
        horizon=horizon,
        num_trajectories=1,
    )
