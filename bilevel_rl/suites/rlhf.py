"""Tabular RLHF (docs/math.md §9): a hidden true reward, preferences from Bradley–Terry.

Two kinds of human feedback about the same hidden truth ``r* = phi x*``:

* online trajectory-pair queries (§9.4, the SoBiRL/PARL formulation):
  :func:`tabular_rlhf_problem` is the bilevel problem whose leader fits the linear
  reward model ``r_x = phi x`` to Bradley–Terry labels of ``H``-step trajectory
  pairs drawn from the follower's own soft-optimal policy ``pi*_x``;
* an offline data set (the AIHF/RLHF/DPO formulation, docs/math.md §6):
  :func:`rlhf_alignment_data` draws expert demonstrations from the true
  soft-optimal policy and per-state action comparisons labelled by ``r*``.

:func:`preference_accuracy` scores any learned reward on held-out trajectory pairs.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import struct

from bilevel_rl.alignment import AlignmentData, aihf_problem
from bilevel_rl.enumeration import MAX_ENUMERATED_TUPLES, expected_trajectory_loss
from bilevel_rl.mdp import TabularMDP
from bilevel_rl.objectives import PreferenceData, rlhf_bce_loss
from bilevel_rl.problem import BilevelProblem
from bilevel_rl.rewards import linear_reward
from bilevel_rl.sampling import (
    Preferences,
    demonstrations,
    preference_pairs,
    trajectory_returns,
    visitation_counts,
)
from bilevel_rl.soft import soft_value_iteration
from bilevel_rl.suites.checks import check_number, check_size
from bilevel_rl.suites.random_mdps import (
    check_mdp_sizes,
    dirichlet_mdp,
    float_dtype,
    random_reward_features,
)
from bilevel_rl.types import Array, PRNGKey

__all__ = [
    "RLHFSuiteData",
    "alignment_problem",
    "held_out_pairs",
    "preference_accuracy",
    "rlhf_alignment_data",
    "tabular_rlhf_problem",
]


@struct.dataclass
class RLHFSuiteData:
    """Data of :func:`tabular_rlhf_problem`.

    Attributes:
        preferences: :class:`~bilevel_rl.objectives.PreferenceData` (features,
            hidden ``r*``, linear model).
        true_param: ``[d]`` hidden ``x*`` (for scoring only).
        mdp: the follower's MDP (the exact upper objective enumerates its pairs);
            ``None`` in the suite's data: the problem passes its own.
        regularization: ``[]`` ridge weight ``lam``.
        horizon: ``H`` of the compared trajectories (static).
    """

    preferences: PreferenceData
    true_param: Array
    mdp: TabularMDP | None
    regularization: Array
    horizon: int = struct.field(pytree_node=False, default=2)


def rlhf_reward(data: RLHFSuiteData, x: Array) -> Array:
    """The leader's linear reward model ``r_x = phi x``; ``[S, A]``."""
    return linear_reward(data.preferences.reward_data, x)


def rlhf_pair_loss(data: RLHFSuiteData, x: Array, trajs) -> Array:
    """``l(tau_1, tau_2; x)``: Bradley–Terry BCE of one pair plus ``lam/2 ‖x‖²``."""
    bce = rlhf_bce_loss(data.preferences, x, trajs)
    return bce + 0.5 * data.regularization * jnp.sum(x**2)


def rlhf_upper(data: RLHFSuiteData, x: Array, policy: Array) -> Array:
    """Exact ``f(x, pi) = E_{pairs ~ rho(pi)}[l]`` by enumerating ``(S A)^(2H)``
    pairs (:func:`bilevel_rl.estimators.expected_trajectory_loss`)."""
    loss = functools.partial(rlhf_pair_loss, data)
    return expected_trajectory_loss(
        loss, x, policy, data.mdp, horizon=data.horizon, num_trajectories=2
    )


