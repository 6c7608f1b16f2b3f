"""PPO follower on gymnax environments with the entropy-regularized (soft) return.

The follower of the deep track: for a reward ``r`` (a leader's reward model
``r_x(obs, a)``, or the environment's own reward, "the oracle") and a temperature
``tau``, it approximates the soft-optimal policy, the maximizer of

    E[ sum_t gamma^t (r(s_t, a_t) - tau log pi(a_t | s_t)) ]

(docs/math.md §1) with clipped PPO (Schulman et al. 2017). With ``soft=True`` the
entropy term enters the return: every step's reward inside GAE is
``r_t - tau log pi_old(a_t | s_t)`` (:func:`soft_rewards`), so the critic learns the
soft value and the policy gradient is that of the soft objective (the extra
``-tau grad log pi`` term of the exact gradient has mean zero). With ``soft=False``
it is plain PPO with the entropy bonus ``tau H(pi(. | s))`` in the loss.

gymnax 1.0 conventions: ``env.step`` resets automatically, so after a step with
``terminated | truncated`` the next observation belongs to the next episode; the
real last observation is ``info["final_observation"]``. Only ``terminated`` stops
bootstrapping: a truncated step bootstraps from the critic's value of the real last
observation (:attr:`Rollout.next_value`), computed in one batched call after the
rollout.

Everything is a pure function of arrays: :func:`train` jits, and vmaps over its
key for several seeds in one compiled call::

    env, env_params = gymnax.make("Breakout-MinAtar")
    params = ppo.Params()
    run = jax.jit(jax.vmap(lambda k: ppo.train(k, env, env_params, params, 100)))
    state, metrics = run(jax.random.split(jax.random.key(0), 3))

Shapes: ``N = num_envs`` parallel environments, ``T = num_steps`` steps per
rollout, ``A`` discrete actions, ``obs_shape`` the environment's observation shape.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training.train_state import TrainState

from bilevel_rl.algorithms.params import (
    choice,
    count,
    flag,
    nonnegative,
    option,
    positive,
    unit_interval,
    validate,
)
from bilevel_rl.deep.envs import num_discrete_actions
from bilevel_rl.types import Array, PRNGKey, PyTree

__all__ = [
    "ActorCritic",
    "PPOState",
    "Params",
    "Rollout",
    "RewardFn",
    "advantages",
    "episode_metrics",
    "gae",
    "init",
    "orthogonal",
    "policy",
    "rollout",
    "soft_rewards",
    "train",
    "update",
]

RewardFn = Callable[[Array, Array], Array]
"""``reward_fn(obs [N, *obs_shape], action [N]) -> [N]``: the reward the follower
optimizes (``None`` wherever one is taken: the environment's own reward)."""


# ----------------------------------------------------------------------- params


def _closed_unit(name, value):
    """A number in ``[0, 1]``."""
    value = nonnegative(name, value)
    if value > 1.0:
        raise ValueError(f"{name}: must lie in [0, 1], got {value!r}")
    return value


def _widths(name, value):
    """A non-empty tuple of layer widths, each an integer ``>= 1``."""
    if isinstance(value, int | str) or not isinstance(value, Sequence) or not value:
        raise ValueError(f"{name}: must be a non-empty tuple of widths, got {value!r}")
    return tuple(count(f"{name}[{i}]", w) for i, w in enumerate(value))


@dataclasses.dataclass(frozen=True)
class Params:
    """Options of the PPO follower (defaults: measured on Breakout-MinAtar with 64
    environments, benchmarks/ppo_minatar.py; 16 minibatches of 512 steps and step
    size 1e-3 escaped the early return plateau (about 7) that 4 minibatches and
    5e-4 stayed on).

    A rollout has ``num_envs * num_steps`` steps, split into ``num_minibatches``
    minibatches for each of ``update_epochs`` passes.
    """

    num_envs: int = option(64, "N environments stepped in parallel", count)
    num_steps: int = option(128, "T steps per environment per rollout", count)
    update_epochs: int = option(4, "passes over each rollout per update", count)
    num_minibatches: int = option(16, "minibatches per pass (divides N * T)", count)
    learning_rate: float = option(
        1e-3, "adam step size (the start of annealing)", positive
    )
    anneal_lr: bool = option(
        True, "decay the step size linearly to 0 over training", flag
    )
    gamma: float = option(0.99, "discount factor in (0, 1]", unit_interval)
    gae_lambda: float = option(0.95, "GAE lambda in [0, 1]", _closed_unit)
    clip_eps: float = option(0.2, "PPO ratio clip epsilon", positive)
    vf_coef: float = option(0.5, "weight of the value loss", nonnegative)
    max_grad_norm: float = option(0.5, "global-norm gradient clip", positive)
    tau: float = option(0.01, "entropy temperature tau", nonnegative)
    soft: bool = option(
        True,
        "true: -tau log pi(a|s) in every reward of the return; false: plain PPO with "
        "the entropy bonus tau H(pi) in the loss",
        flag,
    )
    normalize_advantages: bool = option(
        True, "standardize advantages per minibatch", flag
    )
    hidden: tuple[int, ...] = option(
        (64, 64), "hidden widths of actor and critic", _widths
    )
    activation: str = option("relu", "hidden activation", choice("relu", "tanh"))
    dtype: str = option(
        "float32", "network and loss dtype", choice("float32", "float64")
    )

    def __post_init__(self):
        validate(self)
        if (self.num_envs * self.num_steps) % self.num_minibatches:
            raise ValueError(
                f"num_envs * num_steps: {self.num_envs} * {self.num_steps} = "
                f"{self.num_envs * self.num_steps} steps per rollout are not divisible "
                f"by num_minibatches = {self.num_minibatches}"
            )

    @property
    def batch_size(self) -> int:
        """Environment steps per rollout, ``N * T``."""
        return self.num_envs * self.num_steps


# ---------------------------------------------------------------------- network


def _gram_schmidt(a: Array) -> Array:
    """The ``Q`` of ``a = QR`` (``[n, k]``, ``n >= k``, ``R``'s diagonal positive)
    by Gram-Schmidt, each column orthogonalized twice (CGS2)."""
    k = a.shape[1]

    def column(j, q):
        v = a[:, j]
        for _ in range(2):  # "twice is enough" (Kahan): orthogonal to round-off
            v = v - q @ (q.T @ v)
        return q.at[:, j].set(v / jnp.linalg.norm(v))

    return jax.lax.fori_loop(0, k, column, jnp.zeros_like(a))


def orthogonal(scale: float = 1.0) -> Callable:
    """Orthogonal initializer (Saxe et al. 2014) in plain XLA operations.

    The same distribution as ``flax.linen.initializers.orthogonal(scale)`` (the
    ``Q`` of a Gaussian matrix, Haar distributed), computed without LAPACK: under
    ``jit(vmap(...))`` on CPU, jaxlib's batched QR custom call can deadlock XLA's
    thread pool (two batched QRs in flight, each waiting for pool threads the other
    holds; seen with jaxlib 0.10 on 2 cores), which would hang a vmapped
    :func:`train` at its first step.
    """

    def init(key: PRNGKey, shape, dtype=jnp.float32) -> Array:
        rows, cols = int(np.prod(shape[:-1])), shape[-1]
        tall = (max(rows, cols), min(rows, cols))
        q = _gram_schmidt(jax.random.normal(key, tall, jnp.float32))
        q = q if rows >= cols else q.T
        return (scale * q).reshape(shape).astype(dtype)

    return init


class ActorCritic(nn.Module):
    """Separate actor and critic MLPs on the flattened observation.

    Orthogonal weights (:func:`orthogonal`; gain ``sqrt 2`` in the hidden layers,
    0.01 on the logits, 1 on the value) and zero biases, as usual for PPO.

    ``apply(variables, obs [N, *obs_shape]) -> (logits [N, A], value [N])``; any
    module with this contract may replace it (:func:`init`'s ``network``).

    Attributes:
        num_actions: ``A``.
        hidden: hidden widths (of each torso).
        activation: ``"relu"`` or ``"tanh"``.
        dtype: parameter and computation dtype.
    """

    num_actions: int
    hidden: Sequence[int] = (64, 64)
    activation: str = "relu"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, obs: Array) -> tuple[Array, Array]:
        act = {"relu": nn.relu, "tanh": nn.tanh}[self.activation]
        x = obs.reshape(obs.shape[0], -1).astype(self.dtype)

        def dense(width, scale):
            return nn.Dense(
                width,
                kernel_init=orthogonal(scale),
                bias_init=nn.initializers.zeros,
                dtype=self.dtype,
                param_dtype=self.dtype,
            )

        a, c = x, x
        for width in self.hidden:
            a = act(dense(width, np.sqrt(2.0))(a))
            c = act(dense(width, np.sqrt(2.0))(c))
        logits = dense(self.num_actions, 0.01)(a)
        value = dense(1, 1.0)(c)[:, 0]
        return logits, value


