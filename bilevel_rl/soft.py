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
"""Fixed-point solvers accepted by :func:`soft_value_iteration` (besides ``"auto"``)."""

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
        status: ``[]`` int32 index into :data:`STATUS`: which stopping test fired.
    """

    q: Array
    v: Array
    policy: Array
    residual: Array
    iterations: Array
    status: Array


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
    # 0 log(0/p0) = 0: entries with policy == 0 contribute nothing (also where the
    # reference policy is 0, as softmax(q/tau + log pi0) is then 0 too).
    support = policy > 0
    log_ratio = jnp.log(jnp.where(support, policy, 1.0))
    if mdp.ref_policy is not None:
        log_ratio = log_ratio - jnp.log(jnp.where(support, mdp.ref_policy, 1.0))
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

STATUS = ("converged", "roundoff_floor", "max_iters", "non_finite")
"""Why a solve stopped (``SoftSolution.status`` indexes this tuple):

* ``"converged"``: the stopping quantity met ``tol``;
* ``"roundoff_floor"``: it stopped at the dtype's round-off floor above ``tol``
  (value iteration: the change met ``ROUNDOFF_FACTOR * eps * ||v||_inf``; policy
  iteration: the residual met that floor, or stopped decreasing once below the
  evaluation's floor ``ROUNDOFF_FACTOR * eps * ||v||_inf / (1 - gamma)``);
* ``"max_iters"``: it ran out of sweeps / rounds;
* ``"non_finite"``: an iterate was NaN or infinite.
"""

_RUNNING = -1


def roundoff_floor(v: Array) -> Array:
    """``ROUNDOFF_FACTOR * eps * ||v||_inf``: the smallest change or Bellman residual
    that is not round-off in ``v``'s dtype (``[S] -> []``)."""
    return ROUNDOFF_FACTOR * jnp.finfo(v.dtype).eps * jnp.max(jnp.abs(v))


def _bellman_residual(mdp: TabularMDP, q: Array, v: Array) -> Array:
    return jnp.max(jnp.abs(soft_max(mdp, q) - v))


def _solution(mdp, q, v, residual, iterations, status) -> SoftSolution:
    return SoftSolution(q, v, soft_policy(mdp, q), residual, iterations, status)


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
    method: str = "auto",
) -> SoftSolution:
    """Solves the soft Bellman equation to tolerance ``tol``.

    The methods reach the same fixed point ``V*``:

    * ``"value_iteration"``: ``v <- T(v)`` until ``||T(v) - v||_inf <= tol``;
      ``O(S^2 A)`` per sweep, linear rate ``gamma``.
    * ``"policy_iteration"``: soft policy iteration (exact evaluation by a dense
      ``S x S`` solve, then ``pi <- softmax(q / tau)``) until the Bellman residual
      ``||T(v) - v||_inf <= tol``; ``O(S^3)`` per round, quadratic local rate, so a
      handful of rounds even for ``gamma`` near 1.
    * ``"auto"`` (default): the one :func:`select_method` predicts to be faster
      for these sizes, ``tol`` and dtype (a static choice: the same under ``jit``
      and ``vmap``).

    The loop is a ``lax.while_loop``: it jits, and under ``jax.vmap`` every instance
    of a batch stops on its own test (finished instances are frozen). Both methods
    also stop at the dtype's round-off floor (:data:`STATUS`), so ``float32`` never
    spins to ``max_iters`` on a ``tol`` it cannot reach; ``status`` says which test
    fired. Not reverse-differentiable (``while_loop``); see
    :func:`soft_value_iteration_unrolled` for the unrolled solver.

    Args:
        mdp: a single MDP.
        reward: ``[S, A]`` reward.
        tol: target sup-norm change between sweeps (value iteration) or Bellman
            residual (policy iteration).
        max_iters: cap on sweeps / rounds.
        init: ``[S]`` warm start for ``v`` (zeros if ``None``).
        method: one of :data:`METHODS` or ``"auto"``.

    Returns:
        :class:`SoftSolution`; ``residual`` is the exact Bellman residual of ``v``.

    Raises:
        ValueError: unknown ``method``, negative ``tol`` or ``max_iters < 1``.
    """
    if not isinstance(tol, jax.core.Tracer) and not tol >= 0:
        raise ValueError(f"tol: must be >= 0, got {tol!r}")
    if int(max_iters) < 1:
        raise ValueError(f"max_iters: must be >= 1, got {max_iters!r}")
    reward, v0 = _prepare(mdp, reward, init)
    method = select_method(
        mdp.num_states,
        mdp.num_actions,
        v0.dtype,
        tol=tol,
        max_iters=max_iters,
        method=method,
    )
    if method == "value_iteration":
        return _value_iteration(mdp, reward, v0, tol, max_iters)
    return _policy_iteration(mdp, reward, v0, tol, max_iters)


