"""Hyper-gradients of preference losses on gymnax rollouts (docs/math.md §4–5).

The deep counterpart of :mod:`bilevel_rl.estimators`: the leader's variable ``x``
is a reward model's parameters (:mod:`bilevel_rl.deep.reward`), the follower's
policy is any ``policy_fn(obs [N, *obs_shape]) -> log pi [N, A]``, and the upper
level is the Bradley–Terry loss of ``D`` queries, each a pair (``m = 2``) of
trajectory fragments of length ``F``:

    l_j(x) = softplus(z_j) - y_j z_j,  z_j = R_x(frag_j1) - R_x(frag_j2),
    R_x(frag) = sum_t mask_t r_x(o_t, a_t).

Prop. 5.2 with the current policy in place of ``pi*_x``:

    g = (1/D) sum_j [grad_x l_j + (c/tau) (l_j - b_j) sum_{i,t} mask (dQ-dV)(s_t, a_t)]

with ``c`` the warm-up coefficient (1: the paper's estimator) and ``b_j`` a
baseline (0, or leave-one-out: the mean loss of the other queries, which keeps
the estimate unbiased because ``E_{a ~ pi}[dQ(s, a)] = dV(s)``). Two estimators of
``dQ - dV`` (:data:`ESTIMATORS`):

* ``"branch"``: Algorithm 3's generative rollouts. gymnax states are pytrees, so
  the stored state of every fragment step is a simulator reset to ``s_t``:
  :func:`branch` rolls ``E`` rollouts of length ``H`` from it with the first action
  ``a_t`` (``dQ``) and ``E`` with ``a_0 ~ pi`` (``dV``), and
  ``dQ^(s, a) = (1/E) sum_e sum_{h<H} gamma^h grad_x r_x(s^e_h, a^e_h)``. Its mean is
  the ``H``-step truncation ``sum_{h<H} (gamma P Pi)^h J`` (bias ``O(gamma^H)``;
  :func:`bilevel_rl.estimators.exact_trajectory_hypergradient` with
  ``rollout_length=H`` on a :class:`~bilevel_rl.deep.envs.TabularEnv`).
* ``"one_step"``: ``grad_x r_x(s_t, a_t) - E_{a ~ pi} grad_x r_x(s_t, a)``, the
  truncation in the SoBiRL authors' code: the ``H = 1`` case, exact in its
  expectation over ``a``, biased by the discarded ``h >= 1`` terms.

Both fold into ONE ``jax.grad`` of a surrogate whose gradient is the estimate;
everything jits and vmaps. Episodes that end inside a fragment or a branch stop
contributing at the terminating step (``mask``, ``alive``).

References:
    Yang, Gao, Yuan, AISTATS 2025, Props. 5.1–5.2, Algorithms 1, 3 and App. J;
    Christiano et al. 2017 (preferences over fragments); docs/math.md §4–5.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from bilevel_rl.deep.reward import RewardApply, action_rewards
from bilevel_rl.estimators import centered_losses, check_baseline
from bilevel_rl.types import Array, PRNGKey, PyTree

__all__ = [
    "ESTIMATORS",
    "Branches",
    "Fragments",
    "PolicyFn",
    "branch",
    "exploration_gradient",
    "hypergradient",
    "preference_loss",
    "preference_losses",
    "rollout",
]

ESTIMATORS = ("branch", "one_step")
"""Estimators of ``dQ - dV`` along the fragments."""

PolicyFn = Callable[[Array], Array]
"""``policy_fn(obs [N, *obs_shape]) -> log pi(. | obs) [N, A]``."""


class Fragments(NamedTuple):
    """Rollout pieces of length ``F`` (any leading shape ``[...]``).

    Attributes:
        obs: ``[..., F, *obs_shape]`` observations ``o_t`` (of ``env_states``).
        actions: ``[..., F]`` int32 actions ``a_t``.
        mask: ``[..., F]`` bool, ``True`` while the episode that started the
            fragment goes on (a terminating step is the last ``True``).
        true_rewards: ``[..., F]`` the environment's reward of ``(o_t, a_t)``,
            ``0`` where not ``mask``.
        env_states: gymnax states, leaves ``[..., F, ...]``: the simulator at
            ``o_t``, from which :func:`branch` steps again.
    """

    obs: Array
    actions: Array
    mask: Array
    true_rewards: Array
    env_states: Any


class Branches(NamedTuple):
    """The rollouts of ``dQ^`` and ``dV^`` from every fragment step.

    Attributes:
        q: :class:`Fragments` ``[..., F, E, H]``: first action ``a_t`` forced.
        v: :class:`Fragments` ``[..., F, E, H]``: first action ``a ~ pi``.
    """

    q: Fragments
    v: Fragments


def rollout(
    key: PRNGKey,
    env,
    env_params,
    policy_fn: PolicyFn,
    env_state: Any,
    obs: Array,
    length: int,
    first_action: Array | None = None,
) -> Fragments:
    """``length`` steps of ``policy_fn`` from ONE stored state.

    Args:
        key: PRNG key.
        env, env_params: a gymnax environment.
        policy_fn: the policy (log-probabilities).
        env_state: the simulator's state (one, unbatched), observed as ``obs``.
        obs: ``[*obs_shape]``.
        length: ``L`` steps (static).
        first_action: ``[]`` int, forced first action; ``None``: ``a_0 ~ pi``.

    Returns:
        :class:`Fragments` ``[L]``; ``mask`` turns ``False`` after the first
        ``terminated`` or ``truncated`` step (the auto-reset's new episode is not
        part of the rollout).
    """

    def step(carry, key):
        state, o, alive, forced = carry
        k_act, k_env = jax.random.split(key)
        logits = policy_fn(o[None])[0]
        action = jax.random.categorical(k_act, logits).astype(jnp.int32)
        action = jnp.where(forced >= 0, forced, action)
        nxt_o, nxt, reward, terminated, truncated, _ = env.step(
            k_env, state, action, env_params
        )
        frag = Fragments(o, action, alive, jnp.where(alive, reward, 0), state)
        alive = alive & ~(terminated | truncated)
        return (nxt, nxt_o, alive, jnp.asarray(-1, jnp.int32)), frag

    forced = jnp.asarray(-1 if first_action is None else first_action, jnp.int32)
    init = (env_state, obs, jnp.asarray(True), forced)
    return jax.lax.scan(step, init, jax.random.split(key, length))[1]


def branch(
    key: PRNGKey,
    env,
    env_params,
    policy_fn: PolicyFn,
    fragments: Fragments,
    *,
    num_rollouts: int,
    length: int,
    common_random_numbers: bool = True,
) -> Branches:
    """Algorithm 3's generative rollouts from every step of ``fragments``.

    Args:
        key: PRNG key.
        env, env_params, policy_fn: as in :func:`rollout`.
        fragments: :class:`Fragments` ``[..., F]`` with their ``env_states``.
        num_rollouts: ``E`` rollouts per step and kind (static).
        length: ``H`` steps per rollout (static).
        common_random_numbers: the ``dQ^`` and ``dV^`` rollouts of a step share
            their random numbers (same means, less variance of the difference).

    Returns:
        :class:`Branches` with fields ``[..., F, E, H]``.
    """
    lead = fragments.actions.shape
    count = fragments.actions.size

    def flat(a):
        return a.reshape((count,) + a.shape[len(lead) :])

    starts = jax.tree.map(flat, (fragments.env_states, fragments.obs))
    actions = flat(fragments.actions)
    key_q, key_v = jax.random.split(key)
    key_v = key_q if common_random_numbers else key_v

    def draw(key, first):
        keys = jax.random.split(key, (count, num_rollouts))

        def one(k, state, o, a):
            return jax.vmap(
                lambda k: rollout(k, env, env_params, policy_fn, state, o, length, a)
            )(k)

        if first is None:
            out = jax.vmap(lambda k, s, o: one(k, s, o, None))(keys, *starts)
        else:
            out = jax.vmap(one)(keys, *starts, first)
        return jax.tree.map(lambda a: a.reshape(lead + a.shape[1:]), out)

    return Branches(draw(key_q, actions), draw(key_v, None))


def preference_loss(
    reward_apply: RewardApply, x: PyTree, pair: Fragments, label: Array
) -> Array:
    """Bradley–Terry loss of one query: ``pair`` ``[2, F]``, ``label`` ``[]`` the
    (hard or soft) probability that the first fragment is preferred."""
    rewards = action_rewards(reward_apply, x, pair.obs, pair.actions)
    returns = jnp.sum(jnp.where(pair.mask, rewards, 0), axis=-1)
    z = returns[0] - returns[1]
    return jax.nn.softplus(z) - label.astype(z.dtype) * z


def _score(reward_apply, x, fragments, branches, policy_fn, gamma, estimator):
    """``sum_{i,t} mask (dQ^ - dV^)(s_t, a_t)`` per query as a function of ``x``
    (differentiated, it is the estimate's score); ``[D]``."""
    if estimator == "one_step":
        rewards = reward_apply(x, _flat_obs(fragments))  # [N, A]
        log_pi = jax.lax.stop_gradient(policy_fn(_flat_obs(fragments)))
        taken = jnp.take_along_axis(rewards, fragments.actions.reshape(-1, 1), axis=1)[
            :, 0
        ]
        centred = taken - jnp.sum(jnp.exp(log_pi) * rewards, axis=-1)
        per_step = centred.reshape(fragments.actions.shape)  # [D, m, F]
    else:
        H = branches.q.actions.shape[-1]
        discounts = gamma ** jnp.arange(H)

        def dvalue(rolls):  # (1/E) sum_e sum_h gamma^h alive r_x: [D, m, F]
            r = action_rewards(reward_apply, x, rolls.obs, rolls.actions)
            return jnp.mean(jnp.sum(jnp.where(rolls.mask, r, 0) * discounts, -1), -1)

        per_step = dvalue(branches.q) - dvalue(branches.v)
    per_step = jnp.where(fragments.mask, per_step, 0)
    return jnp.sum(per_step, axis=(-2, -1))


def _flat_obs(fragments: Fragments) -> Array:
    lead = fragments.actions.ndim
    return fragments.obs.reshape((-1,) + fragments.obs.shape[lead:])


def _check_queries(queries: Fragments, labels: Array) -> int:
    if queries.actions.ndim != 3 or queries.actions.shape[1] != 2:
        raise ValueError(
            f"queries: expected fields [D, 2, F], got actions {queries.actions.shape}"
        )
    D = queries.actions.shape[0]
    if labels.shape != (D,):
        raise ValueError(f"labels: expected shape [D] = ({D},), got {labels.shape}")
    return D


def preference_losses(
    reward_apply: RewardApply, x: PyTree, queries: Fragments, labels: Array
) -> Array:
    """:func:`preference_loss` of every query: ``[D, 2, F]``, ``[D]`` -> ``[D]``."""
    return jax.vmap(preference_loss, (None, None, 0, 0))(
        reward_apply, x, queries, labels
    )


def exploration_gradient(
    reward_apply: RewardApply,
    x: PyTree,
    queries: Fragments,
    labels: Array,
    *,
    gamma: float | Array,
    tau: float | Array,
    estimator: str = "branch",
    branches: Branches | None = None,
    policy_fn: PolicyFn | None = None,
    baseline: str = "leave_one_out",
    normalize: bool = False,
) -> PyTree:
    """The score term (13), ``(1/D) sum_j (l_j - b_j)/tau sum_{i,t} mask (dQ^ -
    dV^)(s_t, a_t)``, of queries drawn under the current policy (arguments as in
    :func:`hypergradient`); a pytree like ``x``."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator: must be one of {ESTIMATORS}, got {estimator!r}")
    D = _check_queries(queries, labels)
    check_baseline(baseline, D, "queries")
    if estimator == "branch" and branches is None:
        raise ValueError("branches: the 'branch' estimator needs branch(...) rollouts")
    if estimator == "one_step" and policy_fn is None:
        raise ValueError("policy_fn: the 'one_step' estimator needs the policy")
    losses = preference_losses(reward_apply, x, queries, labels)
    weights = centered_losses(losses, baseline) / (D * tau)
    if normalize:
        weights = weights / jnp.maximum(jnp.sum(queries.mask, axis=(-2, -1)), 1)
    weights = jax.lax.stop_gradient(weights)

    def score(x):
        s = _score(reward_apply, x, queries, branches, policy_fn, gamma, estimator)
        return jnp.sum(weights.astype(s.dtype) * s)

    return jax.grad(score)(x)


def hypergradient(
    reward_apply: RewardApply,
    x: PyTree,
    queries: Fragments,
    labels: Array,
    *,
    gamma: float | Array,
    tau: float | Array,
    estimator: str = "branch",
    branches: Branches | None = None,
    policy_fn: PolicyFn | None = None,
    baseline: str = "leave_one_out",
    normalize: bool = False,
    coef: float | Array = 1.0,
) -> tuple[PyTree, dict[str, Array]]:
    """The Prop. 5.2 estimate of ``grad phi(x)`` from ``D`` labelled queries.

    Args:
        reward_apply: the reward model's ``apply``.
        x: its variables (the leader's variable).
        queries: :class:`Fragments` ``[D, 2, F]``, sampled under the current
            policy.
        labels: ``[D]`` probability that fragment 1 of each query is preferred.
        gamma, tau: the follower's discount and entropy temperature.
        estimator: ``"branch"`` (needs ``branches`` of these queries) or
            ``"one_step"`` (needs ``policy_fn``).
        branches: :func:`branch` of ``queries`` under the current policy.
        policy_fn: the current policy (for ``"one_step"``'s ``E_{a ~ pi}``).
        baseline: ``"leave_one_out"`` (``D >= 2``) or ``"none"``.
        normalize: divide each query's score by its number of valid steps
            (``sum mask``): a per-transition scale, no longer the paper's
            estimator.
        coef: ``c``, the weight of the score term (a warm-up ramps it to 1).

    Returns:
        ``(grad, metrics)``: ``grad`` (12) + ``c`` (13), a pytree like ``x``;
        ``metrics`` has ``loss`` (mean ``l_j``), ``exploit_norm`` and
        ``score_norm`` (the norms of the two terms).

    Raises:
        ValueError: an unknown ``estimator``/``baseline``, the input it needs
            missing, or shapes that do not fit (checked before tracing).
    """
    explore = exploration_gradient(
        reward_apply, x, queries, labels, gamma=gamma, tau=tau, estimator=estimator,
        branches=branches, policy_fn=policy_fn, baseline=baseline,
        normalize=normalize,
    )  # fmt: skip
    losses, vjp = jax.vjp(
        lambda x: preference_losses(reward_apply, x, queries, labels), x
    )
    exploit = vjp(jnp.full_like(losses, 1.0 / losses.shape[0]))[0]
    explore = jax.tree.map(lambda g: coef * g, explore)
    grad = jax.tree.map(jnp.add, exploit, explore)
    metrics = {
        "loss": jnp.mean(losses),
        "exploit_norm": optax.tree.norm(exploit),
        "score_norm": optax.tree.norm(explore),
    }
    return grad, metrics