# ------------------------------------------------------------------------ state


class PPOState(NamedTuple):
    """The follower between updates (one seed; vmap adds a leading axis).

    Attributes:
        train_state: the network (``apply_fn``), its variables, the optimizer and
            its state (flax ``TrainState``; ``step`` counts minibatch steps).
        env_state: the gymnax states of the ``N`` environments (leading ``[N]``).
        obs: ``[N, *obs_shape]`` their current observations.
        key: the PRNG key of the next rollout / update.
        update: ``[]`` int32 updates done.
        episode_return: ``[N]`` true (environment) return of each running episode.
        last_return: ``[N]`` true return of each environment's last completed
            episode (0 before its first).
        episodes: ``[N]`` int32 episodes completed per environment.
    """

    train_state: TrainState
    env_state: PyTree
    obs: Array
    key: PRNGKey
    update: Array
    episode_return: Array
    last_return: Array
    episodes: Array


class Rollout(NamedTuple):
    """``T`` steps of the ``N`` environments; every field has leading ``[T, N]``.

    Attributes:
        obs: ``[T, N, *obs_shape]`` observation before step ``t`` (after an
            episode's last step, the next episode's first observation).
        action: ``[T, N]`` int32 action taken.
        log_prob: ``[T, N]`` ``log pi(a_t | obs_t)`` of the acting policy.
        value: ``[T, N]`` critic value of ``obs_t``.
        next_value: ``[T, N]`` critic value of the real next observation
            (``info["final_observation"]``: the last observation of an episode that
            ended at ``t``, else ``obs_{t+1}``).
        reward: ``[T, N]`` reward the follower optimizes, ``reward_fn(obs_t, a_t)``
            (the environment's reward without a ``reward_fn``); no entropy term.
        true_reward: ``[T, N]`` the environment's reward.
        terminated: ``[T, N]`` bool, the episode ended at ``t`` (no bootstrap).
        truncated: ``[T, N]`` bool, the episode was cut at ``t`` (bootstraps).
        episode_return: ``[T, N]`` true return of the episode that ended at ``t``
            (0 where none ended).
        env_state: gymnax state before step ``t`` (pytree, leading ``[T, N]``).
        step_key: ``[T, N]`` key of step ``t``: ``env.step(step_key[t, i],
            env_state[t, i], action[t, i], env_params)`` redoes the step.
    """

    obs: Array
    action: Array
    log_prob: Array
    value: Array
    next_value: Array
    reward: Array
    true_reward: Array
    terminated: Array
    truncated: Array
    episode_return: Array
    env_state: PyTree
    step_key: PRNGKey


