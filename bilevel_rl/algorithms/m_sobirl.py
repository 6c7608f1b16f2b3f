"""M-SoBiRL: amortized model-based bilevel solver (SoBiRL paper, Algorithm 2).

Implements MATH.md §3 exactly. Per outer iteration ``k``:

.. code-block:: text

    A_k     = I - gamma P_{pi_k}                                   [S, S]
    b_k     = U^T vec(pi_k ⊙ ∇_pi f(x_k, pi_k))                    [S]
    w_{k+1} = w_k - zeta A_k (A_k^T w_k - b_k)                     [S]
    ĝ_k     = ∇_x f + (1/tau) J^T (pi_k ⊙ ∇_pi f)
              - (1/tau) [∂_x T_x(V_k)]^T w_{k+1}
    x_{k+1} = x_k - beta ĝ_k             (or any optax transformation of ĝ_k)
    V_{k+1} = T_{x_{k+1}}^N (V_k)
    pi_{k+1} = softmax((r_{x_{k+1}} + gamma P V_{k+1}) / tau)

with ``U[(s,a), s'] = 1{s = s'} - gamma P(s'|s,a)``, ``J = ∂r_x/∂x`` and
``∂_x T_x(V)(s) = sum_a pĩ(a|s) J(s,a)``, ``pĩ = softmax((r_x + gamma P V)/tau)``.
``V_0 = 0`` and ``pi_0`` is uniform (as in the authors' code, MATH.md §3).

References:
    Yang, Gao & Yuan, "Bilevel Reinforcement Learning via the Development of
    Hyper-gradient without Lower-Level Convexity", AISTATS 2025, Algorithm 2.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from bilevel_rl.algorithms.base import (
    Solver,
    check_positive,
    exact_metrics,
    tree_norm,
)
from bilevel_rl.problem import BilevelProblem
from bilevel_rl.soft import soft_bellman_operator, soft_policy, soft_q
from bilevel_rl.types import Array, PRNGKey, PyTree

W0_CHOICES = ("normal", "zeros", "data")
UNROLL = 16
"""Inner sweeps per iteration of the (partially unrolled) inner loop."""


class MSoBiRLState(NamedTuple):
    """Iterate of M-SoBiRL at outer iteration ``k``.

    The estimate for iteration ``k`` is computed at the end of the previous step
    (and by ``init`` for ``k = 0``), so that the reward model is evaluated and
    differentiated once per iteration: one forward and one backward pass.

    Attributes:
        x: leader variable ``x_k`` (pytree like ``problem.x0``).
        v: ``[S]`` warm-started value estimate ``V_k``.
        w: ``[S]`` adjoint estimate ``w_{k+1}`` (already stepped at ``x_k``).
        policy: ``[S, A]`` follower policy ``pi_k``.
        g_hat: hyper-gradient estimate ``ĝ_k`` (pytree like ``x``).
        f: ``[]`` ``f(x_k, pi_k)``.
        adjoint_residual: ``[]`` ``‖A_kᵀ w_{k+1} − b_k‖``.
        inner_residual: ``[]`` sup-norm change of the last inner sweep that
            produced ``V_k`` (0 at ``k = 0``).
        opt_state: optax state of the upper update.
        key: PRNG key (unused by the deterministic updates; kept for the protocol).
    """

    x: PyTree
    v: Array
    w: Array
    policy: Array
    g_hat: PyTree
    f: Array
    adjoint_residual: Array
    inner_residual: Array
    opt_state: optax.OptState
    key: PRNGKey


def make(
    *,
    beta: float = 8e-3,
    zeta: float = 0.5,
    inner_steps: int = 10,
    optimizer: optax.GradientTransformation | None = None,
    w0: str = "normal",
    track_exact: bool = True,
) -> Solver:
    """Builds M-SoBiRL.

    Args:
        beta: upper step size (used when ``optimizer`` is ``None``: plain SGD).
        zeta: step of the gradient step on ``½‖A_kᵀ w − b_k‖²``.
        inner_steps: ``N`` warm-started soft value-iteration sweeps per iteration.
        optimizer: any optax transformation applied to ``ĝ_k``; defaults to
            ``optax.sgd(beta)``.
        w0: ``"normal"`` draws ``w_0 ~ N(0, I_S)`` from the key (the authors'
            choice); ``"zeros"`` starts at 0; ``"data"`` takes ``problem.data.w0``
            (e.g. the SoBiRL synthetic instance's own ``w0``).
        track_exact: also record the exact hyper-gradient norm ``‖∇φ(x_k)‖`` and
            ``f(x_k, pi*_{x_k})`` (MATH.md §2), at the cost of one exact solve and
            one ``S x S`` solve per iteration.

    Returns:
        A :class:`~bilevel_rl.algorithms.base.Solver`. Metrics per iteration:
        ``grad_norm`` (‖ĝ_k‖), ``f`` (``f(x_k, pi_k)``), ``inner_residual``
        (‖T(V_k) − V_k‖∞), ``adjoint_residual`` (‖A_kᵀ w_{k+1} − b_k‖),
        and with ``track_exact`` ``exact_grad_norm`` and ``exact_f`` (``run``
        adds ``finite``).

    Raises:
        ValueError: non-positive ``beta``/``zeta``, ``inner_steps < 1`` or an
            unknown ``w0``.
    """
    beta = check_positive("beta", beta)
    zeta = check_positive("zeta", zeta)
    inner_steps = check_positive("inner_steps", inner_steps, integer=True)
    if w0 not in W0_CHOICES:
        raise ValueError(f"w0: must be one of {W0_CHOICES}, got {w0!r}")
    opt = optimizer if optimizer is not None else optax.sgd(beta)

    def estimate(problem, x, reward, reward_vjp, v, w, pi, pi_tilde):
        """``(ĝ, w_next, f, adjoint residual)`` at ``(x, V, pi)``: MATH.md §3."""
        mdp = problem.mdp
        f, (grad_x, grad_pi) = jax.value_and_grad(problem.objective, (0, 1))(x, pi)
        # Adjoint: one gradient step on ½‖A_kᵀ w − b_k‖².
        P_pi = jnp.einsum("sa,sat->st", pi, mdp.P)
        A_k = jnp.eye(mdp.num_states, dtype=P_pi.dtype) - mdp.gamma * P_pi
        pg = pi * grad_pi  # pi ⊙ ∇_pi f, [S, A]
        b = pg.sum(-1) - mdp.gamma * jnp.einsum("sa,sat->t", pg, mdp.P)  # Uᵀvec(pg)
        w_next = w - zeta * A_k @ (A_k.T @ w - b)
        # ĝ = ∇_x f + Jᵀ[(pi ⊙ ∇_pi f − pĩ ⊙ w_next) / tau]: one VJP.
        (grad_r,) = reward_vjp((pg - pi_tilde * w_next[:, None]) / mdp.tau)
        g_hat = jax.tree.map(jnp.add, grad_x, grad_r)
        return g_hat, w_next, f, jnp.linalg.norm(A_k.T @ w_next - b)

    def init(problem: BilevelProblem, key: PRNGKey) -> MSoBiRLState:
        mdp = problem.mdp
        dtype = mdp.P.dtype
        S, A = mdp.num_states, mdp.num_actions
        key, k_w = jax.random.split(key)
        if w0 == "normal":
            w = jax.random.normal(k_w, (S,), dtype)
        elif w0 == "data":
            w = jnp.asarray(problem.data.w0, dtype)
        else:
            w = jnp.zeros((S,), dtype)
        x, v = problem.x0, jnp.zeros((S,), dtype)
        pi = jnp.full((S, A), 1.0 / A, dtype)  # pi_0 uniform (authors' code)
        reward, reward_vjp = jax.vjp(problem.reward, x)
        pi_tilde = soft_policy(mdp, soft_q(mdp, reward, v))
        g_hat, w, f, adj = estimate(problem, x, reward, reward_vjp, v, w, pi, pi_tilde)
        zero = jnp.zeros((), dtype)
        return MSoBiRLState(x, v, w, pi, g_hat, f, adj, zero, opt.init(x), key)

    def step(state: MSoBiRLState, problem: BilevelProblem):
        mdp = problem.mdp
        metrics = {
            "grad_norm": tree_norm(state.g_hat),
            "f": state.f,
            "inner_residual": state.inner_residual,
            "adjoint_residual": state.adjoint_residual,
        }
        if track_exact:
            metrics.update(exact_metrics(problem, state.x))

        updates, opt_state = opt.update(state.g_hat, state.opt_state, state.x)
        x = optax.apply_updates(state.x, updates)
        reward, reward_vjp = jax.vjp(problem.reward, x)

        # N warm-started sweeps for the new reward, then the new policy. Unrolled
        # (UNROLL sweeps per loop iteration; all of them for N <= UNROLL + 1): in
        # a rolled loop the sweep's kernels and the loop's bookkeeping cost a
        # single instance ~50% more per iteration (soft.logsumexp).
        u = jax.lax.fori_loop(
            0,
            inner_steps - 1,
            lambda _, u: soft_bellman_operator(mdp, reward, u),
            state.v,
            unroll=UNROLL,
        )
        v = soft_bellman_operator(mdp, reward, u)
        inner_residual = jnp.max(jnp.abs(v - u))
        pi = soft_policy(mdp, soft_q(mdp, reward, v))  # pĩ = pi for k >= 1
        g_hat, w, f, adj = estimate(problem, x, reward, reward_vjp, v, state.w, pi, pi)
        new_state = MSoBiRLState(
            x, v, w, pi, g_hat, f, adj, inner_residual, opt_state, state.key
        )
        return new_state, metrics

    return Solver(init, step)
