"""Random tabular MDPs: Dirichlet rows and Garnet (docs/math.md §9, §9.4).

Every generator takes a ``jax.Array`` PRNG key first, is pure JAX (sizes are static
Python ints), jits and ``jax.vmap``-s over a batch of keys. The initial distribution
is uniform and there is no reference policy unless stated otherwise.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

from bilevel_rl.mdp import TabularMDP
from bilevel_rl.suites.checks import (
    check_array_size,
    check_number,
    check_size,
    check_transition_size,
)
from bilevel_rl.types import Array, PRNGKey

__all__ = [
    "RewardFeatures",
    "dirichlet_mdp",
    "garnet_mdp",
    "random_mdp",
    "random_reward_features",
]


def float_dtype(dtype=None) -> jnp.dtype:
    """``dtype`` canonicalized; ``None`` gives JAX's default float (x64 aware).

    Raises:
        TypeError: ``dtype`` is not a floating dtype.
    """
    try:
        out = jnp.zeros((), dtype).dtype
    except TypeError:
        raise TypeError(f"dtype: not a dtype: {dtype!r}") from None
    if not jnp.issubdtype(out, jnp.floating):
        raise TypeError(f"dtype: must be a floating dtype, got {out}")
    return out


def check_mdp_sizes(num_states, num_actions, dtype) -> tuple[int, int]:
    """Checked ``(S, A)`` of a generated MDP (see :mod:`.checks`)."""
    S = check_size("num_states", num_states)
    A = check_size("num_actions", num_actions)
    check_transition_size(S, A, dtype)
    return S, A


def make_mdp(P: Array, gamma, tau, dtype, rho: Array | None = None) -> TabularMDP:
    """Builds a ``TabularMDP`` with the plain (traceable) constructor.

    ``rho`` defaults to uniform; ``gamma`` and ``tau`` are stored as ``[]`` arrays of
    ``dtype``. Concrete ``gamma``/``tau`` are range-checked; ``P`` is valid by
    construction.
    """
    check_number("gamma", gamma, 0.0, 1.0, open_high=True)
    check_number("tau", tau, 0.0, math.inf, open_low=True, open_high=True)
    S = P.shape[-1]
    if rho is None:
        rho = jnp.full((S,), 1.0 / S, dtype)
    return TabularMDP(
        P=jnp.asarray(P, dtype),
        rho=jnp.asarray(rho, dtype),
        gamma=jnp.asarray(gamma, dtype),
        tau=jnp.asarray(tau, dtype),
    )


def dirichlet_mdp(
    key: PRNGKey,
    num_states: int,
    num_actions: int,
    *,
    concentration: float = 1.0,
    gamma: float = 0.9,
    tau: float = 1.0,
    dtype=None,
) -> TabularMDP:
    """MDP whose rows ``P[s, a, :]`` are i.i.d. ``Dirichlet(concentration * 1_S)``.

    Args:
        key: PRNG key.
        num_states: ``S``.
        num_actions: ``A``.
        concentration: symmetric Dirichlet parameter (``1`` = uniform on the
            simplex; small values give nearly deterministic rows).
        gamma: discount factor.
        tau: temperature.
        dtype: floating dtype (default: JAX's default float).

    Returns:
        ``TabularMDP`` with ``P: [S, A, S]``, uniform ``rho``.

    Raises:
        TypeError: a size that is not an integer, or a non-floating ``dtype``.
        ValueError: a size ``< 1``, ``P`` larger than half the machine's memory,
            or concrete ``gamma``/``tau``/``concentration`` out of range.
    """
    dtype = float_dtype(dtype)
    num_states, num_actions = check_mdp_sizes(num_states, num_actions, dtype)
    check_number(
        "concentration", concentration, 0.0, math.inf, open_low=True, open_high=True
    )
    shape = (num_states, num_actions)
    if isinstance(concentration, int | float) and concentration == 1.0:
        # Dirichlet(1) = normalized i.i.d. Exp(1): the same distribution without the
        # generic gamma rejection sampler's loop.
        P = jax.random.exponential(key, (*shape, num_states), dtype)
    else:
        alpha = jnp.full((num_states,), concentration, dtype)
        P = jax.random.dirichlet(key, alpha, shape=shape, dtype=dtype)
    # Renormalize against round-off (and tiny-concentration underflow).
    P = P / jnp.sum(P, axis=-1, keepdims=True)
    return make_mdp(P, gamma, tau, dtype)


def support_rows(u: Array, support: Array) -> Array:
    """Rows with ``support[...]`` distinct random non-zeros, from given uniforms.

    For every row the support is a uniformly random subset of the given size (the
    states whose i.i.d. uniform keys rank among the ``support`` smallest, i.e. a
    random permutation with its first ``support`` entries kept); the weights on it
    are ``U(0, 1]``, normalized.

    Args:
        u: ``[*batch, 2 * n]`` i.i.d. ``U[0, 1)``: the first ``n`` rank the states,
            the last ``n`` give the weights (``1 - u`` lies in ``(0, 1]``, so every
            selected state has a non-zero weight).
        support: integer array of support sizes, shape ``batch``, in ``1..n``.

    Returns:
        ``[*batch, n]`` rows summing to one.
    """
    n = u.shape[-1] // 2
    # Trailing-axis slices of one draw: one random-bit kernel (XLA compiles a
    # leading-axis split of the draw several times slower on CPU).
    rank = jnp.argsort(u[..., :n], axis=-1).argsort(axis=-1)
    w = jnp.where(rank < support[..., None], 1.0 - u[..., n:], 0.0)
    return w / jnp.sum(w, axis=-1, keepdims=True)


def garnet_mdp(
    key: PRNGKey,
    num_states: int,
    num_actions: int,
    branching: int,
    *,
    gamma: float = 0.9,
    tau: float = 1.0,
    dtype=None,
) -> TabularMDP:
    """Garnet MDP: each ``(s, a)`` reaches exactly ``branching`` random states.

    For every ``(s, a)``, ``branching`` distinct next states are drawn uniformly
    without replacement and given weights ``U(0, 1]``, normalized.

    Args:
        key: PRNG key.
        num_states: ``S``.
        num_actions: ``A``.
        branching: ``b`` in ``1..S`` (static), the number of non-zeros per row.
        gamma: discount factor.
        tau: temperature.
        dtype: floating dtype (default: JAX's default float).

    Returns:
        ``TabularMDP`` with ``P: [S, A, S]``, uniform ``rho``.

    Raises:
        ValueError: ``branching`` outside ``1..S`` (and see :func:`dirichlet_mdp`).

    References:
        Archibald, McKinnon, Thomas, "On the generation of Markov decision
        processes", J. Oper. Res. Soc. 1995; docs/math.md §9.
    """
    dtype = float_dtype(dtype)
    num_states, num_actions = check_mdp_sizes(num_states, num_actions, dtype)
    if check_size("branching", branching) > num_states:
        raise ValueError(
            f"branching: must lie in 1..num_states={num_states}, got {branching!r}"
        )
    support = jnp.full((num_states, num_actions), branching, jnp.int32)
    u = jax.random.uniform(key, (num_states, num_actions, 2 * num_states), dtype)
    P = support_rows(u, support)
    return make_mdp(P, gamma, tau, dtype)


def random_mdp(
    key: PRNGKey,
    num_states: int,
    num_actions: int,
    *,
    branching: int | None = None,
    concentration: float = 1.0,
    gamma: float = 0.9,
    tau: float = 1.0,
    dtype=None,
) -> TabularMDP:
    """A random MDP: Dirichlet rows, or Garnet rows when ``branching`` is given.

    Dispatches to :func:`dirichlet_mdp` (``branching=None``) or :func:`garnet_mdp`.

    Args:
        key: PRNG key.
        num_states: ``S``.
        num_actions: ``A``.
        branching: Garnet branching factor, or ``None`` for Dirichlet rows.
        concentration: Dirichlet parameter (ignored for Garnet).
        gamma: discount factor.
        tau: temperature.
        dtype: floating dtype.

    Returns:
        ``TabularMDP`` with ``P: [S, A, S]``.
    """
    if branching is None:
        return dirichlet_mdp(
            key,
            num_states,
            num_actions,
            concentration=concentration,
            gamma=gamma,
            tau=tau,
            dtype=dtype,
        )
    return garnet_mdp(
        key, num_states, num_actions, branching, gamma=gamma, tau=tau, dtype=dtype
    )


@struct.dataclass
class RewardFeatures:
    """Reward features with a hidden realizable true reward (docs/math.md §9).

    Attributes:
        features: ``[S, A, d]`` features ``phi(s, a)``.
        true_param: ``[d]`` hidden parameter ``x*``.
        true_reward: ``[S, A]`` hidden true reward ``r* = phi x*``.
    """

    features: Array
    true_param: Array
    true_reward: Array


def random_reward_features(
    key: PRNGKey, num_states: int, num_actions: int, dim: int, *, dtype=None
) -> RewardFeatures:
    """Gaussian reward features and a hidden linear true reward.

    ``phi(s, a) ~ N(0, I_d / d)`` i.i.d. (so ``phi^T x`` has variance ``||x||^2 /
    d``), ``x* ~ N(0, I_d)`` and ``r*(s, a) = phi(s, a)^T x*``, so the linear model
    :func:`bilevel_rl.rewards.linear_reward` is well specified; use
    ``jnp.tanh(true_reward)`` for a bounded ground truth.

    Args:
        key: PRNG key.
        num_states: ``S``.
        num_actions: ``A``.
        dim: feature dimension ``d``.
        dtype: floating dtype (default: JAX's default float).

    Returns:
        :class:`RewardFeatures`.
    """
    dtype = float_dtype(dtype)
    check_mdp_sizes(num_states, num_actions, dtype)
    shape = (num_states, num_actions, check_size("dim", dim))
    check_array_size("dim", "the features", shape, dtype)
    n_phi = num_states * num_actions * dim
    z = jax.random.normal(key, (n_phi + dim,), dtype)  # one draw, then split
    phi = z[:n_phi].reshape(num_states, num_actions, dim)
    phi = phi / jnp.sqrt(jnp.asarray(dim, dtype))
    x_star = z[n_phi:]
    return RewardFeatures(
        features=phi,
        true_param=x_star,
        true_reward=jnp.einsum("sad,d->sa", phi, x_star),
    )
