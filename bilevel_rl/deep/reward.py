"""Reward models of the deep track: ``r_x(obs) -> [A]``, one reward per action.

A reward model is a flax module whose ``apply(x, obs)`` maps observations
``[N, *obs_shape]`` to rewards ``[N, A]``; ``x`` (its variables) is the leader's
variable. :class:`RewardMLP` is the default (an MLP on the flattened observation,
output bounded to ``[-bound, bound]`` by ``bound * tanh``); :class:`TabularReward`
is the tabular model ``r_x(s, a) = x[s, a]`` on one-hot observations, for checks
against :mod:`bilevel_rl.estimators`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from bilevel_rl.types import Array, PyTree

__all__ = ["RewardApply", "RewardMLP", "TabularReward", "action_rewards"]

RewardApply = Callable[[PyTree, Array], Array]
"""``apply(x, obs [N, *obs_shape]) -> [N, A]`` (a flax module's ``apply``)."""


class RewardMLP(nn.Module):
    """``bound * tanh(MLP(flatten(obs)))``: ``[N, *obs_shape] -> [N, A]``.

    Attributes:
        num_actions: ``A``.
        hidden: widths of the hidden layers (ReLU).
        bound: the rewards lie in ``(-bound, bound)``.
    """

    num_actions: int
    hidden: Sequence[int] = (64, 64)
    bound: float = 1.0

    @nn.compact
    def __call__(self, obs: Array) -> Array:
        h = obs.reshape(obs.shape[0], -1).astype(jnp.float32)
        for width in self.hidden:
            h = nn.relu(nn.Dense(width)(h))
        return self.bound * jnp.tanh(nn.Dense(self.num_actions)(h))


class TabularReward(nn.Module):
    """``r_x(s, a) = table[s, a]`` read by one-hot observations ``[N, S]``.

    Attributes:
        num_states, num_actions: ``S``, ``A``.
    """

    num_states: int
    num_actions: int

    @nn.compact
    def __call__(self, obs: Array) -> Array:
        table = self.param(
            "table", nn.initializers.zeros, (self.num_states, self.num_actions)
        )
        return obs @ table.astype(obs.dtype)


def action_rewards(apply: RewardApply, x: PyTree, obs: Array, actions: Array) -> Array:
    """``r_x(obs_n, a_n)`` for observations ``[..., *obs_shape]`` and actions
    ``[...]`` of any common leading shape; returns ``[...]``."""
    lead = actions.shape
    flat = obs.reshape((-1,) + obs.shape[len(lead) :])
    rewards = apply(x, flat)
    taken = jnp.take_along_axis(rewards, actions.reshape(-1, 1), axis=1)
    return taken.reshape(lead)
