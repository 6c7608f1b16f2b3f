"""Online RLHF on gymnax: a reward model learned from preferences over fragments
of the follower's rollouts, the follower a soft-PPO agent on that reward.

One outer iteration (:func:`step`): ``ppo_updates`` rollouts + PPO updates on the
current reward ``r_x``; ``Q`` fresh queries (pairs of length-``F`` fragments of the
latest rollout, masked at episode ends) labelled by the true return; their
preference accuracy under ``r_x`` BEFORE they are trained on (held out, on-policy);
they join a fixed-size buffer; then ``reward_steps`` AdamW steps on ``x`` with

    g = grad of the mean Bradley-Terry loss on a buffer minibatch       (12)
      + c_k * exploration_gradient(fresh queries)                         (13)

``method`` (static) picks what the leader does (:data:`METHODS`):

* ``"sobirl"``: both terms, (13) by ``estimator`` (``"branch"``: ``H``-step
  rollouts branched from the stored env states; ``"one_step"``), ``c_k`` ramped
  linearly from 0 to 1 over ``warmup`` iterations — deep SoBiRL (docs/math.md §4;
  the buffer replaces the on-policy expectation of (12), as every deep RLHF method
  does). ``momentum`` makes it deep Stoc-SoBiRL (docs/math.md §5): (13) becomes
  ``d_k = ĝ_k + (1 - eta)(d_{k-1} - ĝ(x_{k-1}, pi_{k-1}; Xi_k))`` (``"storm"``, the
  same fresh queries and branches re-evaluated at the previous reward and policy)
  or ``(1 - eta) d_{k-1} + eta ĝ_k`` (``"average"``), ``d_0 = ĝ_0``;
* ``"drlhf"``: (12) only — the same loop without the coupling term;
* ``"two_stage"``: queries and reward steps in the first ``stage_iterations``
  only while the follower keeps its initial policy; then the reward is frozen and
  PPO trains on it;
* ``"oracle"``: PPO on the environment's reward; no queries.

Everything is one ``lax.scan`` over iterations (:func:`train`), ``vmap``-able
over seeds. Queries are counted in the metrics (``queries``), so methods compare
per query and per environment step.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from bilevel_rl.algorithms.base import tree_finite
from bilevel_rl.algorithms.momentum import average_direction, storm_direction
from bilevel_rl.algorithms.params import (
    at_least,
    choice,
    count,
    flag,
    nonnegative,
    option,
    positive,
    unit_interval,
    validate,
)
from bilevel_rl.deep import ppo
from bilevel_rl.deep.envs import num_discrete_actions
from bilevel_rl.deep.estimators import (
    ESTIMATORS,
    Fragments,
    branch,
    exploration_gradient,
    preference_losses,
)
from bilevel_rl.deep.reward import RewardMLP, action_rewards
from bilevel_rl.estimators import BASELINES
from bilevel_rl.types import Array, PRNGKey, PyTree

__all__ = [
    "METHODS",
    "Buffer",
    "Params",
    "RLHFState",
    "ScoreMomentum",
    "init",
    "label_queries",
    "sample_queries",
    "step",
    "train",
    "with_query_budget",
]

METHODS = ("sobirl", "drlhf", "two_stage", "oracle")
"""What the leader does (module docstring)."""

MOMENTUM = ("none", "storm", "average")
"""Momentum on sobirl's score term (module docstring)."""


