"""Upper-level objectives ``f(x, pi)`` of bilevel problems.

Convention: ``upper(data, x, policy) -> []``, a pure function of explicit problem
data, the leader variable ``x`` and the follower's policy ``policy: [S, A]``, so that
it can be stored (static) in a :class:`bilevel_rl.BilevelProblem` and
``jax.vmap``-ed over a batch of problems. The exact hyper-gradient of docs/math.md §2
needs ``f`` differentiable in both ``x`` and ``policy``.

Sections: SoBiRL synthetic (docs/math.md §3); incentive design (docs/math.md §9);
trajectory-level losses ``l(data, x, trajs)`` of the model-free upper level
(docs/math.md §4, see that section for their convention).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from bilevel_rl.mdp import TabularMDP
from bilevel_rl.sampling import Trajectories, trajectory_returns
from bilevel_rl.soft import occupancy_measure
from bilevel_rl.types import Array

__all__ = [
    "IncentiveData",
    "incentive_design",
    "sobirl_quadratic",
    "target_reward",
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
        Yang, Gao, Yuan, AISTATS 2025, synthetic experiment; docs/math.md §3.
    """
    del data
    return 0.5 * jnp.sum(x**2) + 0.5 * jnp.sum(policy**2)


# ------------------------------------------------------- incentive design (§9.3)


@struct.dataclass
class IncentiveData:
    """Data of an incentive-design problem (e.g. Four-Rooms, docs/math.md §9).

    Attributes:
        mdp: the follower's MDP (the objective needs ``P``, ``rho`` and ``gamma`` for
            the occupancy measure); ``None`` when the problem passes its own
            (:meth:`bilevel_rl.BilevelProblem.bound_data`).
        base_reward: ``[S, A]`` the follower's own reward, before incentives.
        target: ``[S]`` non-negative weights of the states the leader wants the
            follower to visit (one-hot on a single target cell).
        cost: ``[]`` weight ``lambda`` of the quadratic cost on incentives.
    """

    mdp: TabularMDP | None
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


