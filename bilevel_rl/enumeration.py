"""Exact expectations over trajectory tuples, by enumerating every tuple.

For small ``S A``, ``H`` and ``m`` every tuple of ``m`` ``H``-step trajectories can be
listed with its probability, which makes ``f(x, pi) = E_{xi ~ rho(pi)}[l(xi; x)]``
(docs/math.md §4) an exact, differentiable function of ``x`` and ``pi``: the
reference the sampled estimators of :mod:`bilevel_rl.estimators` are checked
against, and the exact upper objective of the tabular RLHF suite.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from bilevel_rl.mdp import TabularMDP
from bilevel_rl.sampling import Trajectories
from bilevel_rl.types import Array, PyTree

__all__ = [
    "MAX_ENUMERATED_TUPLES",
    "check_count",
    "check_mdps",
    "enumerate_tuples",
    "expected_trajectory_loss",
]

MAX_ENUMERATED_TUPLES = 2**21
"""Largest number ``(S A)^(H m)`` of tuples :func:`enumerate_tuples` accepts."""


def check_count(name: str, value) -> int:
    """``value`` as a static Python ``int >= 1`` (a size), else ``ValueError``."""
    is_int = isinstance(value, int | np.integer) and not isinstance(value, bool)
    if not is_int or value < 1:
        raise ValueError(f"{name}: must be a static Python int >= 1, got {value!r}")
    return int(value)


def check_mdps(mdp: TabularMDP, upper_mdp: TabularMDP | None, policy) -> TabularMDP:
    """The MDP that generates the trajectories (``upper_mdp``, default ``mdp``),
    after checking that ``policy`` and ``upper_mdp`` fit ``mdp``."""
    shape = mdp.P.shape[-3:-1]
    if policy is not None and jnp.shape(policy) != shape:
        raise ValueError(f"policy: expected shape {shape}, got {jnp.shape(policy)}")
    if upper_mdp is not None and upper_mdp.P.shape != mdp.P.shape:
        raise ValueError(
            f"upper_mdp: P must have the shape of mdp.P {mdp.P.shape}, "
            f"got {upper_mdp.P.shape}"
        )
    return mdp if upper_mdp is None else upper_mdp


def enumerate_tuples(
    mdp: TabularMDP, policy: Array, *, horizon: int, num_trajectories: int = 1
) -> tuple[Trajectories, Array]:
    """Every tuple of ``m`` ``H``-step trajectories with its probability.

    ``p(s_0, a_0, .., a_{H-1}) = rho(s_0) prod_t pi(a_t|s_t) prod_{t<H-1}
    P(s_{t+1}|s_t, a_t)`` (``s_H`` is marginalized out: ``final_states`` is 0); a
    tuple's is the product over its ``m`` trajectories. Polynomials in ``policy``,
    ``mdp.P``, ``mdp.rho``: differentiable.

    Args:
        mdp: the MDP generating the trajectories (``M_u``).
        policy: ``[S, A]``.
        horizon, num_trajectories: ``H`` and ``m`` (static).

    Returns:
        ``(tuples, probs)``: :class:`~bilevel_rl.sampling.Trajectories` with fields
        ``[N, m, H]`` (``final_states: [N, m]``) and ``probs: [N]`` summing to one,
        ``N = (S A)^(H m)``.

    Raises:
        ValueError: a size not an int ``>= 1``, or ``N > MAX_ENUMERATED_TUPLES``.
    """
    horizon = check_count("horizon", horizon)
    m = check_count("num_trajectories", num_trajectories)
    check_mdps(mdp, None, policy)
    S, A = mdp.P.shape[-3:-1]
    if (S * A) ** (horizon * m) > MAX_ENUMERATED_TUPLES:
        raise ValueError(
            f"horizon: enumerating (S A)^(H m) = {S * A}^{horizon * m} tuples "
            f"exceeds MAX_ENUMERATED_TUPLES = {MAX_ENUMERATED_TUPLES}"
        )
    pairs = np.array(list(itertools.product(range(S * A), repeat=horizon)))
    s1, a1 = (pairs // A).astype(np.int32), (pairs % A).astype(np.int32)  # [n1, H]
    prob1 = mdp.rho[s1[:, 0]] * jnp.prod(policy[s1, a1], axis=-1)
    prob1 = prob1 * jnp.prod(mdp.P[s1[:, :-1], a1[:, :-1], s1[:, 1:]], axis=-1)
    index = np.array(list(itertools.product(range(len(pairs)), repeat=m)))  # [N, m]
    states, actions = jnp.asarray(s1[index]), jnp.asarray(a1[index])
    log_probs = jnp.log(policy[states, actions])
    trajs = Trajectories(states, actions, log_probs, jnp.zeros(index.shape, jnp.int32))
    return trajs, jnp.prod(prob1[index], axis=-1)


def expected_trajectory_loss(
    loss,
    x: PyTree,
    policy: Array,
    mdp: TabularMDP,
    *,
    horizon: int,
    num_trajectories: int = 1,
) -> Array:
    """Exact ``f(x, pi) = E_{xi ~ rho(pi; M_u)}[l(xi; x)]`` by enumeration.

    Differentiable in ``x`` and ``policy`` (a polynomial in the policy's entries),
    so ``hypergradient(lambda x, pi: expected_trajectory_loss(loss, x, pi, ...),
    reward_fn, x, mdp)`` is the model-based reference for Prop. 5.2.

    Args:
        loss: ``loss(x, trajs) -> []`` with ``trajs`` fields ``[m, H]``.
        x: leader variable (pytree).
        policy, mdp, horizon, num_trajectories: as in :func:`enumerate_tuples`.

    Returns:
        ``[]``. Raises ``ValueError`` as :func:`enumerate_tuples`.
    """
    m = num_trajectories
    tuples, probs = enumerate_tuples(mdp, policy, horizon=horizon, num_trajectories=m)
    return jnp.sum(probs * jax.vmap(loss, in_axes=(None, 0))(x, tuples))