@dataclasses.dataclass(frozen=True)
class Params:
    """Options of the RLHF loop (the follower's are a :class:`ppo.Params`)."""

    method: str = option("sobirl", "leader: " + ", ".join(METHODS), choice(*METHODS))
    estimator: str = option(
        "one_step", "sobirl's score term: " + ", ".join(ESTIMATORS), choice(*ESTIMATORS)
    )
    branch_length: int = option(8, "H, steps of each branched rollout", count)
    branch_rollouts: int = option(1, "E, branched rollouts per step and kind", count)
    queries_per_iteration: int = option(16, "Q fresh queries per iteration", count)
    fragment_length: int = option(25, "F, steps per fragment", count)
    buffer_size: int = option(1024, "labelled queries kept (oldest replaced)", count)
    labels: str = option(
        "deterministic",
        "deterministic (ties 0.5) or bradley_terry (sampled)",
        choice("deterministic", "bradley_terry"),
    )
    temperature: float = option(1.0, "Bradley-Terry label temperature", positive)
    reward_steps: int = option(1, "reward-model steps per iteration", count)
    reward_batch: int = option(64, "buffer queries per reward step", count)
    reward_lr: float = option(3e-4, "AdamW step size of the reward model", positive)
    weight_decay: float = option(1e-4, "AdamW weight decay", nonnegative)
    reward_hidden: tuple[int, ...] = option(
        (64, 64), "hidden widths of the reward MLP", None
    )
    reward_bound: float = option(1.0, "rewards lie in (-bound, bound)", positive)
    baseline: str = option("leave_one_out", "score baseline", choice(*BASELINES))
    normalize: bool = option(True, "divide each score by its valid steps", flag)
    warmup: int = option(0, "iterations over which c_k ramps 0 -> 1", at_least(0))
    momentum: str = option(
        "none",
        "sobirl's score term: none, storm (fixed samples) or average",
        choice(*MOMENTUM),
    )
    momentum_weight: float = option(0.1, "eta of the momentum (1: none)", unit_interval)
    ppo_updates: int = option(1, "follower rollouts + updates per iteration", count)
    stage_iterations: int = option(
        0, "two_stage: iterations of the preference stage", at_least(0)
    )

    def __post_init__(self):
        validate(self)
        if self.momentum != "none" and self.method != "sobirl":
            raise ValueError(
                f"momentum: only method 'sobirl' has a score term to apply it to, "
                f"got method {self.method!r}"
            )


class Buffer(NamedTuple):
    """A ring of labelled queries (no env states: those are for fresh queries).

    Attributes:
        queries: :class:`Fragments` ``[B, 2, F]`` with ``env_states=None``.
        labels: ``[B]``.
        count: ``[]`` int32 queries ever added (``min(count, B)`` are filled).
    """

    queries: Fragments
    labels: Array
    count: Array


class ScoreMomentum(NamedTuple):
    """The momentum of sobirl's score term (``x_0`` and zeros while unused).

    Attributes:
        x_prev: ``x_{k-1}``, where ``ĝ_{k-1}`` was evaluated (a pytree like ``x``).
        d: ``d_{k-1}`` (a pytree like ``x``).
    """

    x_prev: PyTree
    d: PyTree


class RLHFState(NamedTuple):
    """One seed's loop state.

    Attributes:
        follower: :class:`ppo.PPOState`.
        x: the reward model's variables.
        opt_state: AdamW state of ``x``.
        buffer: :class:`Buffer`.
        key: PRNG key.
        queries: ``[]`` int32 queries labelled so far.
        score: :class:`ScoreMomentum`.
    """

    follower: ppo.PPOState
    x: PyTree
    opt_state: optax.OptState
    buffer: Buffer
    key: PRNGKey
    queries: Array
    score: ScoreMomentum


