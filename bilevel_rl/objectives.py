"""Upper-level objectives ``f(x, pi)`` of bilevel problems.

Convention: ``upper(data, x, policy) -> []``, a pure function of explicit problem
data, the leader variable ``x`` and the follower's policy ``policy: [S, A]``, so that
it can be stored (static) in a :class:`bilevel_rl.BilevelProblem` and
``jax.vmap``-ed over a batch of problems. The exact hyper-gradient of MATH.md §2
needs ``f`` differentiable in both ``x`` and ``policy``.

Sections: SoBiRL synthetic (MATH.md §3); incentive design (MATH.md §9.3).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import struct

from bilevel_rl.mdp import TabularMDP
from bilevel_rl.soft import occupancy_measure
from bilevel_rl.types import Array

__all__ = [
    "IncentiveData",
    "incentive_design",
    "sobirl_quadratic",
    "target_visits",
]

# ------------------------------------------------------------ SoBiRL synthetic (§3)


def sobirl_quadratic(data: Any, x: Array, policy: Array) -> Array:
    """SoBiRL synthetic objective ``f(x, pi) = 0.5 ||x||^2 + 0.5 ||pi||_F^2``.

    Its global minimum over ``x`` (with ``pi = pi*_x``) is ``S / (2 A)``, reached at
    ``x = 0`` where the reward vanishes and ``pi*`` is uniform.

    Args:
        data: ignored (kept for the ``upper(data, x, policy)`` convention).
        x: ``[d]`` leader variable.
        policy: ``[S, A]`` follower policy.

    Returns:
        ``[]`` objective value.

    References:
        Yang, Gao, Yuan, AISTATS 2025, synthetic experiment; MATH.md §3.
    """
    del data
    return 0.5 * jnp.sum(x**2) + 0.5 * jnp.sum(policy**2)


# ------------------------------------------------------- incentive design (§9.3)


@struct.dataclass
class IncentiveData:
    """Data of an incentive-design problem (e.g. Four-Rooms, MATH.md §9.3).

    Attributes:
        mdp: the follower's MDP (the objective needs ``P``, ``rho`` and ``gamma`` for
            the occupancy measure).
        base_reward: ``[S, A]`` the follower's own reward, before incentives.
        target: ``[S]`` non-negative weights of the states the leader wants the
            follower to visit (one-hot on a single target cell).
        cost: ``[]`` weight ``lambda`` of the quadratic cost on incentives.
    """

    mdp: TabularMDP
    base_reward: Array
    target: Array
    cost: Array


def target_visits(data: IncentiveData, policy: Array) -> Array:
    """Expected discounted number of visits to the target states.

    ``sum_s target[s] sum_t gamma^t Pr(s_t = s)``, computed from the normalized
    occupancy of :func:`bilevel_rl.occupancy_measure` as
    ``sum_{s,a} target[s] d_pi(s, a) / (1 - gamma)``. For a single target cell it
    is at least the discounted probability ``E[gamma^T]`` of ever passing it
    (``T`` the hitting time) and equals it when the cell is never revisited; with
    slippery moves revisits happen, so this counts every (discounted) visit. It is
    a smooth function of ``policy`` (one ``S x S`` linear solve).

    Args:
        data: the incentive-design data.
        policy: ``[S, A]`` follower policy.

    Returns:
        ``[]`` non-negative.
    """
    d = occupancy_measure(data.mdp, policy)
    return jnp.sum(data.target[:, None] * d) / (1.0 - data.mdp.gamma)


def incentive_design(data: IncentiveData, x: Array, policy: Array) -> Array:
    """Leader's loss: ``-target_visits(pi) + cost * ||x||^2`` (to be minimized).

    The leader pays per-state incentives ``x`` (added to the follower's reward by
    :func:`bilevel_rl.rewards.state_incentive_reward`) and wants the follower to
    pass the target cell(s); see :func:`target_visits` for the exact visit term.

    Args:
        data: the incentive-design data.
        x: ``[S]`` incentives.
        policy: ``[S, A]`` follower policy.

    Returns:
        ``[]`` objective value.

    References:
        Thoma et al., "Contextual Bilevel Reinforcement Learning for Incentive
        Alignment" (HPGD), 2024, Four-Rooms experiment; MATH.md §9.3. The exact
        leader objective here is our reconstruction (documented above).
    """
    return -target_visits(data, policy) + data.cost * jnp.sum(x**2)
