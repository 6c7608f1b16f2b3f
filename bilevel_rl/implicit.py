"""The differentiable soft solver: implicit differentiation by the adjoint.

The adjoint is that of docs/math.md §2.

:func:`soft_optimal_solution` runs the tolerance-based solver of
:func:`bilevel_rl.soft.soft_value_iteration` (a ``lax.while_loop``, which reverse
mode cannot differentiate) behind a ``jax.custom_vjp`` whose backward pass is the
adjoint of the fixed point ``Q* = r + gamma P V*(Q*)``. One adjoint solve,

    w = (I - gamma P Pi)^{-T} u,    u = d(loss)/dQ* (through q, v and policy),

gives every cotangent: ``reward -> w``, ``P[s, a, s'] -> gamma w(s, a) V*(s')``,
``gamma -> sum_{s,a} w(s, a) (P V*)(s, a)``, and ``tau`` / ``ref_policy`` through the
soft maximum and the softmax at fixed ``Q*`` (``dV*(s)/dtau = -KL(pi*(.|s) || pi0)``,
``dV*(s)/dpi0(a|s) = tau pi*(a|s) / pi0(a|s)``, policy logits ``Q*/tau + log pi0``),
both for the direct read-out of ``v``/``policy`` and inside the fixed-point map.
The ``gamma``/``tau``/``pi0`` terms are not spelled out in docs/math.md; they are taken
by ``jax.vjp`` of the explicit one-step map at ``Q*`` and checked against unrolled
differentiation and finite differences (tests/test_hypergrad.py). The
``S A x S A`` system is solved in V-space as an ``S x S`` one
(:func:`adjoint_weights`, the single implementation of the adjoint, shared with the
closed-form hyper-gradient of :mod:`bilevel_rl.hypergrad`).

References:
    docs/math.md §2 (closed-form adjoint hyper-gradient).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from bilevel_rl.mdp import TabularMDP
from bilevel_rl.soft import (
    METHODS,
    ROUNDOFF_FACTOR,
    SoftSolution,
    check_inputs,
    soft_max,
    soft_policy,
    soft_q,
    soft_value_iteration,
)
from bilevel_rl.types import Array

ADJOINTS = ("auto", "dense", "iterative")
"""Adjoint solvers: ``"dense"`` (``S x S`` LU solve), ``"iterative"`` (matrix-free
transposed sweeps ``z <- b + gamma P_pi^T z`` in a ``while_loop``, with the slow
constant mode deflated), ``"auto"`` (see :data:`DENSE_ADJOINT_MAX_STATES`)."""

DENSE_ADJOINT_MAX_STATES = 2048
"""``adjoint="auto"`` uses the dense solve for ``S <= DENSE_ADJOINT_MAX_STATES``.