def tabular_rlhf_problem(
    key: PRNGKey,
    *,
    num_states: int = 6,
    num_actions: int = 3,
    dim: int = 4,
    horizon: int = 2,
    gamma: float = 0.9,
    tau: float = 0.3,
    regularization: float = 1e-3,
    dtype=None,
) -> BilevelProblem:
    """A random tabular RLHF instance (docs/math.md §9; jittable, vmappable over keys).

    Dirichlet(1) transitions, uniform ``rho``; features ``phi ~ N(0, I/d)`` and a
    hidden ``x* ~ N(0, I_d)`` (:func:`random_reward_features`), ``r* = phi x*``; the
    linear model ``r_x = phi x`` is well specified; ``x0 = 0``. The leader
    minimizes the expected Bradley–Terry BCE of ``H``-step trajectory pairs of
    ``pi*_x`` labelled by ``sigmoid(R*(tau_1) - R*(tau_2))`` (undiscounted returns)
    plus ``lam/2 ‖x‖²``.

    Args:
        key: PRNG key.
        num_states, num_actions, dim: ``S``, ``A``, ``d``.
        horizon: ``H`` (the exact objective enumerates ``(S A)^(2H)`` pairs, at
            most :data:`bilevel_rl.estimators.MAX_ENUMERATED_TUPLES`).
        gamma: follower discount.
        tau: follower temperature.
        regularization: ridge weight ``lam >= 0``.
        dtype: floating dtype (default: JAX's default float).

    Returns:
        ``BilevelProblem`` with the exact ``upper`` and the pair
        ``trajectory_loss`` (``m = 2``, ``H = horizon``).

    Raises:
        ValueError: a size not an int ``>= 1``, too many pairs to enumerate, or an
            out-of-range scalar.
    """
    dtype = float_dtype(dtype)
    num_states, num_actions = check_mdp_sizes(num_states, num_actions, dtype)
    horizon = check_size("horizon", horizon)
    if (num_states * num_actions) ** (2 * horizon) > MAX_ENUMERATED_TUPLES:
        raise ValueError(
            f"horizon: the exact objective enumerates (S A)^(2H) = "
            f"{num_states * num_actions}^{2 * horizon} trajectory pairs, more than "
            f"MAX_ENUMERATED_TUPLES = {MAX_ENUMERATED_TUPLES}"
        )
    check_number("regularization", regularization, 0.0, math.inf, open_high=True)
    k_mdp, k_phi = jax.random.split(key)
    mdp = dirichlet_mdp(
        k_mdp, num_states, num_actions, gamma=gamma, tau=tau, dtype=dtype
    )
    truth = random_reward_features(k_phi, num_states, num_actions, dim, dtype=dtype)
    data = RLHFSuiteData(
        preferences=PreferenceData(
            truth.features, truth.true_reward, reward_fn=linear_reward
        ),
        true_param=truth.true_param,
        mdp=None,  # the problem passes its MDP (BilevelProblem.bound_data)
        regularization=jnp.asarray(regularization, dtype),
        horizon=horizon,
    )
    return BilevelProblem(
        mdp=mdp,
        data=data,
        x0=jnp.zeros((truth.features.shape[-1],), dtype),
        reward_fn=rlhf_reward,
        upper=rlhf_upper,
        trajectory_loss=rlhf_pair_loss,
        horizon=horizon,
        num_trajectories=2,
    )


def rlhf_alignment_data(
    key: PRNGKey,
    problem: BilevelProblem,
    *,
    num_demos: int,
    demo_horizon: int,
    num_comparisons: int,
    alpha: float | None = None,
) -> AlignmentData:
    """An offline data set about the hidden truth of a :func:`tabular_rlhf_problem`.

    Demonstrations: ``num_demos`` trajectories of ``demo_horizon`` steps of the
    true soft-optimal policy ``pi*_{r*}`` from ``rho`` (discounted visitation per
    demonstration). Preferences: ``num_comparisons`` comparisons ``(s; a, b)`` with
    ``s`` uniform, ``a != b`` uniform and Bradley–Terry labels of ``r*(s, a) -
    r*(s, b)``, as fractions ``wins[S, A, A]``.

    Args:
        key: PRNG key.
        problem: one :func:`tabular_rlhf_problem` instance.
        num_demos, demo_horizon, num_comparisons: sizes (static).
        alpha: weight of the demonstration term (default ``num_demos /
            num_comparisons``: one demonstration weighs like one comparison).

    Returns:
        :class:`~bilevel_rl.alignment.AlignmentData`.
    """
    num_demos = check_size("num_demos", num_demos)
    demo_horizon = check_size("demo_horizon", demo_horizon)
    n = check_size("num_comparisons", num_comparisons)
    mdp = problem.mdp
    S, A = mdp.num_states, mdp.num_actions
    if A < 2:
        raise ValueError(f"num_actions: comparisons need A >= 2, got {A}")
    r_star = problem.data.preferences.true_reward
    k_demo, k_s, k_a, k_b, k_y = jax.random.split(key, 5)
    expert = soft_value_iteration(mdp, r_star, method="policy_iteration").policy
    demos = demonstrations(
        k_demo, mdp, expert, horizon=demo_horizon, num_trajectories=num_demos
    )
    counts = visitation_counts(demos, S, A, mdp.gamma) / num_demos
    s = jax.random.randint(k_s, (n,), 0, S)
    a = jax.random.randint(k_a, (n,), 0, A)
    b = (a + jax.random.randint(k_b, (n,), 1, A)) % A  # uniform over b != a
    y = jax.random.bernoulli(k_y, jax.nn.sigmoid(r_star[s, a] - r_star[s, b]))
    winner, loser = jnp.where(y, a, b), jnp.where(y, b, a)
    wins = jnp.zeros((S, A, A), r_star.dtype).at[s, winner, loser].add(1.0) / n
    weight = num_demos / n if alpha is None else alpha
    return AlignmentData(counts, wins, jnp.asarray(weight, r_star.dtype))