def target_reward(data: IncentiveData) -> Array:
    """``r_u(s, a) = target[s]``: the leader's per-step reward of an incentive
    problem (HPGD's upper reward on Four-Rooms); ``[S, A]``."""
    return jnp.broadcast_to(data.target[:, None], data.base_reward.shape)


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
        Alignment" (HPGD), 2024, Four-Rooms experiment; docs/math.md §9. The exact
        leader objective here is our reconstruction (documented above).
    """
    return -target_visits(data, policy) + data.cost * jnp.sum(x**2)


# ------------------------------------------- trajectory-level upper losses (§4)
#
# Convention: ``loss(data, x, trajs) -> []`` is the loss ``l(xi; x)`` of ONE tuple
# ``xi = (tau_1, ..., tau_m)`` of ``H``-step trajectories, passed as a
# :class:`bilevel_rl.sampling.Trajectories` whose fields are ``[m, H]``. The
# upper objective is ``f(x, pi) = E_{xi ~ rho(pi; M_u)}[l(xi; x)]`` (docs/math.md §4).
# Losses read ``states``/``actions`` only (not ``final_states`` or ``log_probs``).
# Bind the data with ``functools.partial(loss, data)`` to get the ``loss(x, trajs)``
# that :mod:`bilevel_rl.estimators` takes.

__all__ += [
    "PreferenceData",
    "ShapingData",
    "bradley_terry_bce",
    "reward_shaping_loss",
    "reward_shaping_value",
    "rlhf_bce_loss",
]


@struct.dataclass
class ShapingData:
    """Data of the reward-shaping upper level (docs/math.md §4).

    Attributes:
        upper_reward: ``[S, A]`` the leader's reward ``r_u``.
        gamma: ``[]`` discount of the leader's return.
    """

    upper_reward: Array
    gamma: Array


def reward_shaping_loss(data: ShapingData, x: Any, trajs: Trajectories) -> Array:
    """Reward-shaping loss ``l(xi; x) = -sum_i sum_{t<H} gamma^t r_u(s^i_t, a^i_t)``.

    The leader's negative discounted return on the follower's trajectories (``m =
    1`` in the paper; a tuple of ``m`` trajectories sums their returns). It does
    not depend on ``x``: the leader acts only through the follower's policy.

    Args:
        data: :class:`ShapingData`.
        x: leader variable (unused).
        trajs: :class:`~bilevel_rl.sampling.Trajectories` with fields ``[m, H]``.

    Returns:
        ``[]`` loss.

    References:
        Yang, Gao, Yuan, AISTATS 2025, Sections 3.3 and 5; docs/math.md §4.
    """
    del x
    return -jnp.sum(trajectory_returns(trajs, data.upper_reward, data.gamma))


def reward_shaping_value(
    data: ShapingData,
    mdp: TabularMDP,
    policy: Array,
    horizon: int,
    num_trajectories: int = 1,
) -> Array:
    """Exact ``E_{xi ~ rho(pi)}[reward_shaping_loss]`` for ``H``-step trajectories.

    ``-m sum_{t<H} gamma^t sum_s mu_t(s) sum_a pi(a|s) r_u(s, a)`` with
    ``mu_0 = rho`` and ``mu_{t+1} = mu_t P_pi``: the policy-level upper objective
    whose trajectory form is :func:`reward_shaping_loss` (so the exact
    hyper-gradient of docs/math.md §2 applies to it). Differentiable in ``policy``.

    Args:
        data: :class:`ShapingData`.
        mdp: the MDP the trajectories are drawn from (``P``, ``rho``).
        policy: ``[S, A]``.
        horizon: ``H`` (static).
        num_trajectories: ``m`` trajectories per tuple (static).

    Returns:
        ``[]`` expected loss.
    """
    P_pi = jnp.einsum("sa,sat->st", policy, mdp.P)
    r_pi = jnp.sum(policy * data.upper_reward, axis=-1)

    def body(mu, t):
        return mu @ P_pi, data.gamma**t * (mu @ r_pi)

    _, per_step = jax.lax.scan(body, mdp.rho, jnp.arange(horizon))
    return -num_trajectories * jnp.sum(per_step)


def bradley_terry_bce(
    reward: Array,
    trajs: Trajectories,
    labels: Array,
    discount: float | Array = 1.0,
) -> Array:
    """Bradley–Terry binary cross-entropy of one trajectory pair.

    ``BCE(y, sigmoid(z)) = softplus(z) - y z`` with ``z = R(tau_1) - R(tau_2)`` and
    ``R(tau) = sum_t discount^t reward(s_t, a_t)`` (numerically stable form).

    Args:
        reward: ``[S, A]`` the (model) reward ``r_x``.
        trajs: :class:`~bilevel_rl.sampling.Trajectories` with fields ``[2, H]``,
            the pair ``(tau_1, tau_2)``.
        labels: ``[]`` label or probability ``y`` that ``tau_1`` is preferred
            (hard ``{0, 1}`` or soft ``[0, 1]``).
        discount: return discount (``1.0``: the plain sum of docs/math.md §4).

    Returns:
        ``[]`` loss.
    """
    returns = trajectory_returns(trajs, reward, discount)
    z = returns[0] - returns[1]
    return jax.nn.softplus(z) - labels * z


@struct.dataclass
class PreferenceData:
    """Data of the RLHF upper level (docs/math.md §4, §9.4).

    Attributes:
        reward_data: what the reward model reads, ``reward_fn(reward_data, x)``.
        true_reward: ``[S, A]`` the labeller's hidden reward ``r*``.
        reward_fn: static reward model ``reward_fn(reward_data, x) -> [S, A]``
            (e.g. :func:`bilevel_rl.rewards.linear_reward`); a hashable function.
        discount: ``[]`` return discount of ``R`` (``1.0`` in docs/math.md §4).
    """

    reward_data: Any
    true_reward: Array
    reward_fn: Callable[[Any, Any], Array] = struct.field(pytree_node=False)
    discount: Array = struct.field(default_factory=lambda: jnp.asarray(1.0))


def rlhf_bce_loss(data: PreferenceData, x: Any, trajs: Trajectories) -> Array:
    """RLHF loss ``l(tau_1, tau_2; x) = BCE(y, sigmoid(R_x(tau_1) - R_x(tau_2)))``.

    ``R_x(tau) = sum_t r_x(s_t, a_t)`` with ``r_x = reward_fn(reward_data, x)``;
    the label is the Bradley–Terry probability ``y = sigmoid(R*(tau_1) -
    R*(tau_2))`` of the true reward. BCE is linear in ``y``, so this equals the
    expectation of the hard-label loss over ``y ~ Bernoulli(sigmoid(R* diff))``
    given the pair: the same ``phi(x)`` and hyper-gradient as sampled labels, with
    less variance (Rao–Blackwellized). For a fixed labelled data set use
    :func:`bradley_terry_bce` with hard labels.

    Args:
        data: :class:`PreferenceData`.
        x: leader variable (reward-model parameters, any pytree).
        trajs: :class:`~bilevel_rl.sampling.Trajectories` with fields ``[2, H]``.

    Returns:
        ``[]`` loss.

    References:
        Yang, Gao, Yuan, AISTATS 2025, Sections 3.3 and 5; Christiano et al. 2017;
        docs/math.md §4.
    """
    true_returns = trajectory_returns(trajs, data.true_reward, data.discount)
    labels = jax.nn.sigmoid(true_returns[0] - true_returns[1])
    reward = data.reward_fn(data.reward_data, x)
    return bradley_terry_bce(reward, trajs, labels, data.discount)


# ------------------------------------------- demonstration likelihood (AIHF, §7)

__all__ += ["DemoData", "demo_log_likelihood"]


@struct.dataclass
class DemoData:
    """Demonstrations summarized by their (discounted) visitation counts.

    Attributes:
        counts: ``[S, A]`` ``(1/N) sum_{n,t} gamma^t 1{s^n_t = s, a^n_t = a}``, e.g.
            :func:`bilevel_rl.sampling.visitation_counts` of the demonstrations
            with ``gamma`` divided by their number.
        weight: ``[]`` the weight ``alpha`` of the demonstration term.
    """

    counts: Array
    weight: Array


def demo_log_likelihood(data: DemoData, x: Any, policy: Array) -> Array:
    """Negative AIHF demonstration term ``-alpha L1(pi)`` as an upper objective.

    ``L1(pi) = E_{tau ~ demos}[sum_t gamma^t log pi(a_t|s_t)]
    = sum_{s,a} counts(s, a) log pi(a|s)`` (docs/math.md §6); minimizing
    ``-alpha L1`` over the leader's reward parameters through ``pi = pi*_x`` is the
    demonstration part of AIHF's bilevel objective. Entries of ``policy`` where
    ``counts`` is zero do not contribute (no ``0 * log 0`` NaN).

    Args:
        data: :class:`DemoData`.
        x: leader variable (unused: the term depends on ``x`` only through ``pi``).
        policy: ``[S, A]``.

    Returns:
        ``[]`` ``-alpha sum counts * log pi``.

    References:
        Li et al., "Joint Demonstration and Preference Learning Improves Policy
        Alignment with Human Feedback", eq. (L1) and Lemma 5.1; docs/math.md §6.
    """
    del x
    safe = jnp.where(data.counts > 0, policy, 1.0)
    return -data.weight * jnp.sum(data.counts * jnp.log(safe))