# ------------------------------------------------------------------------- init


def _optimizer(params: Params, num_updates: int | None) -> optax.GradientTransformation:
    """Global-norm clipping, then adam (``eps = 1e-5``) with a constant step or one
    annealed linearly per update: ``lr (1 - k / num_updates)`` at update ``k``; the
    step in use is ``opt_state[1].hyperparams["learning_rate"]``."""
    lr = params.learning_rate
    if params.anneal_lr:
        steps_per_update = params.update_epochs * params.num_minibatches

        def lr(step):
            k = step // steps_per_update
            frac = jnp.maximum(0.0, 1.0 - k / num_updates)
            return (params.learning_rate * frac).astype(params.dtype)

    return optax.chain(
        optax.clip_by_global_norm(params.max_grad_norm),
        optax.inject_hyperparams(optax.adam)(learning_rate=lr, eps=1e-5),
    )


def _reset(key: PRNGKey, env, env_params, num_envs: int):
    return jax.vmap(env.reset, in_axes=(0, None))(
        jax.random.split(key, num_envs), env_params
    )


def init(
    key: PRNGKey,
    env,
    env_params,
    params: Params,
    network: nn.Module | None = None,
    *,
    num_updates: int | None = None,
) -> PPOState:
    """A fresh follower: network variables, optimizer and ``N`` reset environments.

    Args:
        key: PRNG key.
        env, env_params: a gymnax environment with a discrete action space.
        params: the options.
        network: ``apply(variables, obs [N, ...]) -> (logits [N, A], value [N])``;
            default :class:`ActorCritic` (``params.hidden``/``activation``/``dtype``).
        num_updates: updates over which the step size anneals to 0 (required with
            ``params.anneal_lr``; :func:`train` passes its own).

    Raises:
        ValueError: a non-discrete action space, or ``anneal_lr`` without
            ``num_updates``.
    """
    num_actions = num_discrete_actions(env, env_params)
    if params.anneal_lr:
        if num_updates is None:
            raise ValueError(
                "num_updates: anneal_lr=True needs the number of updates to anneal "
                "the step size over (or Params(anneal_lr=False))"
            )
        num_updates = count("num_updates", num_updates)
    if network is None:
        network = ActorCritic(
            num_actions, params.hidden, params.activation, jnp.dtype(params.dtype)
        )
    key, k_net, k_env = jax.random.split(key, 3)
    obs, env_state = _reset(k_env, env, env_params, params.num_envs)
    variables = network.init(k_net, obs)
    train_state = TrainState.create(
        apply_fn=network.apply,
        params=variables,
        tx=_optimizer(params, num_updates),
    )
    dtype = jnp.dtype(params.dtype)
    zeros = jnp.zeros((params.num_envs,), dtype)
    return PPOState(
        train_state=train_state,
        env_state=env_state,
        obs=obs,
        key=key,
        update=jnp.zeros((), jnp.int32),
        episode_return=zeros,
        last_return=zeros,
        episodes=jnp.zeros((params.num_envs,), jnp.int32),
    )


