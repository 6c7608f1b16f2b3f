"""Model-based hyper-gradients of ``phi(x) = f(x, pi*_x)`` (docs/math.md §2, §4).

Four computations of the same derivative (the verification triangle of docs/math.md §2):

* ``"closed_form"``: the explicit adjoint formula (``u``, ``z``, ``w``) and one VJP of
  the reward model at cotangent ``w``; no ``custom_vjp``.
* ``"implicit"``: ``jax.grad`` through :func:`bilevel_rl.implicit.soft_optimal_policy`
  (whose ``custom_vjp`` runs the same adjoint).
* ``"unrolled"``: ``jax.grad`` through ``num_unrolled`` soft value-iteration sweeps in
  a ``lax.scan``; error ``O(K gamma^K)``.
* ``"eq24"``: the SoBiRL eq. 24 form with ``U`` and ``w_V``.

Plus the exact tabular Jacobians of Prop. 5.1: :func:`q_value_jacobian` and
:func:`value_jacobian`.

References:
    docs/math.md §2 (adjoint form, SoBiRL eq. 24, verification triangle);
    docs/math.md §4, Prop. 5.1. Yang, Gao, Yuan, "Bilevel Reinforcement Learning
    via the Development of Hyper-gradient without Lower-Level Convexity", AISTATS
    2025, eq. 24.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from bilevel_rl.implicit import (
    DEFAULT_MAX_ITERS,
    DEFAULT_TOL,
    adjoint_weights,
    check_solver_options,
    soft_optimal_policy,
)
from bilevel_rl.mdp import TabularMDP
from bilevel_rl.soft import (
    SoftSolution,
    soft_value_iteration,
    soft_value_iteration_unrolled,
)
from bilevel_rl.types import Array, BoundRewardFn, BoundUpperFn, PyTree

__all__ = [
    "HYPERGRADIENT_METHODS",
    "adjoint_weights",
    "hypergradient",
    "hypergradient_and_solution",
    "hypergradient_at_policy",
    "q_value_jacobian",
    "value_and_hypergradient",
    "value_jacobian",
]

HYPERGRADIENT_METHODS = ("closed_form", "implicit", "unrolled", "eq24")
"""Methods accepted by :func:`hypergradient`."""

DEFAULT_NUM_UNROLLED = 100


def _tree_add(a: PyTree, b: PyTree) -> PyTree:
    return jax.tree.map(jnp.add, a, b)


def _at_solution(upper, reward_fn, x, mdp, tol, max_iters, solver_method):
    """Solves the lower level and differentiates ``f`` at ``(x, pi*_x)``.

    Returns ``f``, ``grad_x f``, ``g = grad_pi f``, the solution (``pi*`` and its
    residual) and the VJP of ``reward_fn`` at ``x`` (taking an ``[S, A]``
    cotangent).
    """
    reward, reward_vjp = jax.vjp(reward_fn, x)
    sol = soft_value_iteration(
        mdp, reward, tol=tol, max_iters=max_iters, method=solver_method
    )
    policy = jax.lax.stop_gradient(sol.policy)
    f, (grad_x, grad_policy) = jax.value_and_grad(upper, argnums=(0, 1))(x, policy)

    def jt(cotangent):
        return reward_vjp(cotangent.astype(reward.dtype))[0]

    return f, grad_x, grad_policy, sol._replace(policy=policy), jt


def hypergradient_at_policy(
    upper: BoundUpperFn,
    reward_fn: BoundRewardFn,
    x: PyTree,
    mdp: TabularMDP,
    policy: Array,
) -> tuple[Array, PyTree]:
    """``(f(x, pi), ∇_x f + J^T w)``: the adjoint formula of docs/math.md §2 at a
    given ``policy`` ``[S, A]`` (``grad phi(x)`` when ``policy = pi*_x``).

    At another policy it is Prop. 5.2's exact expectation (12)+(13) with ``pi`` in
    place of ``pi*`` (docs/math.md §4): the score-function term equals
    ``(1/tau) sum_{s,a} pi (g - <pi, g>) (dQ^pi - dV^pi)`` with ``g = ∇_pi f``.
    """
    reward, reward_vjp = jax.vjp(reward_fn, x)
    f, (grad_x, grad_pi) = jax.value_and_grad(upper, argnums=(0, 1))(x, policy)
    w = adjoint_weights(mdp, policy, grad_pi)
    return f, _tree_add(grad_x, reward_vjp(w.astype(reward.dtype))[0])


def hypergradient_and_solution(
    upper: BoundUpperFn,
    reward_fn: BoundRewardFn,
    x: PyTree,
    mdp: TabularMDP,
    *,
    tol: float = DEFAULT_TOL,
    max_iters: int = DEFAULT_MAX_ITERS,
    solver_method: str = "auto",
    adjoint: str = "auto",
) -> tuple[Array, PyTree, SoftSolution]:
    """``(phi(x), grad phi(x), solution)`` by the closed form of docs/math.md §2.

    As :func:`value_and_hypergradient` with ``method="closed_form"``, and also the
    follower's :class:`~bilevel_rl.soft.SoftSolution` (policy, residual, ...).
    """
    f, grad_x, grad_policy, sol, jt = _at_solution(
        upper, reward_fn, x, mdp, tol, max_iters, solver_method
    )
    w = adjoint_weights(
        mdp, sol.policy, grad_policy, adjoint=adjoint, tol=tol, max_iters=max_iters
    )
    return f, _tree_add(grad_x, jt(w)), sol


def _closed_form(upper, reward_fn, x, mdp, tol, max_iters, solver_method, adjoint):
    f, grad, _ = hypergradient_and_solution(
        upper, reward_fn, x, mdp, tol=tol, max_iters=max_iters,
        solver_method=solver_method, adjoint=adjoint,
    )  # fmt: skip
    return f, grad


def _eq24(upper, reward_fn, x, mdp, tol, max_iters, solver_method):
    """SoBiRL eq. 24, written with the explicit ``U`` matrix and a dense solve."""
    f, grad_x, grad_policy, sol, jt = _at_solution(
        upper, reward_fn, x, mdp, tol, max_iters, solver_method
    )
    policy = sol.policy
    S, A = policy.shape
    eye = jnp.eye(S, dtype=policy.dtype)
    # U[(s, a), s'] = 1{s = s'} - gamma P(s'|s, a)
    U = (jnp.broadcast_to(eye[:, None, :], (S, A, S)) - mdp.gamma * mdp.P).reshape(
        S * A, S
    )
    P_pi = jnp.einsum("sa,sat->st", policy, mdp.P)
    pi_g = policy * grad_policy
    w_v = jnp.linalg.solve((eye - mdp.gamma * P_pi).T, U.T @ pi_g.reshape(-1))
    # (1/tau) J^T (pi * g) - (1/tau) (Lambda_pi J)^T w_V = J^T [pi (g - w_V) / tau]
    return f, _tree_add(grad_x, jt((pi_g - policy * w_v[:, None]) / mdp.tau))


def value_and_hypergradient(
    upper: BoundUpperFn,
    reward_fn: BoundRewardFn,
    x: PyTree,
    mdp: TabularMDP,
    *,
    method: str = "closed_form",
    num_unrolled: int = DEFAULT_NUM_UNROLLED,
    tol: float = DEFAULT_TOL,
    max_iters: int = DEFAULT_MAX_ITERS,
    solver_method: str = "auto",
    adjoint: str = "auto",
) -> tuple[Array, PyTree]:
    """Upper value ``phi(x) = f(x, pi*_x)`` and its hyper-gradient ``grad phi(x)``.

    For ``"unrolled"`` the value is ``f(x, pi_K)`` with the unrolled policy. See
    :func:`hypergradient` for the arguments.

    Returns:
        ``(phi, grad)``: a scalar and a pytree like ``x``.
    """
    if method not in HYPERGRADIENT_METHODS:
        raise ValueError(
            f"method: must be one of {HYPERGRADIENT_METHODS}, got {method!r}"
        )
    check_solver_options(tol, max_iters, solver_method, adjoint, "solver_method")
    if int(num_unrolled) < 0:
        raise ValueError(f"num_unrolled: must be >= 0, got {num_unrolled!r}")

    if method == "closed_form":
        return _closed_form(
            upper, reward_fn, x, mdp, tol, max_iters, solver_method, adjoint
        )
    if method == "eq24":
        return _eq24(upper, reward_fn, x, mdp, tol, max_iters, solver_method)
    if method == "implicit":

        def phi(x):
            policy = soft_optimal_policy(
                mdp,
                reward_fn(x),
                tol=tol,
                max_iters=max_iters,
                method=solver_method,
                adjoint=adjoint,
            )
            return upper(x, policy)

    else:

        def phi(x):
            sol = soft_value_iteration_unrolled(mdp, reward_fn(x), int(num_unrolled))
            return upper(x, sol.policy)

    return jax.value_and_grad(phi)(x)


def hypergradient(
    upper: BoundUpperFn,
    reward_fn: BoundRewardFn,
    x: PyTree,
    mdp: TabularMDP,
    *,
    method: str = "closed_form",
    num_unrolled: int = DEFAULT_NUM_UNROLLED,
    tol: float = DEFAULT_TOL,
    max_iters: int = DEFAULT_MAX_ITERS,
    solver_method: str = "auto",
    adjoint: str = "auto",
) -> PyTree:
    """Hyper-gradient ``grad phi(x)`` of ``phi(x) = upper(x, pi*_x)``.

    ``pi*_x`` is the soft-optimal (entropy- or KL-regularized) policy of ``mdp``
    with reward ``reward_fn(x)``. With ``g = grad_pi f``, ``J = dr_x/dx``:

        u = (1/tau) pi (g - sum_a pi g),  z = (I - gamma P_pi^T)^{-1} P^T u,
        w = u + gamma pi z,               grad phi = grad_x f + J^T w.

    Works on one MDP; wrap in ``jax.jit`` / ``jax.vmap`` (over ``x`` and/or
    ``mdp``) for batches.

    Args:
        upper: ``upper(x, policy) -> []`` upper objective ``f``; ``policy: [S, A]``.
        reward_fn: ``reward_fn(x) -> [S, A]`` reward model.
        x: leader variable, any pytree of float arrays.
        mdp: a single MDP (``P: [S, A, S]``).
        method: ``"closed_form"`` (adjoint formula, one VJP of ``reward_fn``),
            ``"implicit"`` (``jax.grad`` through the ``custom_vjp`` solver),
            ``"unrolled"`` (``jax.grad`` through ``num_unrolled`` scanned sweeps
            from ``v = 0``) or ``"eq24"`` (SoBiRL eq. 24).
        num_unrolled: sweeps ``K`` of the unrolled method; static.
        tol: solver tolerance on ``||T(v) - v||_inf``; static.
        max_iters: cap on solver (and iterative-adjoint) iterations; static.
        solver_method: ``"auto"``, ``"value_iteration"`` or ``"policy_iteration"``;
            static.
        adjoint: ``"auto"``, ``"dense"`` or ``"iterative"`` adjoint solve
            (closed form and implicit); static.

    Returns:
        A pytree like ``x``.

    Raises:
        ValueError: unknown ``method``, ``solver_method`` or ``adjoint``,
            ``num_unrolled < 0``, ``tol < 0`` or ``max_iters < 1``.

    References:
        docs/math.md §2 (closed form, eq. 24, verification triangle); SoBiRL (Yang et
        al., AISTATS 2025) eq. 24.
    """
    return value_and_hypergradient(
        upper,
        reward_fn,
        x,
        mdp,
        method=method,
        num_unrolled=num_unrolled,
        tol=tol,
        max_iters=max_iters,
        solver_method=solver_method,
        adjoint=adjoint,
    )[1]


# ------------------------------------------------------------- Prop. 5.1 Jacobians


def _value_jacobians(
    mdp: TabularMDP, reward_fn: BoundRewardFn, x: PyTree, policy: Array
):
    flat_x, unravel = ravel_pytree(x)
    S, A = policy.shape
    # Jacobian J: [S, A, N]; forward mode when there are fewer parameters than
    # outputs.
    jac = jax.jacfwd if flat_x.size <= S * A else jax.jacrev
    J = jac(lambda flat: reward_fn(unravel(flat)))(flat_x)
    J = J.astype(jnp.result_type(J.dtype, mdp.P.dtype))
    P_pi = jnp.einsum("sa,sat->st", policy, mdp.P)
    eye = jnp.eye(S, dtype=P_pi.dtype)
    dV = jnp.linalg.solve(eye - mdp.gamma * P_pi, jnp.einsum("sa,san->sn", policy, J))
    dQ = J + mdp.gamma * jnp.einsum("sat,tn->san", mdp.P, dV)
    return jax.vmap(jax.vmap(unravel))(dQ), jax.vmap(unravel)(dV)


def q_value_jacobian(
    mdp: TabularMDP, reward_fn: BoundRewardFn, x: PyTree, policy: Array
) -> PyTree:
    """Exact ``dQ*/dx = (I - gamma P Pi)^{-1} J`` of the soft-optimal Q-values.

    Computed in V-space by one ``S x S`` solve:
    ``dV* = (I - gamma P_pi)^{-1} Lambda_pi J``, ``dQ* = J + gamma P dV*``, with
    ``J = dr_x/dx`` from ``jax.jacfwd``/``jax.jacrev`` of ``reward_fn``. Valid in the
    KL-regularized case too.

    Args:
        mdp: a single MDP (``P: [S, A, S]``).
        reward_fn: ``reward_fn(x) -> [S, A]``.
        x: leader variable, a pytree of float arrays.
        policy: ``[S, A]`` the soft-optimal policy ``pi*_x`` (the formula is exact
            only there).

    Returns:
        A pytree like ``x`` whose leaves have shape ``[S, A, *leaf.shape]``.

    References:
        docs/math.md §4, Prop. 5.1 (tabular case); docs/math.md §2.
    """
    return _value_jacobians(mdp, reward_fn, x, policy)[0]


def value_jacobian(
    mdp: TabularMDP, reward_fn: BoundRewardFn, x: PyTree, policy: Array
) -> PyTree:
    """Exact ``dV*/dx = sum_a pi*(a|.) dQ*(., a)/dx``; leaves ``[S, *leaf.shape]``.

    Arguments as in :func:`q_value_jacobian`.

    References:
        docs/math.md §4, Prop. 5.1.
    """
    return _value_jacobians(mdp, reward_fn, x, policy)[1]