The dense solve is exact, costs ``O(S^3)`` and does not depend on how fast the
MDP mixes. The iterative solve costs ``O(k S^2)`` with ``k`` transposed sweeps:
few on fast-mixing MDPs (random, Garnet) but up to ``log(tol) / log(gamma)`` on
slow-mixing ones (rings, ``gamma`` near 1), and at most about ``1 / A`` of a
value-iteration forward pass. Up to this size the dense solve costs less than the
iterative one on slow-mixing MDPs; beyond it its cubic cost dominates the forward
solve (both measured by ``benchmarks/hypergrad.py``: ``adjoint_only_dense`` and
``adjoint_only_iterative`` in ``benchmarks/results/hypergrad.json``). Pass
``adjoint="iterative"`` explicitly for large fast-mixing MDPs.
"""

DEFAULT_TOL = 1e-10
DEFAULT_MAX_ITERS = 10_000


def check_solver_options(
    tol: float, max_iters: int, method: str, adjoint: str, method_name: str = "method"
):
    """Validates the static solver options at the API boundary.

    Args:
        tol: solver tolerance.
        max_iters: iteration cap.
        method: forward solver, ``"auto"`` or one of :data:`bilevel_rl.soft.METHODS`.
        adjoint: one of :data:`ADJOINTS`.
        method_name: the caller's name for ``method`` (used in the message).

    Raises:
        ValueError: unknown ``method`` or ``adjoint``, negative ``tol`` or
            ``max_iters < 1``; the message names the argument.
    """
    if method != "auto" and method not in METHODS:
        raise ValueError(
            f"{method_name}: must be 'auto' or one of {METHODS}, got {method!r}"
        )
    if adjoint not in ADJOINTS:
        raise ValueError(f"adjoint: must be one of {ADJOINTS}, got {adjoint!r}")
    if not tol >= 0:
        raise ValueError(f"tol: must be >= 0, got {tol!r}")
    if int(max_iters) < 1:
        raise ValueError(f"max_iters: must be >= 1, got {max_iters!r}")


def _resolve_adjoint(adjoint: str, num_states: int) -> str:
    if adjoint == "auto":
        return "dense" if num_states <= DENSE_ADJOINT_MAX_STATES else "iterative"
    return adjoint


def _solve_state_adjoint(
    mdp: TabularMDP, policy: Array, b: Array, adjoint: str, tol: float, max_iters: int
) -> Array:
    """``z = (I - gamma P_pi^T)^{-1} b`` for ``b: [S]``; returns ``[S]``."""
    P_pi = jnp.einsum("sa,sat->st", policy, mdp.P)
    if _resolve_adjoint(adjoint, mdp.num_states) == "dense":
        eye = jnp.eye(mdp.num_states, dtype=P_pi.dtype)
        return jnp.linalg.solve((eye - mdp.gamma * P_pi).T, b)

    # Fixed-point iteration of the transposed sweep z <- b + gamma P_pi^T z (a
    # gamma-contraction in the 1-norm). P_pi^T preserves sums, so sum(z*) =
    # sum(b) / (1 - gamma) is known; the slow mode along the stationary distribution
    # mu of P_pi is removed by tracking mu by power iteration alongside (same
    # matrix pass) and reading out z + (sum(z*) - sum(z)) mu. The error then decays
    # like (gamma |lambda_2|)^k instead of gamma^k (lambda_2: the second eigenvalue
    # of P_pi), and never slower than gamma^k.
    eps = jnp.finfo(b.dtype).eps
    rel = jnp.maximum(tol * (1.0 - mdp.gamma), ROUNDOFF_FACTOR * eps)
    total = jnp.sum(b) / (1.0 - mdp.gamma)

    # zm: [2, S] rows (z, mu); z P_pi as a row product avoids transposing P_pi.
    def readout(zm):
        return zm[0] + (total - jnp.sum(zm[0])) * zm[1]

    def cond(carry):
        _, z_hat, change, it = carry
        return (change > rel * jnp.max(jnp.abs(z_hat))) & (it < max_iters)

    def body(carry):
        zm, z_hat, _, it = carry
        zm = zm @ P_pi
        zm = zm.at[0].set(b + mdp.gamma * zm[0])
        z_new = readout(zm)
        return zm, z_new, jnp.max(jnp.abs(z_new - z_hat)), it + 1

    zm0 = jnp.stack([b, jnp.full_like(b, 1.0 / b.shape[0])])
    inf = jnp.asarray(jnp.inf, b.dtype)
    init = (zm0, readout(zm0), inf, jnp.asarray(0, jnp.int32))
    return jax.lax.while_loop(cond, body, init)[1]


def adjoint_weights(
    mdp: TabularMDP,
    policy: Array,
    grad_policy: Array,
    *,
    grad_q: Array | None = None,
    grad_v: Array | None = None,
    adjoint: str = "auto",
    tol: float = DEFAULT_TOL,
    max_iters: int = DEFAULT_MAX_ITERS,
) -> Array:
    """Adjoint ``w = (I - gamma P Pi)^{-T} u`` of the soft fixed point.

    ``u = dL/dQ*`` collects the cotangents of the solution's outputs:

        u(s, a) = (1/tau) pi(a|s) [g(s, a) - sum_a' pi(a'|s) g(s, a')]   (policy)
                  + grad_q(s, a) + pi(a|s) grad_v(s)                      (q, v)
        z = (I - gamma P_pi^T)^{-1} sum_{s,a} P(.|s, a) u(s, a)           [S]
        w(s, a) = u(s, a) + gamma pi(a|s) z(s)                            [S, A]

    Then ``dL/dreward = w`` and ``dL/dP[s, a, s'] = gamma w(s, a) V*(s')``; for a
    reward model ``r_x`` the hyper-gradient is ``grad_x f + J^T w``. The same
    formulas hold in the KL-regularized case (``log pi0`` inside the softmax).

    Args:
        mdp: a single MDP (``P: [S, A, S]``).
        policy: ``[S, A]`` the soft-optimal policy ``pi*`` of ``mdp``.
        grad_policy: ``[S, A]`` cotangent ``g`` of the policy.
        grad_q: optional ``[S, A]`` cotangent of ``Q*``.
        grad_v: optional ``[S]`` cotangent of ``V*``.
        adjoint: ``"dense"``, ``"iterative"`` or ``"auto"`` (dense for
            ``S <= DENSE_ADJOINT_MAX_STATES``); static.
        tol: relative tolerance of the iterative adjoint; static.
        max_iters: cap on iterative-adjoint sweeps; static.

    Returns:
        ``[S, A]`` adjoint weights ``w``.

    Raises:
        ValueError: unknown ``adjoint``.

    References:
        docs/math.md §2, "Closed-form hyper-gradient (the adjoint form)".
    """
    if adjoint not in ADJOINTS:
        raise ValueError(f"adjoint: must be one of {ADJOINTS}, got {adjoint!r}")
    check_inputs(mdp, policy=policy, q=grad_policy, v=grad_v)
    centered = grad_policy - jnp.sum(policy * grad_policy, axis=-1, keepdims=True)
    u = policy * centered / mdp.tau
    if grad_q is not None:
        u = u + grad_q
    if grad_v is not None:
        u = u + policy * grad_v[:, None]
    S, A = policy.shape
    # b = sum_{s,a} P(.|s,a) u(s,a) as a row-vector product with the [S*A, S]
    # view of P (an einsum here made XLA:CPU copy a transpose of P first).
    b = u.reshape(S * A) @ mdp.P.reshape(S * A, S)
    z = _solve_state_adjoint(mdp, policy, b, adjoint, tol, max_iters)
    return u + mdp.gamma * policy * z[:, None]


# ------------------------------------------------------------------ the custom_vjp


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _solve(tol, max_iters, method, adjoint, mdp, reward):
    return soft_value_iteration(
        mdp, reward, tol=tol, max_iters=max_iters, method=method
    )


def _solve_fwd(tol, max_iters, method, adjoint, mdp, reward):
    sol = _solve(tol, max_iters, method, adjoint, mdp, reward)
    return sol, (mdp, reward, sol.q, sol.policy)


def _solve_bwd(tol, max_iters, method, adjoint, res, cot):
    mdp, reward, q, policy = res
    # Direct read-out: v = softmax-value(q), policy = softmax(q) also depend on tau
    # and pi0 at fixed q (their q-dependence goes into u in adjoint_weights).
    _, readout_vjp = jax.vjp(lambda m: (soft_max(m, q), soft_policy(m, q)), mdp)
    (mdp_bar_direct,) = readout_vjp((cot.v, cot.policy))
    w = adjoint_weights(
        mdp,
        policy,
        cot.policy,
        grad_q=cot.q,
        grad_v=cot.v,
        adjoint=adjoint,
        tol=tol,
        max_iters=max_iters,
    )
    # Implicit part: pull w back through the fixed-point map
    # F(mdp, r) = r + gamma P softmax-value(q*) at fixed q* (reward -> w,
    # P -> gamma w V*, gamma -> sum w P V*, tau and pi0 through V*).
    _, fixed_point_vjp = jax.vjp(lambda m, r: soft_q(m, r, soft_max(m, q)), mdp, reward)
    mdp_bar, reward_bar = fixed_point_vjp(w.astype(q.dtype))
    return jax.tree.map(jnp.add, mdp_bar, mdp_bar_direct), reward_bar


_solve.defvjp(_solve_fwd, _solve_bwd)


def soft_optimal_solution(
    mdp: TabularMDP,
    reward: Array,
    *,
    tol: float = DEFAULT_TOL,
    max_iters: int = DEFAULT_MAX_ITERS,
    method: str = "auto",
    adjoint: str = "auto",
) -> SoftSolution:
    """Soft-optimal solution, reverse-differentiable by implicit differentiation.

    The forward pass is :func:`bilevel_rl.soft.soft_value_iteration`; the backward
    pass solves one adjoint system (:func:`adjoint_weights`) instead of
    differentiating the iterations, so the gradient is exact at the fixed point and
    costs one ``S x S`` solve. Cotangents may enter through ``q``, ``v`` and
    ``policy``; ``residual`` and ``iterations`` are diagnostics with zero gradient.

    Gradients flow to ``reward`` and to every float field of ``mdp``: ``P``,
    ``gamma``, ``tau`` and ``ref_policy`` (the raw partial derivatives, not
    projected onto the simplex; ``rho`` gets zero). Works under ``jit`` and
    ``vmap``. Reverse mode and first order only (``jax.custom_vjp``: no ``jvp``,
    no Hessians).

    Args:
        mdp: a single MDP (``P: [S, A, S]``); vmap for batches.
        reward: ``[S, A]`` reward.
        tol: forward tolerance on ``||T(v) - v||_inf`` (and relative tolerance of
            the iterative adjoint); static.
        max_iters: cap on forward sweeps / rounds and on adjoint sweeps; static.
        method: forward solver, ``"auto"`` (see
            :func:`bilevel_rl.soft.select_method`), ``"value_iteration"`` or
            ``"policy_iteration"``; static.
        adjoint: ``"auto"``, ``"dense"`` or ``"iterative"`` (see
            :data:`DENSE_ADJOINT_MAX_STATES`); static.

    Returns:
        :class:`bilevel_rl.soft.SoftSolution` (``q: [S, A]``, ``v: [S]``,
        ``policy: [S, A]``, ``residual``, ``iterations``).

    Raises:
        ValueError: unknown ``method`` or ``adjoint``, ``tol < 0``,
            ``max_iters < 1``.

    References:
        docs/math.md §2 (the adjoint ``w``, ``dphi/dP = gamma w V*``, ``dphi/dr = w``).
    """
    check_solver_options(tol, max_iters, method, adjoint)
    reward = jnp.asarray(reward)
    reward = reward.astype(jnp.result_type(mdp.P.dtype, reward.dtype))
    check_inputs(mdp, reward=reward)
    return _solve(float(tol), int(max_iters), method, adjoint, mdp, reward)


def soft_optimal_policy(
    mdp: TabularMDP,
    reward: Array,
    *,
    tol: float = DEFAULT_TOL,
    max_iters: int = DEFAULT_MAX_ITERS,
    method: str = "auto",
    adjoint: str = "auto",
) -> Array:
    """``[S, A]`` soft-optimal policy ``pi*``, differentiable w.r.t. reward and mdp.

    ``jax.grad(lambda x: f(x, soft_optimal_policy(mdp, reward_fn(x))))`` is the
    exact hyper-gradient of docs/math.md §2. Arguments as in
    :func:`soft_optimal_solution`.

    References:
        docs/math.md §2.
    """
    return soft_optimal_solution(
        mdp, reward, tol=tol, max_iters=max_iters, method=method, adjoint=adjoint
    ).policy