def policy(state: PPOState, obs: Array) -> Array:
    """``log pi(. | obs)``: ``[N, *obs_shape] -> [N, A]`` (the current policy)."""
    logits, _ = state.train_state.apply_fn(state.train_state.params, obs)
    return jax.nn.log_softmax(logits, axis=-1)


# ---------------------------------------------------------------------- rollout


def rollout(
    state: PPOState,
    env,
    env_params,
    params: Params,
    reward_fn: RewardFn | None = None,
) -> tuple[PPOState, Rollout]:
    """``T = num_steps`` steps of the ``N`` environments with the current policy.

    Args:
        state: the follower (its ``key``, environments and episode statistics
            advance).
        env, env_params: the environment ``state`` was made for.
        params: the options.
        reward_fn: ``reward_fn(obs [N, ...], action [N]) -> [N]``, the reward to
            optimize, evaluated on every step's observation and action; ``None``:
            the environment's reward (the oracle).

    Returns:
        ``(state, rollout)``; every field of :class:`Rollout` is ``[T, N, ...]``.
    """
    num_discrete_actions(env, env_params)
    apply_fn, variables = state.train_state.apply_fn, state.train_state.params
    dtype = jnp.dtype(params.dtype)
    n = params.num_envs
    env_step = jax.vmap(env.step, in_axes=(0, 0, 0, None))

    def step(carry: PPOState, _):
        before = carry
        key, k_act, k_env = jax.random.split(carry.key, 3)
        logits, value = apply_fn(variables, carry.obs)
        log_pi = jax.nn.log_softmax(logits.astype(dtype), axis=-1)
        action = jax.random.categorical(k_act, log_pi).astype(jnp.int32)
        log_prob = jnp.take_along_axis(log_pi, action[:, None], axis=1)[:, 0]
        step_key = jax.random.split(k_env, n)
        obs, env_state, reward, terminated, truncated, info = env_step(
            step_key, carry.env_state, action, env_params
        )
        reward = reward.astype(dtype)
        done = terminated | truncated
        ret = carry.episode_return + reward
        carry = carry._replace(
            env_state=env_state,
            obs=obs,
            key=key,
            episode_return=jnp.where(done, 0.0, ret).astype(dtype),
            last_return=jnp.where(done, ret, carry.last_return).astype(dtype),
            episodes=carry.episodes + done.astype(jnp.int32),
        )
        out = {
            "obs": before.obs,
            "action": action,
            "log_prob": log_prob,
            "value": value.astype(dtype),
            "true_reward": reward,
            "terminated": terminated,
            "truncated": truncated,
            "episode_return": jnp.where(done, ret, 0.0).astype(dtype),
            "env_state": before.env_state,
            "step_key": step_key,
            "final_obs": info["final_observation"],
        }
        return carry, out

    state, out = jax.lax.scan(step, state, None, length=params.num_steps)
    T = params.num_steps
    final_obs = out.pop("final_obs")
    _, next_value = apply_fn(variables, final_obs.reshape(T * n, *final_obs.shape[2:]))
    if reward_fn is None:
        reward = out["true_reward"]
    else:
        reward = jax.vmap(reward_fn)(out["obs"], out["action"]).astype(dtype)
    ro = Rollout(
        next_value=next_value.reshape(T, n).astype(dtype), reward=reward, **out
    )
    return state, ro


