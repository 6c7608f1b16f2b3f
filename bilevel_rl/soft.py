"""Soft (entropy- or KL-regularized) Bellman operators and solvers (docs/math.md §1).

Every function works on ONE MDP and one reward; batches come from ``jax.vmap``
(see :func:`bilevel_rl.solve_batch` for the jitted, chunked batch entry point).

Notation: ``S`` states, ``A`` actions, ``reward: [S, A]``, ``P: [S, A, S]``.
With a reference policy ``pi0`` (``mdp.ref_policy``) the entropy bonus becomes
``-tau KL(pi(.|s) || pi0(.|s))`` and ``log pi0`` is added inside every softmax.
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from bilevel_rl.mdp import TabularMDP
from bilevel_rl.types import Array

METHODS = ("value_iteration", "policy_iteration")
"""Fixed-point solvers accepted by :func:`soft_value_iteration`."""

ROUNDOFF_FACTOR = 4.0
"""The stopping test never asks for less than ``ROUNDOFF_FACTOR * eps * ||v||_inf``.

Below that, successive iterates differ only by floating-point round-off (in float32
that is about ``1e-6 * ||v||``), and a smaller ``tol`` would spin until
``max_iters`` without getting any closer to the fixed point.
"""


class SoftSolution(NamedTuple):
    """Result of a soft fixed-point solve.

    Attributes:
        q: ``[S, A]`` soft Q-values ``r + gamma P v``.
        v: ``[S]`` soft state values.
        policy: ``[S, A]`` soft-greedy policy ``softmax(q / tau (+ log pi0))``.
        residual: ``[]`` Bellman residual ``||T(v) - v||_inf`` of the returned ``v``;
            ``||v - V*||_inf <= residual / (1 - gamma)``.
        iterations: ``[]`` int32 number of sweeps (value iteration) or of
            evaluate/improve rounds (policy iteration) performed.
    """

    q: Array
    v: Array
    policy: Array
    residual: Array
    iterations: Array


# ------------------------------------------------------------------ the operators


def soft_q(mdp: TabularMDP, reward: Array, v: Array) -> Array:
    """One-step look-ahead ``q = r + gamma P v``.

    Args:
        mdp: the MDP (``P: [S, A, S]``).
        reward: ``[S, A]``.
        v: ``[S]`` state values.

    Returns:
        ``[S, A]`` Q-values.
    """
    return reward + mdp.gamma * jnp.einsum("sat,t->sa", mdp.P, v)


def logsumexp(logits: Array, axis: int = -1) -> Array:
    """``log sum exp`` over ``axis``, shifted by the (finite) maximum.

    The same value and gradient (the softmax) as ``jax.nn.logsumexp`` for real
    inputs. The sum is written as a contraction with a constant vector of ones: XLA
    on CPU fuses an ``exp`` that feeds a short reduction into the reduction loop and
    evaluates it one element at a time, while a contraction is not fused, so the
    ``exp`` runs in its own vectorized loop. That pays off on a batch of MDPs; in a
    rolled loop over one MDP the extra kernel costs more than it saves, so M-SoBiRL
    unrolls its sweeps and :func:`soft_value_iteration` keeps the fused form (both
    timed by ``benchmarks/soft_vi_throughput.py`` and ``msobirl_synthetic.py``).

    Args:
        logits: any shape.
        axis: the axis to reduce.

    Returns:
        ``logits`` without ``axis``.
    """
    shift = jnp.max(logits, axis=axis, keepdims=True)
    shift = jax.lax.stop_gradient(jnp.where(jnp.isfinite(shift), shift, 0.0))
    ones = np.ones(logits.shape[axis], logits.dtype)
    total = jnp.tensordot(jnp.exp(logits - shift), ones, axes=(axis, 0))
    return jnp.log(total) + jnp.squeeze(shift, axis)


def _logits(mdp: TabularMDP, q: Array) -> Array:
    logits = q / mdp.tau
    if mdp.ref_policy is not None:
        logits = logits + jnp.log(mdp.ref_policy)
    return logits


def soft_max(mdp: TabularMDP, q: Array) -> Array:
    """Soft maximum ``v(s) = tau log sum_a pi0(a|s) exp(q(s, a) / tau)``.

    Without a reference policy ``pi0`` is dropped (the plain entropy case). Computed
    with ``logsumexp``, so it is finite for any finite ``q`` and ``tau > 0``.

    Args:
        mdp: the MDP (supplies ``tau`` and ``ref_policy``).
        q: ``[S, A]``.

    Returns:
        ``[S]``.
    """
    return mdp.tau * logsumexp(_logits(mdp, q), axis=-1)


def soft_policy(mdp: TabularMDP, q: Array) -> Array:
    """Soft-greedy policy ``pi(a|s) ∝ pi0(a|s) exp(q(s, a) / tau)``; ``[S, A]``."""
    return jax.nn.softmax(_logits(mdp, q), axis=-1)


def soft_bellman_operator(mdp: TabularMDP, reward: Array, v: Array) -> Array:
    """``T(v)(s) = tau logsumexp_a((r + gamma P v)(s, a) / tau)``; ``[S] -> [S]``.

    A ``gamma``-contraction in the sup-norm; its fixed point is ``V*``.
    """
    return soft_max(mdp, soft_q(mdp, reward, v))


def check_inputs(mdp: TabularMDP, **arrays: Array | None) -> None:
    """Entry-point assertions (trace time, free under jit): every given array has
    the shape of its name for this MDP (``reward``, ``policy``, ``q``: ``[S, A]``;
    ``v``, ``init``: ``[S]``) and a floating dtype.

    Raises:
        AssertionError: naming the array, its shape and the expected one.
    """
    chex.assert_rank(mdp.P, 3)
    S, A = mdp.P.shape[:2]
    expected = {"reward": (S, A), "policy": (S, A), "q": (S, A), "v": (S,)}
    expected["init"] = (S,)
    for name, array in arrays.items():
        if array is None:
            continue
        chex.assert_shape(
            array, expected[name], custom_message=f"{name}: expected {expected[name]}"
        )
        chex.assert_type(array, float, custom_message=f"{name}: floating dtype")


def _policy_matrices(mdp: TabularMDP, reward: Array, policy: Array):
    """``P_pi[s, s']``, and the regularized one-step reward ``r_pi - tau h_pi``."""
    P_pi = jnp.einsum("sa,sat->st", policy, mdp.P)
    log_ratio = jnp.log(jnp.where(policy > 0, policy, 1.0))
    if mdp.ref_policy is not None:
        log_ratio = log_ratio - jnp.log(mdp.ref_policy)
    # 0 log 0 = 0: entries with policy == 0 contribute nothing.
    bonus = jnp.sum(policy * (reward - mdp.tau * log_ratio), axis=-1)
    return P_pi, bonus


def soft_policy_evaluation(
    mdp: TabularMDP, reward: Array, policy: Array
) -> tuple[Array, Array]:
    """Exact soft value of a fixed policy by one linear solve.

    ``V^pi = (I - gamma P_pi)^{-1} (r_pi - tau h_pi)`` with
    ``h_pi(s) = sum_a pi(a|s) log(pi(a|s) / pi0(a|s))`` (``pi0`` uniform-free:
    without a reference policy ``h_pi`` is the negative entropy).

    Args:
        mdp: the MDP.
        reward: ``[S, A]``.
        policy: ``[S, A]``, rows are distributions.

    Returns:
        ``(v, q)`` with ``v: [S]`` and ``q: [S, A] = r + gamma P v``.
    """
    check_inputs(mdp, reward=reward, policy=policy)
    P_pi, bonus = _policy_matrices(mdp, reward, policy)
    eye = jnp.eye(mdp.num_states, dtype=P_pi.dtype)
    v = jnp.linalg.solve(eye - mdp.gamma * P_pi, bonus)
    return v, soft_q(mdp, reward, v)


def occupancy_measure(mdp: TabularMDP, policy: Array) -> Array:
    """Normalized discounted state-action occupancy of ``policy`` from ``rho``.

    ``d(s, a) = (1 - gamma) sum_t gamma^t Pr(s_t = s, a_t = a)``, computed as
    ``d_S = (1 - gamma) (I - gamma P_pi^T)^{-1} rho`` and ``d = d_S[:, None] * pi``.

    Args:
        mdp: the MDP (``rho`` is the start distribution).
        policy: ``[S, A]``.

    Returns:
        ``[S, A]``, non-negative, summing to one.
    """
    check_inputs(mdp, policy=policy)
    P_pi = jnp.einsum("sa,sat->st", policy, mdp.P)
    eye = jnp.eye(mdp.num_states, dtype=P_pi.dtype)
    d_s = (1.0 - mdp.gamma) * jnp.linalg.solve((eye - mdp.gamma * P_pi).T, mdp.rho)
    return d_s[:, None] * policy


# --------------------------------------------------------------------- the solvers


def _finish(mdp: TabularMDP, reward: Array, v: Array, iterations: Array):
    q = soft_q(mdp, reward, v)
    residual = jnp.max(jnp.abs(soft_max(mdp, q) - v))
    return SoftSolution(q, v, soft_policy(mdp, q), residual, iterations)


def _prepare(mdp: TabularMDP, reward: Array, init: Array | None):
    """Casts ``reward`` and the warm start ``init`` to the MDP's floating dtype."""
    check_inputs(mdp, reward=jnp.asarray(reward, mdp.P.dtype), init=init)
    dtype = jnp.result_type(mdp.P.dtype, jnp.asarray(reward).dtype)
    reward = jnp.asarray(reward, dtype)
    if init is None:
        return reward, jnp.zeros(mdp.num_states, dtype)
    return reward, jnp.asarray(init, dtype)


def soft_value_iteration(
    mdp: TabularMDP,
    reward: Array,
    *,
    tol: float = 1e-8,
    max_iters: int = 10_000,
    init: Array | None = None,
    method: str = "value_iteration",
) -> SoftSolution:
    """Solves the soft Bellman equation to tolerance ``tol``.

    Both methods reach the same fixed point ``V*``:

    * ``"value_iteration"``: ``v <- T(v)`` until ``||T(v) - v||_inf <= tol``;
      ``O(S^2 A)`` per sweep, linear rate ``gamma``.
    * ``"policy_iteration"``: soft policy iteration (exact evaluation by a dense
      ``S x S`` solve, then ``pi <- softmax(q / tau)``); ``O(S^3)`` per round,
      quadratic local rate, so a handful of rounds even for ``gamma`` near 1.

    The loop is a ``lax.while_loop``: it jits, and under ``jax.vmap`` every instance
    of a batch stops on its own test (finished instances are frozen). The stopping
    test uses ``max(tol, ROUNDOFF_FACTOR * eps * ||v||_inf)`` so that ``float32``
    stops at its round-off floor instead of running to ``max_iters``. Not
    reverse-differentiable (``while_loop``); see
    :func:`soft_value_iteration_unrolled` for the unrolled solver.

    Args:
        mdp: a single MDP.
        reward: ``[S, A]`` reward.
        tol: target sup-norm change between iterates.
        max_iters: cap on sweeps / rounds.
        init: ``[S]`` warm start for ``v`` (zeros if ``None``).
        method: one of :data:`METHODS`.

    Returns:
        :class:`SoftSolution`; ``residual`` is the exact Bellman residual of ``v``.

    Raises:
        ValueError: unknown ``method``, negative ``tol`` or ``max_iters < 1``.
    """
    if method not in METHODS:
        raise ValueError(f"method: must be one of {METHODS}, got {method!r}")
    if not isinstance(tol, jax.core.Tracer) and not tol >= 0:
        raise ValueError(f"tol: must be >= 0, got {tol!r}")
    if int(max_iters) < 1:
        raise ValueError(f"max_iters: must be >= 1, got {max_iters!r}")
    reward, v0 = _prepare(mdp, reward, init)
    eps = jnp.finfo(v0.dtype).eps

    if method == "value_iteration":
        # The sweep T(v) in an [A, S] layout: the logsumexp then reduces over the
        # leading axis (elementwise across S-vectors, SIMD-friendly) instead of a
        # short minor axis. P is transposed once per solve, outside the loop; same
        # fixed point (timed in benchmarks/soft_vi_throughput.py).
        P_ast = jnp.swapaxes(mdp.P, 0, 1)  # [A, S, S]
        reward_t = reward.T  # [A, S]
        shift = 0.0 if mdp.ref_policy is None else jnp.log(mdp.ref_policy).T

        def step(v):
            q_t = reward_t + mdp.gamma * jnp.einsum("ast,t->as", P_ast, v)
            # The fused reduction, not logsumexp's contraction: in this rolled loop
            # the contraction's extra kernel costs more than it saves (see
            # logsumexp).
            return mdp.tau * jax.nn.logsumexp(q_t / mdp.tau + shift, axis=0)

    else:

        def step(v):
            policy = soft_policy(mdp, soft_q(mdp, reward, v))
            return soft_policy_evaluation(mdp, reward, policy)[0]

    def cond(carry):
        v, change, it = carry
        floor = ROUNDOFF_FACTOR * eps * jnp.max(jnp.abs(v))
        # NaN compares False, so a non-finite iterate also stops the loop.
        return (change > jnp.maximum(tol, floor)) & (it < max_iters)

    def body(carry):
        v, _, it = carry
        v_new = step(v)
        return v_new, jnp.max(jnp.abs(v_new - v)), it + 1

    init_carry = (v0, jnp.asarray(jnp.inf, v0.dtype), jnp.asarray(0, jnp.int32))
    v, _, it = jax.lax.while_loop(cond, body, init_carry)
    return _finish(mdp, reward, v, it)


def soft_value_iteration_unrolled(
    mdp: TabularMDP, reward: Array, num_iters: int, *, init: Array | None = None
) -> SoftSolution:
    """Exactly ``num_iters`` soft value-iteration sweeps in a ``lax.scan``.

    Reverse-differentiable with respect to ``reward`` and every field of ``mdp``
    (this is the "unrolled" hyper-gradient); its error decays like
    ``gamma^num_iters``.

    Args:
        mdp: a single MDP.
        reward: ``[S, A]``.
        num_iters: number of sweeps (static).
        init: ``[S]`` warm start (zeros if ``None``).

    Returns:
        :class:`SoftSolution` with ``iterations == num_iters``.
    """
    reward, v0 = _prepare(mdp, reward, init)

    def body(v, _):
        return soft_bellman_operator(mdp, reward, v), None

    v, _ = jax.lax.scan(body, v0, None, length=num_iters)
    return _finish(mdp, reward, v, jnp.asarray(num_iters, jnp.int32))


def policy_mirror_descent_step(
    mdp: TabularMDP, reward: Array, policy: Array, eta: float
) -> Array:
    """One step of entropy-regularized policy mirror descent (PMD).

    ``pi'(a|s) ∝ pi(a|s)^{1/(1 + eta tau)} pi0(a|s)^{eta tau/(1 + eta tau)}
    exp(eta Q^pi(s, a) / (1 + eta tau))`` with ``Q^pi`` the exact soft Q-values of
    ``pi`` (:func:`soft_policy_evaluation`); without a reference policy ``pi0`` is
    dropped. ``eta = inf`` gives ``softmax(Q^pi / tau (+ log pi0))``, one round of
    soft policy iteration. The fixed point is the soft-optimal policy ``pi*``; the
    convergence is linear with rate ``1 - eta tau / (1 + eta tau) (1 - gamma)`` or
    better.

    This is the inner rule of SoBiRL's Algorithm 1 as reconstructed in docs/math.md §4
    **[reconstructed inner rule]**.

    Args:
        mdp: the MDP.
        reward: ``[S, A]``.
        policy: ``[S, A]`` current policy with positive entries.
        eta: step size ``> 0`` (``float("inf")`` allowed; static).

    Returns:
        ``[S, A]`` the next policy.
    """
    _, q = soft_policy_evaluation(mdp, reward, policy)
    if eta == float("inf"):
        return soft_policy(mdp, q)
    keep = 1.0 / (1.0 + eta * mdp.tau)
    log_pi = jnp.log(jnp.where(policy > 0, policy, jnp.finfo(q.dtype).tiny))
    logits = keep * log_pi + (1.0 - keep) * _logits(mdp, q)
    return jax.nn.softmax(logits, axis=-1)