def _value_iteration(mdp, reward, v0, tol, max_iters) -> SoftSolution:
    # The sweep T(v) in an [A, S] layout: the logsumexp then reduces over the
    # leading axis (elementwise across S-vectors, SIMD-friendly) instead of a
    # short minor axis. P is transposed once per solve, outside the loop; same
    # fixed point (timed in benchmarks/soft_vi_throughput.py).
    P_ast = jnp.swapaxes(mdp.P, 0, 1)  # [A, S, S]
    reward_t = reward.T  # [A, S]
    shift = 0.0 if mdp.ref_policy is None else jnp.log(mdp.ref_policy).T

    def sweep(v):
        q_t = reward_t + mdp.gamma * jnp.einsum("ast,t->as", P_ast, v)
        # The fused reduction, not logsumexp's contraction: in this rolled loop
        # the contraction's extra kernel costs more than it saves (see logsumexp).
        return mdp.tau * jax.nn.logsumexp(q_t / mdp.tau + shift, axis=0)

    def cond(carry):
        v, change, it = carry
        # NaN compares False, so a non-finite iterate also stops the loop.
        return (change > jnp.maximum(tol, roundoff_floor(v))) & (it < max_iters)

    def body(carry):
        v, _, it = carry
        v_new = sweep(v)
        return v_new, jnp.max(jnp.abs(v_new - v)), it + 1

    init = (v0, jnp.asarray(jnp.inf, v0.dtype), jnp.asarray(0, jnp.int32))
    v, change, it = jax.lax.while_loop(cond, body, init)
    q = soft_q(mdp, reward, v)
    status = jnp.select(
        [change <= tol, change <= roundoff_floor(v), jnp.isfinite(change)],
        [0, 1, 2],
        3,
    ).astype(jnp.int32)
    return _solution(mdp, q, v, _bellman_residual(mdp, q, v), it, status)


def _policy_iteration(mdp, reward, v0, tol, max_iters) -> SoftSolution:
    # Invariant: (v, q, res) is the best iterate so far (smallest residual once
    # the residual is below the evaluation's round-off floor). In exact arithmetic
    # soft policy iteration is Newton's method: the residual falls quadratically
    # near V*. In floating point the evaluation's solve is backward stable (residual
    # ~ eps ||v||) but its error in v grows with cond(I - gamma P_pi) ~ 1/(1 - gamma),
    # so once the residual is below that floor a round that does not lower it
    # (the iterates only trade round-off) ends the solve.
    one = jnp.asarray(1.0, v0.dtype)
    eval_floor_factor = one / (one - mdp.gamma)

    def status_of(res, v, stalled):
        floor = roundoff_floor(v)
        return jnp.select(
            [res <= tol, (res <= floor) | stalled, ~jnp.isfinite(res)],
            [0, 1, 3],
            _RUNNING,
        ).astype(jnp.int32)

    def cond(carry):
        return carry[-1] == _RUNNING

    def body(carry):
        v, q, res, it, _ = carry
        v_new, q_new = soft_policy_evaluation(mdp, reward, soft_policy(mdp, q))
        res_new = _bellman_residual(mdp, q_new, v_new)
        stalled = ~(res_new < res) & (res <= roundoff_floor(v) * eval_floor_factor)
        stalled = stalled & jnp.isfinite(res_new)
        keep = stalled  # a stalled round leaves the best iterate in place
        v, q, res = jax.tree.map(
            lambda old, new: jnp.where(keep, old, new),
            (v, q, res),
            (v_new, q_new, res_new),
        )
        it = it + 1
        status = status_of(res, v, stalled)
        status = jnp.where((status == _RUNNING) & (it >= max_iters), 2, status)
        return v, q, res, it, status

    q0 = soft_q(mdp, reward, v0)
    res0 = _bellman_residual(mdp, q0, v0)
    zero = jnp.asarray(0, jnp.int32)
    init = (v0, q0, res0, zero, status_of(res0, v0, jnp.asarray(False)))
    v, q, res, it, status = jax.lax.while_loop(cond, body, init)
    return _solution(mdp, q, v, res, it, status)


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
    q = soft_q(mdp, reward, v)
    residual = _bellman_residual(mdp, q, v)
    # Always num_iters sweeps: "max_iters" unless an iterate was not finite.
    status = jnp.where(jnp.isfinite(residual), 2, 3).astype(jnp.int32)
    return _solution(mdp, q, v, residual, jnp.asarray(num_iters, jnp.int32), status)


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


# ------------------------------------------------------------ choosing the solver

PI_ROUNDS = 3
"""Rounds policy iteration is predicted to need (Newton's method: 1-3, mean 2, on the
grid of ``benchmarks/time_to_solution.py``; 3-4 at ``tau = 0.01``)."""

