"""The SoBiRL synthetic problem (docs/math.md §3), exactly as in the authors' code.

``S = 10``, ``A = 5``, ``x in R^100``, ``gamma = 0.5``, ``tau = 1``;
``r_x(s, a) = c[s, a] * x^T M x`` and ``f(x, pi) = 0.5 ||x||^2 + 0.5 ||pi||_F^2``,
with global optimum ``S / (2 A) = 1.0`` at ``x = 0``.

The initial adjoint ``w0 ~ N(0, I_S)`` of M-SoBiRL (Algorithm 2) is part of the
problem data (:attr:`SoBiRLData.w0`), so one key fixes the whole instance and a
batch of instances is ``jax.vmap(sobirl_synthetic)(keys)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from bilevel_rl.objectives import sobirl_quadratic
from bilevel_rl.problem import BilevelProblem
from bilevel_rl.rewards import quadratic_form_reward
from bilevel_rl.suites.checks import check_array_size, check_size
from bilevel_rl.suites.random_mdps import (
    check_mdp_sizes,
    float_dtype,
    make_mdp,
    support_rows,
)
from bilevel_rl.types import Array, PRNGKey

__all__ = [
    "SoBiRLData",
    "sobirl_synthetic",
    "sobirl_synthetic_from_arrays",
    "sobirl_transitions",
]


@struct.dataclass
class SoBiRLData:
    """Data of the SoBiRL synthetic problem.

    Attributes:
        M: ``[d, d]`` symmetric part ``(M0 + M0^T) / 2`` of the drawn matrix ``M0``
            (``N(0, 1)`` entries, not symmetric); ``x^T M x = x^T M0 x``.
        c: ``[S, A]`` reward scales ``u1 * u2``, ``u1, u2 ~ U(0, 1)``.
        w0: ``[S]`` initial adjoint estimate of M-SoBiRL (``N(0, I_S)``).
    """

    M: Array
    c: Array
    w0: Array


def sobirl_transitions(
    key: PRNGKey, num_states: int, num_actions: int, *, dtype=None
) -> Array:
    """The SoBiRL transition recipe (docs/math.md §3).

    For each ``(s, a)``: a support size ``k`` uniform in ``{1, ..., S - 1}``, ``k``
    next states drawn without replacement (a random permutation, first ``k``
    kept), weights ``U(0, 1)`` normalized.

    Args:
        key: PRNG key.
        num_states: ``S >= 2``.
        num_actions: ``A``.
        dtype: floating dtype (default: JAX's default float).

    Returns:
        ``[S, A, S]`` transition probabilities.

    Raises:
        ValueError: ``num_states < 2``.
    """
    if num_states < 2:
        raise ValueError(f"num_states: must be >= 2, got {num_states!r}")
    S = num_states
    u = jax.random.uniform(key, (S, num_actions, 2 * S + 1), float_dtype(dtype))
    # k = 1 + floor(u * (S - 1)) is uniform on {1, ..., S - 1} (u < 1).
    support = 1 + jnp.floor(u[..., -1] * (S - 1)).astype(jnp.int32)
    support = jnp.clip(support, 1, S - 1)
    return support_rows(u[..., :-1], support)


def sobirl_synthetic_from_arrays(
    P: Array,
    M: Array,
    c: Array,
    x0: Array,
    *,
    w0: Array | None = None,
    gamma: float = 0.5,
    tau: float = 1.0,
    dtype=None,
) -> BilevelProblem:
    """The SoBiRL synthetic problem from given arrays (e.g. fixed test data).

    Args:
        P: ``[S, A, S]`` transitions.
        M: ``[d, d]`` quadratic-form matrix.
        c: ``[S, A]`` reward scales.
        x0: ``[d]`` initial leader variable.
        w0: ``[S]`` initial adjoint; zeros when ``None``.
        gamma: discount factor.
        tau: temperature.
        dtype: floating dtype (default: JAX's default float).

    Returns:
        ``BilevelProblem`` with ``data`` a :class:`SoBiRLData`, ``reward_fn =``
        :func:`bilevel_rl.rewards.quadratic_form_reward`, ``upper =``
        :func:`bilevel_rl.objectives.sobirl_quadratic` and ``optimum = S / (2 A)``.
    """
    dtype = float_dtype(dtype)
    S, A = P.shape[0], P.shape[1]
    if w0 is None:
        w0 = jnp.zeros((S,), dtype)
    M = jnp.asarray(M, dtype)
    data = SoBiRLData(
        M=0.5 * (M + M.T), c=jnp.asarray(c, dtype), w0=jnp.asarray(w0, dtype)
    )
    return BilevelProblem(
        mdp=make_mdp(P, gamma, tau, dtype),
        data=data,
        x0=jnp.asarray(x0, dtype),
        reward_fn=quadratic_form_reward,
        upper=sobirl_quadratic,
        optimum=jnp.asarray(S / (2 * A), dtype),
    )


def sobirl_synthetic(
    key: PRNGKey,
    *,
    num_states: int = 10,
    num_actions: int = 5,
    dim: int = 100,
    gamma: float = 0.5,
    tau: float = 1.0,
    dtype=None,
) -> BilevelProblem:
    """The SoBiRL paper's synthetic bilevel problem (docs/math.md §3).

    ``P`` from :func:`sobirl_transitions`; ``M ~ N(0, 1)^{d x d}``;
    ``c = u1 * u2`` with ``u1, u2 ~ U(0, 1)`` per ``(s, a)``; ``x0 ~ N(0, I_d)``;
    ``w0 ~ N(0, I_S)`` (stored in ``data.w0``); uniform ``rho``.
    ``reward_fn(data, x) = c * (x^T M x)``,
    ``upper(data, x, pi) = 0.5 ||x||^2 + 0.5 ||pi||_F^2``, ``optimum = S / (2 A)``
    (``1.0`` for the defaults).

    Args:
        key: PRNG key.
        num_states: ``S >= 2``.
        num_actions: ``A``.
        dim: ``d``, dimension of ``x``.
        gamma: discount factor.
        tau: temperature (the authors' ``--tau`` flag is unused; ``tau = 1``).
        dtype: floating dtype (default: JAX's default float).

    Returns:
        ``BilevelProblem`` (see :func:`sobirl_synthetic_from_arrays`).

    References:
        Yang, Gao, Yuan, "Bilevel Reinforcement Learning via the Development of
        Hyper-gradient without Lower-Level Convexity", AISTATS 2025, Section 7 and
        the authors' code; docs/math.md §3.
    """
    dtype = float_dtype(dtype)
    if check_mdp_sizes(num_states, num_actions, dtype)[0] < 2:
        raise ValueError(f"num_states: must be >= 2, got {num_states}")
    check_array_size("dim", "M", (check_size("dim", dim),) * 2, dtype)
    k_P, k_u, k_z = jax.random.split(key, 3)
    P = sobirl_transitions(k_P, num_states, num_actions, dtype=dtype)
    # All Gaussians in one draw and both uniforms in another (independent entries
    # either way; fewer random-bit kernels to compile).
    u = jax.random.uniform(k_u, (num_states, num_actions, 2), dtype)
    z = jax.random.normal(k_z, (dim * dim + dim + num_states,), dtype)
    M = z[: dim * dim].reshape(dim, dim)
    x0 = z[dim * dim : dim * dim + dim]
    w0 = z[dim * dim + dim :]
    return sobirl_synthetic_from_arrays(
        P, M, u[..., 0] * u[..., 1], x0, w0=w0, gamma=gamma, tau=tau, dtype=dtype
    )