def alignment_problem(
    key: PRNGKey,
    *,
    num_states: int = 6,
    num_actions: int = 3,
    dim: int = 4,
    gamma: float = 0.9,
    tau: float = 0.3,
    num_demos: int = 100,
    demo_horizon: int = 30,
    num_comparisons: int = 2000,
    dtype=None,
) -> BilevelProblem:
    """AIHF on the offline data set of a random tabular RLHF instance.

    :func:`tabular_rlhf_problem` draws the hidden truth, :func:`rlhf_alignment_data`
    the data, :func:`bilevel_rl.alignment.aihf_problem` poses AIHF with a tabular
    reward ``x: [S, A]`` (``x0 = 0``, ``alpha = num_demos / num_comparisons``).

    Args:
        key: PRNG key.
        num_states, num_actions, dim, gamma, tau: the instance (as in
            :func:`tabular_rlhf_problem`).
        num_demos, demo_horizon, num_comparisons: the data set sizes.
        dtype: floating dtype.

    Returns:
        ``BilevelProblem`` with ``data`` an
        :class:`~bilevel_rl.alignment.AlignmentData`.
    """
    k_truth, k_data = jax.random.split(key)
    truth = tabular_rlhf_problem(
        k_truth, num_states=num_states, num_actions=num_actions, dim=dim,
        horizon=1, gamma=gamma, tau=tau, dtype=dtype,
    )  # fmt: skip
    data = rlhf_alignment_data(
        k_data, truth, num_demos=num_demos, demo_horizon=demo_horizon,
        num_comparisons=num_comparisons,
    )  # fmt: skip
    return aihf_problem(truth.mdp, data)


def preference_accuracy(reward: Array, true_reward: Array, pairs: Preferences) -> Array:
    """Fraction of held-out pairs that ``reward`` orders like the true return.

    Args:
        reward: ``[S, A]`` a learned reward (or DPO's implicit reward).
        true_reward: ``[S, A]`` ``r*``.
        pairs: :class:`~bilevel_rl.sampling.Preferences` ``[N, H]`` (labels
            unused: the noise-free order of the true returns is the target).

    Returns:
        ``[]`` accuracy in ``[0, 1]`` over the pairs whose true returns differ (a
        true tie states no preference); a tie of the model counts as half, a coin
        flip (so the zero reward scores 0.5).
    """

    def diff(r):
        return trajectory_returns(pairs.first, r) - trajectory_returns(pairs.second, r)

    truth, model = jnp.sign(diff(true_reward)), jnp.sign(diff(reward))
    score = jnp.where(model == 0, 0.5, (truth * model > 0).astype(reward.dtype))
    informative = truth != 0
    return jnp.sum(jnp.where(informative, score, 0.0)) / jnp.sum(informative)


def held_out_pairs(key: PRNGKey, problem: BilevelProblem, num_pairs: int):
    """``num_pairs`` trajectory pairs of the uniform policy, ``H = problem.horizon``."""
    mdp = problem.mdp
    uniform = jnp.full(mdp.P.shape[:2], 1.0 / mdp.num_actions, mdp.P.dtype)
    r_star = problem.data.preferences.true_reward
    return preference_pairs(
        key, mdp, uniform, r_star, horizon=problem.horizon, num_pairs=num_pairs
    )