# ------------------------------------------------------------------- advantages


def soft_rewards(rollout: Rollout, params: Params) -> Array:
    """``[T, N]`` rewards inside the return: ``reward - tau log_prob`` when
    ``params.soft`` (the soft return's entropy term, with the acting policy's
    ``log pi(a_t | s_t)``), else ``reward``."""
    if params.soft:
        return rollout.reward - params.tau * rollout.log_prob
    return rollout.reward


def gae(
    reward: Array,
    value: Array,
    next_value: Array,
    terminated: Array,
    truncated: Array,
    gamma: float,
    gae_lambda: float,
) -> tuple[Array, Array]:
    """Generalized advantage estimation over ``[T, N]`` steps.

    ``delta_t = r_t + gamma (1 - terminated_t) V'_t - V_t`` with ``V'_t`` the value
    of the real next observation, and ``A_t = delta_t + gamma lambda (1 - done_t)
    A_{t+1}`` (``done = terminated | truncated``; ``A_T = 0``: the rollout's last
    step bootstraps through ``V'``).

    Returns:
        ``(advantages, targets)``, both ``[T, N]``; ``targets = advantages + value``.
    """
    not_term = 1.0 - terminated.astype(value.dtype)
    not_done = 1.0 - (terminated | truncated).astype(value.dtype)
    delta = reward + gamma * not_term * next_value - value

    def back(carry, x):
        d, nd = x
        carry = d + gamma * gae_lambda * nd * carry
        return carry, carry

    _, adv = jax.lax.scan(
        back, jnp.zeros_like(value[0]), (delta, not_done), reverse=True
    )
    return adv, adv + value


def advantages(rollout: Rollout, params: Params) -> tuple[Array, Array]:
    """:func:`gae` of a rollout with its :func:`soft_rewards`: ``(A, targets)``,
    each ``[T, N]``."""
    return gae(
        soft_rewards(rollout, params),
        rollout.value,
        rollout.next_value,
        rollout.terminated,
        rollout.truncated,
        params.gamma,
        params.gae_lambda,
    )


# ----------------------------------------------------------------------- update


def _loss(apply_fn, params: Params, variables, batch):
    """Clipped PPO loss of one minibatch and its diagnostics."""
    obs, action, old_log_prob, adv, target = batch
    dtype = jnp.dtype(params.dtype)
    logits, value = apply_fn(variables, obs)
    log_pi = jax.nn.log_softmax(logits.astype(dtype), axis=-1)
    log_prob = jnp.take_along_axis(log_pi, action[:, None], axis=1)[:, 0]
    log_ratio = log_prob - old_log_prob
    ratio = jnp.exp(log_ratio)
    if params.normalize_advantages:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    clipped = jnp.clip(ratio, 1.0 - params.clip_eps, 1.0 + params.clip_eps)
    pg_loss = -jnp.mean(jnp.minimum(ratio * adv, clipped * adv))
    value_loss = 0.5 * jnp.mean((value.astype(dtype) - target) ** 2)
    entropy = -jnp.mean(jnp.sum(jnp.exp(log_pi) * log_pi, axis=-1))
    bonus = 0.0 if params.soft else params.tau
    loss = pg_loss + params.vf_coef * value_loss - bonus * entropy
    aux = {
        "pg_loss": pg_loss,
        "value_loss": value_loss,
        "entropy": entropy,
        "approx_kl": jnp.mean(ratio - 1.0 - log_ratio),
        "clip_fraction": jnp.mean(jnp.abs(ratio - 1.0) > params.clip_eps),
    }
    return loss, aux