def with_query_budget(params: Params, num_iterations: int, queries: int) -> Params:
    """``params`` with ``queries_per_iteration`` set to spend about ``queries``
    queries per seed over ``num_iterations``: evenly (at least one per iteration),
    or for ``two_stage`` within its preference stage (``stage_iterations``; a
    quarter of the iterations when unset). The oracle's are left as they are."""
    num_iterations = count("num_iterations", num_iterations)
    queries = count("queries", queries)
    if params.method == "oracle":
        return params
    if params.method == "two_stage":
        stage = params.stage_iterations or max(1, num_iterations // 4)
        return dataclasses.replace(
            params, stage_iterations=stage, queries_per_iteration=-(-queries // stage)
        )
    per_iteration = max(1, queries // num_iterations)
    return dataclasses.replace(params, queries_per_iteration=per_iteration)


def check(env, env_params, params: Params, ppo_params: ppo.Params) -> None:
    """Raises ``ValueError`` naming the field for a setting that cannot run."""
    num_discrete_actions(env, env_params)
    if params.fragment_length > ppo_params.num_steps:
        raise ValueError(
            f"fragment_length: {params.fragment_length} is longer than the rollout "
            f"(ppo num_steps = {ppo_params.num_steps})"
        )
    if params.method in ("sobirl", "drlhf", "two_stage"):
        if params.reward_batch > params.buffer_size:
            raise ValueError(
                f"reward_batch: {params.reward_batch} exceeds buffer_size "
                f"{params.buffer_size}"
            )
    if params.method == "two_stage" and params.stage_iterations == 0:
        raise ValueError("stage_iterations: two_stage needs a preference stage > 0")


def sample_queries(
    key: PRNGKey, rollout: ppo.Rollout, num: int, length: int
) -> Fragments:
    """``num`` pairs of length-``length`` fragments of ``rollout`` (``[T, N]``):
    each a uniform environment and start ``t <= T - length``; ``mask`` ends at the
    first terminated/truncated step. Returns :class:`Fragments` ``[num, 2, F]``."""
    T, N = rollout.action.shape
    k_env, k_start = jax.random.split(key)
    env = jax.random.randint(k_env, (num, 2), 0, N)
    start = jax.random.randint(k_start, (num, 2), 0, T - length + 1)
    times = start[..., None] + jnp.arange(length)  # [num, 2, F]
    envs = jnp.broadcast_to(env[..., None], times.shape)

    def take(a):
        return a[times, envs]

    done = take(rollout.terminated | rollout.truncated)
    ended_before = jnp.cumsum(done, axis=-1) - done  # dones strictly before t
    return Fragments(
        obs=take(rollout.obs),
        actions=take(rollout.action),
        mask=ended_before == 0,
        true_rewards=jnp.where(ended_before == 0, take(rollout.true_reward), 0),
        env_states=jax.tree.map(take, rollout.env_state),
    )


def label_queries(key: PRNGKey, queries: Fragments, params: Params) -> Array:
    """``[Q]`` labels from the true returns: ``1`` where fragment 1 has the
    larger return (``0.5`` on ties) or Bradley–Terry draws with
    ``params.temperature``."""
    returns = jnp.sum(queries.true_rewards, axis=-1)
    diff = returns[:, 0] - returns[:, 1]
    if params.labels == "deterministic":
        return jnp.where(diff > 0, 1.0, jnp.where(diff < 0, 0.0, 0.5))
    p = jax.nn.sigmoid(diff / params.temperature)
    return jax.random.bernoulli(key, p).astype(p.dtype)


def _reward_optimizer(params: Params) -> optax.GradientTransformation:
    return optax.adamw(params.reward_lr, weight_decay=params.weight_decay)


def _reward_model(num_actions: int, params: Params) -> nn.Module:
    return RewardMLP(num_actions, params.reward_hidden, params.reward_bound)


def init(
    key: PRNGKey,
    env,
    env_params,
    params: Params,
    ppo_params: ppo.Params,
    num_iterations: int,
) -> RLHFState:
    """A fresh loop: PPO follower (annealed over ``num_iterations *
    ppo_updates``), reward MLP, empty buffer."""
    check(env, env_params, params, ppo_params)
    k_follow, k_reward, key = jax.random.split(key, 3)
    follower = ppo.init(
        k_follow, env, env_params, ppo_params,
        num_updates=num_iterations * params.ppo_updates,
    )  # fmt: skip
    model = _reward_model(num_discrete_actions(env, env_params), params)
    x = model.init(k_reward, follower.obs[:1])
    B, F = params.buffer_size, params.fragment_length
    obs = jnp.zeros((B, 2, F) + follower.obs.shape[1:], follower.obs.dtype)
    queries = Fragments(
        obs=obs,
        actions=jnp.zeros((B, 2, F), jnp.int32),
        mask=jnp.zeros((B, 2, F), bool),
        true_rewards=jnp.zeros((B, 2, F), jnp.float32),
        env_states=None,
    )
    buffer = Buffer(queries, jnp.zeros((B,), jnp.float32), jnp.zeros((), jnp.int32))
    opt_state = _reward_optimizer(params).init(x)
    score = ScoreMomentum(x, jax.tree.map(jnp.zeros_like, x))
    queries = jnp.zeros((), jnp.int32)
    return RLHFState(follower, x, opt_state, buffer, key, queries, score)


def _add(buffer: Buffer, queries: Fragments, labels: Array) -> Buffer:
    B = buffer.labels.shape[0]
    slots = (buffer.count + jnp.arange(labels.shape[0])) % B
    stored = queries._replace(env_states=None)
    new = jax.tree.map(
        lambda b, q: b.at[slots].set(q.astype(b.dtype)), buffer.queries, stored
    )
    return Buffer(new, buffer.labels.at[slots].set(labels), buffer.count + len(slots))


def _accuracy(apply, x, queries: Fragments) -> Array:
    """Fraction of the non-tied queries whose order ``r_x`` gets right."""
    predicted = jnp.sum(
        jnp.where(
            queries.mask, action_rewards(apply, x, queries.obs, queries.actions), 0
        ),
        axis=-1,
    )
    true = jnp.sum(queries.true_rewards, axis=-1)
    sign_true = jnp.sign(true[:, 0] - true[:, 1])
    right = jnp.sign(predicted[:, 0] - predicted[:, 1]) == sign_true
    decided = sign_true != 0
    return jnp.sum(right & decided) / jnp.maximum(jnp.sum(decided), 1)


def step(
    state: RLHFState,
    iteration: Array,
    env,
    env_params,
    params: Params,
    ppo_params: ppo.Params,
) -> tuple[RLHFState, dict[str, Array]]:
    """One outer iteration (module docstring); ``iteration`` ``[]`` int32 drives the
    warm-up and the stages (pass it unbatched under ``vmap``)."""
    num_actions = num_discrete_actions(env, env_params)
    model = _reward_model(num_actions, params)
    oracle = params.method == "oracle"
    x = jax.lax.stop_gradient(state.x)

    def reward_fn(obs, action):
        return action_rewards(model.apply, x, obs, action)

    def follow(follower, _):
        follower, ro = ppo.rollout(
            follower, env, env_params, ppo_params, None if oracle else reward_fn
        )
        learn = True
        if params.method == "two_stage":
            learn = iteration >= params.stage_iterations
        new, ppo_metrics = ppo.update(follower, ro, ppo_params)
        follower = jax.tree.map(lambda n, o: jnp.where(learn, n, o), new, follower)
        # approx_kl: of the update applied (0 while two_stage's follower waits)
        ppo_metrics["approx_kl"] = jnp.where(learn, ppo_metrics["approx_kl"], 0)
        episodes = ppo.episode_metrics(follower, ro, ppo_params)
        return follower, (ro, {**ppo_metrics, **episodes})

    follower, (rollouts, ppo_metrics) = jax.lax.scan(
        follow, state.follower, None, length=params.ppo_updates
    )
    ppo_metrics = jax.tree.map(lambda a: a[-1], ppo_metrics)
    latest = jax.tree.map(lambda a: a[-1], rollouts)
    metrics = {k: ppo_metrics[k] for k in ("mean_return", "entropy", "approx_kl")}
    steps = (iteration + 1) * params.ppo_updates * ppo_params.batch_size
    metrics["env_steps"] = steps.astype(jnp.int32)  # taken, learning or not
    state = state._replace(follower=follower)
    if oracle:
        zero = jnp.zeros((), jnp.float32)
        metrics |= {"queries": state.queries, "fresh_accuracy": zero,
                    "reward_loss": zero, "score_norm": zero}  # fmt: skip
        return state, {**metrics, "finite": tree_finite((state.follower, state.x))}

    key, k_query, k_label, k_branch, k_batch = jax.random.split(state.key, 5)
    Q = params.queries_per_iteration
    fresh = sample_queries(k_query, latest, Q, params.fragment_length)
    labels = label_queries(k_label, fresh, params)
    accuracy = _accuracy(model.apply, state.x, fresh)
    asking = True
    if params.method == "two_stage":
        asking = iteration < params.stage_iterations
    buffer = jax.tree.map(
        lambda n, o: jnp.where(asking, n, o), _add(state.buffer, fresh, labels),
        state.buffer,
    )  # fmt: skip
    queries = state.queries + jnp.where(asking, Q, 0)

    explore = jax.tree.map(jnp.zeros_like, state.x)
    score = state.score
    if params.method == "sobirl":

        def policy_fn(obs):
            return ppo.policy(follower, obs)

        branches = None
        if params.estimator == "branch":
            branches = branch(
                k_branch, env, env_params, policy_fn, fresh,
                num_rollouts=params.branch_rollouts, length=params.branch_length,
            )  # fmt: skip

        def score_term(x, policy_fn):
            return exploration_gradient(
                model.apply, x, fresh, labels, gamma=ppo_params.gamma,
                tau=ppo_params.tau, estimator=params.estimator, branches=branches,
                policy_fn=policy_fn, baseline=params.baseline,
                normalize=params.normalize,
            )  # fmt: skip

        explore = score_term(state.x, policy_fn)
        if params.momentum != "none":
            explore, score = _momentum(params, iteration, state, explore, score_term)
        coef = jnp.minimum(1.0, (iteration + 1) / max(params.warmup, 1))
        explore = jax.tree.map(lambda g: coef.astype(g.dtype) * g, explore)
    filled = jnp.minimum(buffer.count, params.buffer_size)
    opt = _reward_optimizer(params)

    def reward_step(carry, key):
        x, opt_state = carry
        idx = jax.random.randint(key, (params.reward_batch,), 0, jnp.maximum(filled, 1))
        batch = jax.tree.map(lambda a: a[idx], buffer.queries)

        def mean_loss(x):
            return jnp.mean(
                preference_losses(model.apply, x, batch, buffer.labels[idx])
            )

        loss, grad = jax.value_and_grad(mean_loss)(x)
        grad = jax.tree.map(lambda g, e: (g + e).astype(g.dtype), grad, explore)
        updates, new_opt = opt.update(grad, opt_state, x)
        new_x = optax.apply_updates(x, updates)
        train = asking & (filled > 0)
        x, opt_state = jax.tree.map(
            lambda n, o: jnp.where(train, n, o), (new_x, new_opt), (x, opt_state)
        )
        return (x, opt_state), loss

    (x, opt_state), losses = jax.lax.scan(
        reward_step, (state.x, state.opt_state),
        jax.random.split(k_batch, params.reward_steps),
    )  # fmt: skip
    state = RLHFState(follower, x, opt_state, buffer, key, queries, score)
    metrics |= {
        "queries": queries,
        "fresh_accuracy": accuracy,
        "reward_loss": losses[-1],
        "score_norm": optax.tree.norm(explore),
    }
    return state, {**metrics, "finite": tree_finite((state.follower, state.x))}


def _momentum(params: Params, iteration, state: RLHFState, g_now, score_term):
    """``(d_k, ScoreMomentum)``: STORM or the moving average of the score term;
    ``pi_{k-1}`` is the follower before this iteration's PPO updates."""
    eta = params.momentum_weight
    d_prev = state.score.d
    if params.momentum == "storm":

        def prev_policy(obs):
            return ppo.policy(state.follower, obs)

        g_prev = score_term(state.score.x_prev, prev_policy)
        d = storm_direction(g_now, d_prev, g_prev, eta)
    else:
        d = average_direction(g_now, d_prev, eta)
    d = jax.tree.map(lambda g, u: jnp.where(iteration == 0, g, u), g_now, d)
    return d, ScoreMomentum(state.x, d)


def train(
    key: PRNGKey,
    env,
    env_params,
    params: Params,
    ppo_params: ppo.Params,
    num_iterations: int,
) -> tuple[RLHFState, dict[str, Array]]:
    """:func:`init` and ``num_iterations`` of :func:`step` in one ``lax.scan``;
    jit it and ``vmap`` over ``key`` for seeds.

    Returns:
        ``(state, metrics)``, every metric ``[num_iterations]``: ``mean_return``
        (true return of the environments' last finished episodes),
        ``env_steps``, ``queries``, ``fresh_accuracy`` (held-out on-policy pairs),
        ``reward_loss``, ``score_norm``, ``entropy``, ``approx_kl``, ``finite``
        (every variable of the follower and the reward model finite).
    """
    num_iterations = count("num_iterations", num_iterations)
    state = init(key, env, env_params, params, ppo_params, num_iterations)

    def body(state, iteration):
        return step(state, iteration, env, env_params, params, ppo_params)

    return jax.lax.scan(body, state, jnp.arange(num_iterations))