ASSUMED_GAMMA = 0.99
"""The discount :func:`select_method` assumes when none is given (``gamma`` is an
array of the MDP, unknown at trace time); pass ``method`` explicitly if you know
better."""


class SolverCost(NamedTuple):
    """Per-MDP time model of one backend (nanoseconds), fitted to the grid of
    ``benchmarks/time_to_solution.py`` (its ``fit`` record).

    A value-iteration sweep costs ``sweep_per_byte * bytes(P) + sweep_fixed``; a
    policy-iteration round ``round_per_byte * bytes(P) + round_per_cube * S^3 +
    round_fixed`` (forming ``P_pi`` and the look-ahead read ``P``; the dense
    ``S x S`` solve is the cube, given per itemsize, 4 and 8 bytes).
    """

    sweep_per_byte: float
    sweep_fixed: float
    round_per_byte: float
    round_per_cube: dict
    round_fixed: float


SOLVER_COSTS = {
    # 2-core x86 CPU, one XLA device, S in {16, 64, 200}, A = 8 (2026-12-04):
    # sweeps within 25% of the model on every cell, rounds within 2.3x.
    "cpu": SolverCost(0.0164, 301.0, 0.259, {4: 0.0504, 8: 0.114}, 3858.0),
}
""":class:`SolverCost` per ``jax.default_backend()``. Only the CPU model is
measured so far; other backends use it until ``time_to_solution.py`` has been run
there (their latency per sweep favours policy iteration further)."""


def predicted_sweeps(gamma: float, tol: float, scale: float, dtype) -> int:
    """Value-iteration sweeps from ``v = 0`` until the change meets ``tol`` (or the
    round-off floor): ``log(tol_eff / scale) / log(gamma)`` with ``scale ~ ||T(0)||``,
    since the constant component of the error decays exactly like ``gamma^k``."""
    eps = float(np.finfo(dtype).eps)
    target = max(float(tol), ROUNDOFF_FACTOR * eps * scale / (1.0 - gamma))
    if target >= scale:
        return 1
    return int(np.ceil(np.log(target / scale) / np.log(gamma)))


def predicted_times(
    num_states: int,
    num_actions: int,
    gamma: float,
    tol: float,
    dtype,
    *,
    scale: float = 1.0,
    max_iters: int = 10_000,
    backend: str | None = None,
) -> dict[str, float]:
    """Predicted seconds per MDP of each method in :data:`METHODS` (the cost model
    of ``method="auto"``; :data:`SOLVER_COSTS`, :data:`PI_ROUNDS`)."""
    backend = backend or jax.default_backend()
    c = SOLVER_COSTS.get(backend, SOLVER_COSTS["cpu"])
    S, A = num_states, num_actions
    itemsize = np.dtype(dtype).itemsize
    sweeps = min(predicted_sweeps(gamma, tol, scale, dtype), max_iters)
    rounds = min(PI_ROUNDS, max_iters)
    p_bytes = S * S * A * itemsize
    sweep = c.sweep_per_byte * p_bytes + c.sweep_fixed
    per_cube = c.round_per_cube.get(itemsize, max(c.round_per_cube.values()))
    round_ = c.round_per_byte * p_bytes + per_cube * S**3 + c.round_fixed
    return {
        "value_iteration": 1e-9 * sweeps * sweep,
        "policy_iteration": 1e-9 * rounds * round_,
    }


def select_method(
    num_states: int,
    num_actions: int,
    dtype,
    *,
    tol: float = 1e-8,
    max_iters: int = 10_000,
    gamma: float = ASSUMED_GAMMA,
    scale: float | None = None,
    method: str = "auto",
) -> str:
    """Resolves ``method="auto"`` to the method of :data:`METHODS` predicted faster.

    A static choice by :func:`predicted_times` from the sizes, dtype, ``tol`` and
    ``max_iters``, a discount ``gamma``, the scale ``||T(0)||_inf ~ max |r| +
    tau log A`` (default ``1 + log A``).
    :func:`soft_value_iteration` uses only static information (``gamma`` is an
    array there, so :data:`ASSUMED_GAMMA`), so
    its choice is the same with or without ``jit``/``vmap``;
    :func:`bilevel_rl.solve_batch` passes the batch's largest ``gamma`` and reward.
    An explicit method is checked and returned.

    Returns:
        One of :data:`METHODS`.

    Raises:
        ValueError: an unknown ``method``.
    """
    if method in METHODS:
        return method
    if method != "auto":
        raise ValueError(f"method: must be 'auto' or one of {METHODS}, got {method!r}")
    if scale is None:
        scale = 1.0 + float(np.log(num_actions))
    times = predicted_times(
        num_states,
        num_actions,
        min(float(gamma), 1.0 - 1e-12),
        0.0 if isinstance(tol, jax.core.Tracer) else float(tol),
        dtype,
        scale=scale,
        max_iters=int(max_iters),
    )
    return min(times, key=times.get)