def update(
    state: PPOState, rollout: Rollout, params: Params
) -> tuple[PPOState, dict[str, Array]]:
    """``update_epochs`` passes of clipped PPO over shuffled minibatches.

    Returns:
        ``(state, metrics)``: scalar means over all minibatch steps of ``loss``,
        ``pg_loss``, ``value_loss``, ``entropy`` (of ``pi(. | s)`` on the batch),
        ``approx_kl``, ``clip_fraction``; ``learning_rate`` of the last step.
    """
    dtype = jnp.dtype(params.dtype)
    adv, target = advantages(rollout, params)
    size, m = params.batch_size, params.num_minibatches
    flat = jax.tree.map(
        lambda x: x.reshape(size, *x.shape[2:]),
        (rollout.obs, rollout.action, rollout.log_prob, adv, target),
    )
    apply_fn = state.train_state.apply_fn
    grad_fn = jax.value_and_grad(
        lambda v, b: _loss(apply_fn, params, v, b), has_aux=True
    )

    def minibatch(train_state: TrainState, batch):
        (loss, aux), grads = grad_fn(train_state.params, batch)
        return train_state.apply_gradients(grads=grads), {"loss": loss, **aux}

    def epoch(train_state, key):
        perm = jax.random.permutation(key, size)
        batches = jax.tree.map(
            lambda x: x[perm].reshape(m, size // m, *x.shape[1:]), flat
        )
        return jax.lax.scan(minibatch, train_state, batches)

    key, k_epochs = jax.random.split(state.key)
    keys = jax.random.split(k_epochs, params.update_epochs)
    train_state, aux = jax.lax.scan(epoch, state.train_state, keys)
    metrics = {k: jnp.mean(v).astype(dtype) for k, v in aux.items()}
    lr = train_state.opt_state[1].hyperparams["learning_rate"]
    metrics["learning_rate"] = jnp.asarray(lr, dtype)
    state = state._replace(train_state=train_state, key=key, update=state.update + 1)
    return state, metrics


# ------------------------------------------------------------------------ train


def episode_metrics(
    state: PPOState, rollout: Rollout, params: Params
) -> dict[str, Array]:
    """Scalar statistics of the true (environment) return after a rollout.

    ``episode_return_sum`` / ``episode_count``: of the episodes completed in the
    rollout (divide for their mean); ``mean_return``: mean over the environments
    that completed an episode of their last episode's return (0 before any: never
    NaN); ``reward``: mean optimized reward per step; ``env_steps``: steps so far.
    """
    dtype = jnp.dtype(params.dtype)
    finished = state.episodes > 0
    done = rollout.terminated | rollout.truncated
    return {
        "episode_return_sum": jnp.sum(rollout.episode_return),
        "episode_count": jnp.sum(done.astype(jnp.int32)),
        "mean_return": jnp.sum(jnp.where(finished, state.last_return, 0.0))
        / jnp.maximum(jnp.sum(finished), 1).astype(dtype),
        "reward": jnp.mean(rollout.reward),
        "env_steps": state.update * params.batch_size,
    }


def train(
    key: PRNGKey,
    env,
    env_params,
    params: Params,
    num_updates: int,
    reward_fn: RewardFn | None = None,
    network: nn.Module | None = None,
) -> tuple[PPOState, dict[str, Array]]:
    """:func:`init`, then ``num_updates`` of :func:`rollout` + :func:`update` in
    one ``lax.scan`` (``num_updates * num_envs * num_steps`` environment steps).

    Pure: jit it, and vmap it over ``key`` for several seeds in one call. The step
    size anneals over ``num_updates`` when ``params.anneal_lr``.

    Returns:
        ``(state, metrics)``: the final follower and ``[num_updates]`` per-update
        metrics (those of :func:`update` and :func:`episode_metrics`).

    Raises:
        ValueError: a non-discrete action space, or ``num_updates < 1``.
    """
    num_updates = count("num_updates", num_updates)
    state = init(key, env, env_params, params, network, num_updates=num_updates)

    def body(state, _):
        state, ro = rollout(state, env, env_params, params, reward_fn)
        state, metrics = update(state, ro, params)
        return state, {**metrics, **episode_metrics(state, ro, params)}

    return jax.lax.scan(body, state, None, length=num_updates)
