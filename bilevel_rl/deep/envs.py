"""Environments of the deep track: any gymnax environment by name, and a
:class:`~bilevel_rl.mdp.TabularMDP` as a gymnax environment.

gymnax 1.0 conventions (kept by everything in :mod:`bilevel_rl.deep`):
``env.step(key, state, action, params)`` returns ``(obs, state, reward, terminated,
truncated, info)`` and resets automatically: after a step with ``terminated |
truncated`` the returned ``obs``/``state`` start the next episode and the real
last observation is ``info["final_observation"]``; only ``terminated`` stops
bootstrapping. Environment states are pytrees, so a stored state is a generative
model: stepping from it again branches new rollouts (docs/math.md §5).

:class:`TabularEnv` observes the one-hot state ``[S]`` and never ends an episode
(up to ``max_steps_in_episode``), so estimators built on gymnax rollouts can be
checked against the exact tabular answers of :mod:`bilevel_rl.estimators`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from gymnax import make as _gymnax_make
from gymnax import registered_envs
from gymnax.environments import environment, spaces

from bilevel_rl.mdp import TabularMDP
from bilevel_rl.types import Array, PRNGKey

__all__ = [
    "TabularEnv",
    "TabularEnvParams",
    "TabularEnvState",
    "environment_names",
    "make",
    "num_discrete_actions",
    "tabular_env",
]


def environment_names() -> list[str]:
    """The gymnax environments :func:`make` accepts."""
    return list(registered_envs)


def make(name: str, **params: Any) -> tuple[environment.Environment, Any]:
    """A gymnax environment and its parameters, by name.

    Args:
        name: a gymnax id, e.g. ``"Breakout-MinAtar"``, ``"CartPole-v1"``.
        **params: replaced fields of the environment's ``EnvParams`` (e.g.
            ``max_steps_in_episode=1000``).

    Returns:
        ``(env, env_params)``.

    Raises:
        ValueError: an unknown name or parameter field.
    """
    if name not in registered_envs:
        close = [n for n in registered_envs if name.lower() in n.lower()]
        hint = f"; did you mean {close}" if close else ""
        raise ValueError(
            f"env: unknown environment {name!r}{hint}; gymnax has "
            f"{sorted(registered_envs)}"
        )
    env, env_params = _gymnax_make(name)
    fields = set(env_params.__dataclass_fields__)
    unknown = sorted(set(params) - fields)
    if unknown:
        raise ValueError(
            f"env_params: {name} has no parameter(s) {unknown}; it has {sorted(fields)}"
        )
    return env, env_params.replace(**params)


def num_discrete_actions(env: environment.Environment, env_params: Any) -> int:
    """``A`` of a discrete action space.

    Raises:
        ValueError: the action space is not ``Discrete`` (a continuous action
            space given to a categorical policy).
    """
    space = env.action_space(env_params)
    if not isinstance(space, spaces.Discrete):
        raise ValueError(
            f"env: {env.name} has a {type(space).__name__} action space; this "
            "policy/reward model needs a Discrete one"
        )
    return int(space.n)


@struct.dataclass
class TabularEnvState(environment.EnvState):
    """``state``: ``[]`` int32 current state ``s``; ``time``: steps taken."""

    state: Array
    time: Array


@struct.dataclass
class TabularEnvParams:
    """A tabular MDP's dynamics and the reward the environment pays.

    Attributes:
        P: ``[S, A, S]`` transition probabilities.
        rho: ``[S]`` initial-state distribution.
        reward: ``[S, A]`` the environment's (true) reward.
        max_steps_in_episode: episodes are truncated after this many steps.
    """

    P: Array
    rho: Array
    reward: Array
    max_steps_in_episode: int = 2**30


class TabularEnv(environment.Environment[TabularEnvState, TabularEnvParams]):
    """A tabular MDP as a gymnax environment with one-hot observations ``[S]``.

    Build it with :func:`tabular_env`. Never terminates; truncated only at
    ``max_steps_in_episode``.
    """

    def __init__(self, num_states: int, num_actions: int, dtype=jnp.float32):
        super().__init__()
        self.num_states, self._num_actions, self.dtype = num_states, num_actions, dtype

    @property
    def name(self) -> str:
        return f"Tabular-S{self.num_states}-A{self._num_actions}"

    @property
    def num_actions(self) -> int:
        return self._num_actions

    def observation(self, state: TabularEnvState) -> Array:
        """``[S]`` one-hot of ``state.state``."""
        return jax.nn.one_hot(state.state, self.num_states, dtype=self.dtype)

    def get_obs(self, state, params=None, key=None) -> Array:
        return self.observation(state)

    def step_env(self, key: PRNGKey, state, action, params: TabularEnvParams):
        probs = params.P[state.state, action]
        nxt = jax.random.categorical(key, jnp.log(probs)).astype(jnp.int32)
        reward = params.reward[state.state, action]
        new = TabularEnvState(state=nxt, time=state.time + 1)
        return self.observation(new), new, reward, jnp.asarray(False), {}

    def reset_env(self, key: PRNGKey, params: TabularEnvParams):
        s0 = jax.random.categorical(key, jnp.log(params.rho)).astype(jnp.int32)
        state = TabularEnvState(state=s0, time=jnp.zeros((), jnp.int32))
        return self.observation(state), state

    def is_terminated(self, state, params) -> Array:
        return jnp.asarray(False)

    def action_space(self, params=None) -> spaces.Discrete:
        return spaces.Discrete(self._num_actions)

    def observation_space(self, params=None) -> spaces.Box:
        return spaces.Box(0.0, 1.0, (self.num_states,), self.dtype)


def tabular_env(
    mdp: TabularMDP, reward: Array, *, max_steps_in_episode: int = 2**30
) -> tuple[TabularEnv, TabularEnvParams]:
    """``(env, env_params)`` simulating ``mdp`` (one instance) and paying
    ``reward`` ``[S, A]``; observations are one-hot ``[S]`` in ``mdp.P``'s dtype.

    Raises:
        ValueError: a batched ``mdp`` or a ``reward`` not ``[S, A]``.
    """
    if mdp.batch_shape:
        raise ValueError(f"mdp: expected one MDP, got batch shape {mdp.batch_shape}")
    S, A = mdp.num_states, mdp.num_actions
    reward = jnp.asarray(reward)
    if reward.shape != (S, A):
        raise ValueError(f"reward: expected [S, A] = {(S, A)}, got {reward.shape}")
    env = TabularEnv(S, A, mdp.P.dtype)
    params = TabularEnvParams(
        P=mdp.P, rho=mdp.rho, reward=reward, max_steps_in_episode=max_steps_in_episode
    )
    return env, params
