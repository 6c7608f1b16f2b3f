"""Trajectory sampling: rollouts, generative-model rollouts, Bradley–Terry preference
pairs and demonstrations on one tabular MDP (docs/math.md §4, §5, §7).

Every function works on ONE MDP and one policy; batches of MDPs, policies or seeds
come from ``jax.vmap``. Loops are ``lax.scan``; ``horizon``, ``num_trajectories`` and
``num_pairs`` are static under ``jax.jit``.

Randomness: a ``jax.Array`` key is the first argument of every sampler and a sample
is a deterministic function of it (one key per trajectory, one Gumbel noise vector per
step; Gumbel-max on log-probabilities, as ``jax.random.categorical``). Re-using a key
under another policy re-uses the noise (common random numbers), as Stoc-SoBiRL's
momentum needs (docs/math.md §5). Zero probabilities are ``-inf`` logits, never sampled.

Conventions: a trajectory of horizon ``H`` is ``(s_0, a_0, ..., s_{H-1}, a_{H-1})``
plus the final state ``s_H``; ``rewards`` is ``None`` unless a reward is passed.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from bilevel_rl.mdp import TabularMDP
from bilevel_rl.types import Array, PRNGKey


class Trajectories(NamedTuple):
    """A batch of ``N`` trajectories of horizon ``H`` (any leading shape ``[...]``).

    Attributes:
        states: ``[N, H]`` int32, ``s_0 .. s_{H-1}``.
        actions: ``[N, H]`` int32, ``a_0 .. a_{H-1}``.
        log_probs: ``[N, H]`` float, ``log pi(a_t | s_t)`` under the sampling policy,
            differentiable in it (``-inf`` for a forced first action ``pi`` avoids).
        final_states: ``[N]`` int32, ``s_H``.
        rewards: ``[N, H]`` ``r(s_t, a_t)`` if a reward was passed, else ``None``.
    """

    states: Array
    actions: Array
    log_probs: Array
    final_states: Array
    rewards: Array | None = None

    @property
    def next_states(self) -> Array:
        """``[N, H]`` int32, ``s_1 .. s_H``."""
        return jnp.concatenate([self.states[..., 1:], self.final_states[..., None]], -1)


class Preferences(NamedTuple):
    """``N`` labelled trajectory pairs (Bradley–Terry).

    Attributes:
        first: :class:`Trajectories` ``[N, H]``, the ``tau_1`` of each pair.
        second: :class:`Trajectories` ``[N, H]``, the ``tau_2`` of each pair.
        labels: ``[N]`` float, ``1.0`` where ``tau_1`` is preferred, else ``0.0``;
            ``y ~ Bernoulli(sigmoid(R(tau_1) - R(tau_2)))``.
    """

    first: Trajectories
    second: Trajectories
    labels: Array

    def ordered(self) -> tuple[Trajectories, Trajectories]:
        """Returns ``(winners, losers)``, each a :class:`Trajectories` ``[N, H]``."""
        first_wins = self.labels > 0.5

        def pick(a, b):
            extra = (1,) * (a.ndim - first_wins.ndim)
            return jnp.where(first_wins.reshape(first_wins.shape + extra), a, b)

        winners = jax.tree.map(pick, self.first, self.second)
        return winners, jax.tree.map(pick, self.second, self.first)


def _safe_log(p: Array) -> Array:
    """``log p`` with ``log 0 = -inf`` and a finite gradient where ``p > 0``."""
    positive = p > 0
    return jnp.where(positive, jnp.log(jnp.where(positive, p, 1.0)), -jnp.inf)


def _check_static(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}: must be a static Python int >= 1, got {value!r}")
    return value


def _discounts(horizon: int, gamma: float | Array, dtype) -> Array:
    """``[H]`` weights ``gamma^t`` by cumprod: ``0^0 = 1``, differentiable at 0."""
    gamma = jnp.asarray(gamma, dtype)
    return jnp.cumprod(jnp.full((horizon,), gamma).at[0].set(1.0))


def discounted_sum(values: Array, gamma: float | Array) -> Array:
    """``sum_t gamma^t values[..., t]`` over the last axis (``R(tau)`` of §4/§7).

    Args:
        values: ``[..., H]``.
        gamma: scalar discount; ``1.0`` gives the plain sum, ``0.0`` the first term.

    Returns:
        ``[...]``.
    """
    values = jnp.asarray(values)
    dtype = jnp.result_type(values.dtype, float)
    return jnp.sum(values * _discounts(values.shape[-1], gamma, dtype), axis=-1)


def trajectory_returns(
    trajs: Trajectories, reward: Array, gamma: float | Array = 1.0
) -> Array:
    """``R(tau) = sum_t gamma^t r(s_t, a_t)`` per trajectory; differentiable in
    ``reward`` (``R_x(tau)`` of docs/math.md §4/§7 for a reward model ``r_x``).

    Args:
        trajs: :class:`Trajectories` with fields ``[..., H]``.
        reward: ``[S, A]``.
        gamma: discount; ``1.0`` (default) is the undiscounted RLHF sum.

    Returns:
        ``[...]``.
    """
    return discounted_sum(reward[trajs.states, trajs.actions], gamma)


def _simulate(keys, log_P, log_pi, s0, a0, horizon: int) -> Trajectories:
    """``M`` trajectories from ``s0: [M]`` (first actions ``a0: [M]`` or sampled).

    Gumbel-max, as in ``jax.random.categorical`` (``argmax(logits + Gumbel)``), but
    ONE noise draw of size ``A + S`` per step serves the action and the next state
    (half the threefry calls, shorter compiles). The noise is finite, so ``-inf``
    logits (zero probabilities) are never selected.
    """
    num_actions, num_states = log_P.shape[1], log_P.shape[2]

    def one(key, s_init, a_init):
        def step(s, inputs):
            t, k = inputs
            noise = jax.random.gumbel(k, (num_actions + num_states,), log_pi.dtype)
            a = jnp.argmax(log_pi[s] + noise[:num_actions]).astype(jnp.int32)
            if a_init is not None:
                a = jnp.where(t == 0, a_init, a)
            s_next = jnp.argmax(log_P[s, a] + noise[num_actions:]).astype(jnp.int32)
            return s_next, (s, a, log_pi[s, a])

        xs = (jnp.arange(horizon), jax.random.split(key, horizon))
        s_final, (states, actions, log_probs) = jax.lax.scan(step, s_init, xs)
        return Trajectories(states, actions, log_probs, s_final)

    if a0 is None:
        return jax.vmap(lambda k, s: one(k, s, None))(keys, s0)
    return jax.vmap(one)(keys, s0, a0)


def rollout(
    key: PRNGKey,
    mdp: TabularMDP,
    policy: Array,
    *,
    horizon: int,
    num_trajectories: int | None = None,
    reward: Array | None = None,
    init_states: Array | None = None,
) -> Trajectories:
    """Samples ``N`` independent ``H``-step trajectories of ``policy`` in ``mdp``.

    ``s_0 ~ rho`` (or ``init_states``), ``a_t ~ pi(. | s_t)``,
    ``s_{t+1} ~ P(. | s_t, a_t)``.

    Args:
        key: PRNG key; the sample is a deterministic function of it.
        mdp: a single MDP (``P: [S, A, S]``, ``rho: [S]``).
        policy: ``[S, A]``, rows are distributions (zeros allowed).
        horizon: ``H`` (static).
        num_trajectories: ``N`` (static); optional when ``init_states`` is given.
        reward: optional ``[S, A]``; fills ``Trajectories.rewards``.
        init_states: optional ``[N]`` int start states instead of ``s_0 ~ rho``.

    Returns:
        :class:`Trajectories` with fields ``[N, H]`` (``final_states: [N]``).

    Raises:
        ValueError: ``horizon``/``num_trajectories`` missing, inconsistent or not a
            positive int, or a policy of the wrong shape.
    """
    key_init, key_traj = jax.random.split(key)
    if init_states is None:
        n = _check_static("num_trajectories", num_trajectories)  # None fails here
        log_rho = _safe_log(mdp.rho)
        init_states = jax.random.categorical(key_init, log_rho, shape=(n,))
    elif jnp.ndim(init_states) != 1 or num_trajectories not in (None, len(init_states)):
        raise ValueError(
            f"init_states: expected shape [num_trajectories] = ({num_trajectories},), "
            f"got {jnp.shape(init_states)}"
        )
    return rollout_from(
        key_traj, mdp, policy, init_states, horizon=horizon, reward=reward
    )


def rollout_from(
    key: PRNGKey,
    mdp: TabularMDP,
    policy: Array,
    states: Array,
    actions: Array | None = None,
    *,
    horizon: int,
    reward: Array | None = None,
) -> Trajectories:
    """Generative-model rollouts: one ``H``-step trajectory per start (docs/math.md §5).

    Rollout ``i`` starts at ``states[i]`` with first action ``actions[i]`` (the
    ``dQ(s, a)`` rollouts of Algorithm 3) or, if ``actions`` is ``None``,
    ``a_0 ~ pi(. | s_0)`` (the ``dV(s)`` rollouts), then follows ``policy``. For
    ``E`` rollouts per start, repeat the starts (``jnp.repeat(states[..., None], E,
    -1)``). With one key, calls with and without ``actions`` share the noise start
    by start: ``Q`` and ``V`` estimates are coupled (common random numbers).

    Args:
        key: PRNG key.
        mdp: a single MDP.
        policy: ``[S, A]``.
        states: ``[...]`` int start states (any shape).
        actions: ``[...]`` int first actions, same shape as ``states``, or ``None``.
        horizon: ``L`` (static).
        reward: optional ``[S, A]``; fills ``Trajectories.rewards``.

    Returns:
        :class:`Trajectories` with fields ``[..., L]`` (``final_states: [...]``).

    Raises:
        ValueError: bad ``horizon``, policy shape, or ``actions`` shape.
    """
    if jnp.shape(policy) != mdp.P.shape[:2]:
        raise ValueError(
            f"policy: expected shape [S, A] = {mdp.P.shape[:2]}, "
            f"got {jnp.shape(policy)}"
        )
    horizon = _check_static("horizon", horizon)
    states = jnp.asarray(states, jnp.int32)
    shape, size = states.shape, states.size
    if actions is not None:
        if jnp.shape(actions) != shape:
            raise ValueError(
                f"actions: expected the shape of states {shape}, "
                f"got {jnp.shape(actions)}"
            )
        actions = jnp.asarray(actions, jnp.int32).reshape(size)
    keys = jax.random.split(key, size)
    log_P, log_pi = _safe_log(mdp.P), _safe_log(policy)
    trajs = _simulate(keys, log_P, log_pi, states.reshape(size), actions, horizon)
    trajs = jax.tree.map(lambda x: x.reshape(shape + x.shape[1:]), trajs)
    if reward is None:
        return trajs
    return trajs._replace(rewards=jnp.asarray(reward)[trajs.states, trajs.actions])


def bradley_terry_labels(
    key: PRNGKey, return_first: Array, return_second: Array
) -> Array:
    """Labels ``y ~ Bernoulli(sigmoid(R_1 - R_2))`` (``1.0``: first preferred).

    Args:
        key: PRNG key.
        return_first: ``[...]`` returns (or utilities) of the first items.
        return_second: ``[...]`` those of the second items.

    Returns:
        ``[...]`` float labels in ``{0.0, 1.0}``.
    """
    diff = jnp.asarray(return_first) - jnp.asarray(return_second)
    diff = diff.astype(jnp.result_type(diff.dtype, float))
    return jax.random.bernoulli(key, jax.nn.sigmoid(diff)).astype(diff.dtype)


def preference_pairs(
    key: PRNGKey,
    mdp: TabularMDP,
    policy: Array,
    true_reward: Array,
    *,
    horizon: int,
    num_pairs: int,
    gamma: float | Array = 1.0,
    second_policy: Array | None = None,
) -> Preferences:
    """Samples trajectory pairs and Bradley–Terry labels from the true reward.

    ``tau_1 ~ policy``, ``tau_2 ~ second_policy`` (default ``policy``), independent;
    ``y ~ Bernoulli(sigmoid(R(tau_1) - R(tau_2)))``, ``R(tau) = sum_t gamma^t r``
    (docs/math.md §4: ``gamma = 1``; AIHF §7: ``gamma = mdp.gamma``). Bandit action
    preferences are ``S = 1, horizon = 1``. The trajectories carry no rewards (the
    ground truth stays hidden); use :func:`trajectory_returns` to recompute them.

    Args:
        key: PRNG key.
        mdp: a single MDP.
        policy: ``[S, A]`` policy generating ``tau_1`` (and ``tau_2``).
        true_reward: ``[S, A]`` the labeller's reward.
        horizon: ``H`` (static).
        num_pairs: ``N`` (static).
        gamma: discount of the return in the Bradley–Terry model.
        second_policy: optional ``[S, A]`` policy generating ``tau_2``.

    Returns:
        :class:`Preferences` with ``first``/``second`` ``[N, H]``, ``labels: [N]``.
    """
    k1, k2, k_y = jax.random.split(key, 3)
    pi2 = policy if second_policy is None else second_policy
    first = rollout(k1, mdp, policy, horizon=horizon, num_trajectories=num_pairs)
    second = rollout(k2, mdp, pi2, horizon=horizon, num_trajectories=num_pairs)
    labels = bradley_terry_labels(
        k_y,
        trajectory_returns(first, true_reward, gamma),
        trajectory_returns(second, true_reward, gamma),
    )
    return Preferences(first, second, labels)


def demonstrations(
    key: PRNGKey,
    mdp: TabularMDP,
    expert_policy: Array,
    *,
    horizon: int,
    num_trajectories: int,
) -> Trajectories:
    """Expert demonstrations: :func:`rollout` of ``expert_policy``; ``[N, H]``,
    ``rewards=None``."""
    return rollout(
        key, mdp, expert_policy, horizon=horizon, num_trajectories=num_trajectories
    )


def visitation_counts(
    trajs: Trajectories,
    num_states: int,
    num_actions: int,
    gamma: float | Array | None = None,
) -> Array:
    """State-action visitation counts ``sum_{n,t} w_t 1{s_t = s, a_t = a}``.

    ``w_t = 1`` or ``gamma^t``. Discounted counts times ``(1 - gamma) / N`` estimate
    :func:`bilevel_rl.soft.occupancy_measure` (up to a ``gamma^H`` truncation).

    Args:
        trajs: :class:`Trajectories` ``[..., H]`` (leading axes are summed over).
        num_states: ``S`` (static).
        num_actions: ``A`` (static).
        gamma: optional discount.

    Returns:
        ``[S, A]`` float counts.
    """
    dtype = jnp.result_type(trajs.log_probs.dtype, float)
    shape = trajs.states.shape
    if gamma is None:
        weights = jnp.ones(shape, dtype)
    else:
        weights = jnp.broadcast_to(_discounts(shape[-1], gamma, dtype), shape)
    counts = jnp.zeros((num_states, num_actions), dtype)
    return counts.at[trajs.states.ravel(), trajs.actions.ravel()].add(weights.ravel())


def empirical_policy(
    trajs: Trajectories,
    num_states: int,
    num_actions: int,
    *,
    gamma: float | Array | None = None,
    smoothing: float = 0.0,
) -> Array:
    """Behaviour-cloning (maximum-likelihood) policy from visitation counts.

    ``pi(a|s) = (c(s, a) + smoothing) / (sum_a' c(s, a') + A smoothing)``, with
    ``c`` from :func:`visitation_counts`; unvisited states get the uniform policy.

    Args:
        trajs: :class:`Trajectories` ``[..., H]``.
        num_states: ``S`` (static).
        num_actions: ``A`` (static).
        gamma: optional discount of the counts (AIHF's ``L1`` weights ``gamma^t``).
        smoothing: additive (Laplace) pseudo-count, ``>= 0``.

    Returns:
        ``[S, A]`` policy, rows summing to one.
    """
    counts = visitation_counts(trajs, num_states, num_actions, gamma) + smoothing
    totals = counts.sum(axis=-1, keepdims=True)
    safe = jnp.where(totals > 0, totals, 1.0)
    return jnp.where(totals > 0, counts / safe, 1.0 / num_actions)
