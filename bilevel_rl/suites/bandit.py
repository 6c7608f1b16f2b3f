"""One-state bandits for the AIHF examples (docs/math.md §6).

A bandit is a one-state MDP with ``gamma = 0``: its soft-optimal policy is
``softmax(r / tau + log pi0)``, so the tabular machinery applies unchanged. The
reward of an ``A``-armed bandit is ``r[None, :]`` (shape ``[1, A]``).
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from bilevel_rl.mdp import TabularMDP
from bilevel_rl.suites.checks import check_array_size, check_number, check_size
from bilevel_rl.suites.random_mdps import float_dtype
from bilevel_rl.types import Array

__all__ = ["aihf_gaussian_reward", "bandit_mdp"]


def bandit_mdp(
    num_actions: int,
    *,
    tau: float = 1.0,
    ref_policy: Array | None = None,
    dtype=None,
) -> TabularMDP:
    """A one-state, ``num_actions``-armed bandit as a ``TabularMDP`` (``gamma = 0``).

    Args:
        num_actions: ``A``.
        tau: temperature (``beta`` of the AIHF paper's KL regularizer).
        ref_policy: ``[A]`` or ``[1, A]`` reference policy ``pi0`` (strictly
            positive, summing to one; e.g. ``pi_SFT``), or ``None`` for plain
            entropy regularization.
        dtype: floating dtype (default: JAX's default float).

    Returns:
        ``TabularMDP`` with ``P: [1, A, 1]`` (all ones), ``rho = [1]``,
        ``gamma = 0``.

    References:
        Li et al., "Joint Demonstration and Preference Learning Improves Policy
        Alignment with Human Feedback" (AIHF), Section 4; docs/math.md §6.
    """
    dtype = float_dtype(dtype)
    num_actions = check_size("num_actions", num_actions)
    check_array_size("num_actions", "P", (1, num_actions, 1), dtype)
    check_number("tau", tau, 0.0, math.inf, open_low=True, open_high=True)
    if ref_policy is not None:
        ref_policy = jnp.reshape(jnp.asarray(ref_policy, dtype), (1, num_actions))
    return TabularMDP(
        P=jnp.ones((1, num_actions, 1), dtype),
        rho=jnp.ones((1,), dtype),
        gamma=jnp.asarray(0.0, dtype),
        tau=jnp.asarray(tau, dtype),
        ref_policy=ref_policy,
    )


def aihf_gaussian_reward(
    num_actions: int = 50, mu: float = 0.5, sigma: float = 2.0, *, dtype=None
) -> Array:
    """Ground-truth reward of AIHF Numerical Example 2.

    ``r_i = exp(-(i / A - mu)^2 / (2 sigma^2)) / (sigma sqrt(2 pi))`` for arms
    ``i = 1, ..., A`` (entry ``i - 1`` of the result).

    Args:
        num_actions: ``A`` (50 in the paper).
        mu: mean of the Gaussian bump.
        sigma: its width.
        dtype: floating dtype (default: JAX's default float).

    Returns:
        ``[A]`` rewards; use ``r[None, :]`` with :func:`bandit_mdp`.

    References:
        Li et al. (AIHF), Numerical Example 2; docs/math.md §6.
    """
    dtype = float_dtype(dtype)
    num_actions = check_size("num_actions", num_actions)
    check_array_size("num_actions", "the reward", (num_actions,), dtype)
    check_number("sigma", sigma, 0.0, math.inf, open_low=True, open_high=True)
    i = jnp.arange(1, num_actions + 1, dtype=dtype)
    z = (i / num_actions - mu) / sigma
    return jnp.exp(-0.5 * z**2) / (sigma * math.sqrt(2.0 * math.pi))
