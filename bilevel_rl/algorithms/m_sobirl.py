"""M-SoBiRL: amortized model-based bilevel solver (SoBiRL paper, Algorithm 2).

Implements docs/math.md §3 exactly. At outer iteration ``k`` (``x_k`` given):

.. code-block:: text

    V_k     = T_{x_k}^N (V_{k-1})        (k >= 1; V_0 = 0)
    pi_k    = softmax((r_{x_k} + gamma P V_k) / tau)        (k >= 1; pi_0 uniform)
    A_k     = I - gamma P_{pi_k}                                   [S, S]
    b_k     = U^T vec(pi_k ⊙ ∇_pi f(x_k, pi_k))                    [S]
    w_{k+1} = w_k - zeta A_k (A_k^T w_k - b_k)                     [S]
    ĝ_k     = ∇_x f + (1/tau) J^T (pi_k ⊙ ∇_pi f)
              - (1/tau) [∂_x T_x(V_k)]^T w_{k+1}
    x_{k+1} = x_k - lr ĝ_k               (or any optax transformation of ĝ_k)

with ``U[(s,a), s'] = 1{s = s'} - gamma P(s'|s,a)``, ``J = ∂r_x/∂x`` and
``∂_x T_x(V)(s) = sum_a pĩ(a|s) J(s,a)``, ``pĩ = softmax((r_x + gamma P V)/tau)``
(``pĩ = pi_k`` for ``k >= 1``). ``V_0 = 0`` and ``pi_0`` is the initial policy
(uniform; as in the authors' code, docs/math.md §3). The reward model is evaluated
and differentiated once per iteration.

References:
    Yang, Gao & Yuan, "Bilevel Reinforcement Learning via the Development of
    Hyper-gradient without Lower-Level Convexity", AISTATS 2025, Algorithm 2.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from bilevel_rl.algorithms.base import Solver, build_solver
from bilevel_rl.algorithms.follower import initial_policy
from bilevel_rl.algorithms.params import (
    Optimizer,
    as_optimizer,
    choice,
    count,
    flag,
    option,
    positive,
    validate,
)
from bilevel_rl.problem import BilevelProblem
from bilevel_rl.soft import soft_bellman_operator, soft_policy, soft_q
from bilevel_rl.types import Array, Estimator, PRNGKey, PyTree

DESCRIPTION = (
    "M-SoBiRL (Yang, Gao & Yuan 2025, Alg. 2): model-based, one adjoint step per "
    "iteration"
)
NEEDS = None
ALIASES = {"beta": "optimizer.learning_rate"}
W0_CHOICES = ("normal", "zeros", "data")
UNROLL = 16
"""Inner sweeps per iteration of the (partially unrolled) inner loop: unrolled,
the sweeps of one instance fuse; all of them are unrolled for ``N <= UNROLL + 1``."""


@dataclasses.dataclass(frozen=True)
class Params:
    """Options of M-SoBiRL (defaults: the paper's synthetic experiment)."""

    optimizer: Optimizer = option(
        Optimizer(learning_rate=8e-3), "the leader's update (beta = lr)", as_optimizer
    )
    zeta: float = option(0.5, "step of the adjoint's gradient step", positive)
    inner_steps: int = option(10, "N warm-started soft VI sweeps per iteration", count)
    w0: str = option(
        "normal",
        "w_0: normal (N(0, I), the authors'), zeros, or data (problem.data.w0)",
        choice(*W0_CHOICES),
    )
    track_exact: bool = option(True, "record exact_f and exact_grad_norm", flag)

    def __post_init__(self):
        validate(self)


class MSoBiRLFollower(NamedTuple):
    """M-SoBiRL's follower between iterations ``k - 1`` and ``k``.

    Attributes:
        v: ``[S]`` the value estimate ``V_{k-1}`` (the warm start of the sweeps).
        w: ``[S]`` the adjoint estimate ``w_k``.
        k: ``[]`` int32 iteration counter (``k = 0``: no sweeps, ``pi_0``).
    """

    v: Array
    w: Array
    k: Array


def estimator(params: Params) -> Estimator:
    """M-SoBiRL's estimate ``ĝ_k``; metrics ``f`` (``f(x_k, pi_k)``),
    ``inner_residual`` (sup-norm change of the last sweep that made ``V_k``; 0 at
    ``k = 0``) and ``adjoint_residual`` (``‖A_kᵀ w_{k+1} − b_k‖``)."""
    zeta, inner_steps, w0 = params.zeta, params.inner_steps, params.w0

    def init(problem: BilevelProblem, x0: PyTree, key: PRNGKey) -> MSoBiRLFollower:
        mdp = problem.mdp
        dtype = mdp.P.dtype
        S = mdp.num_states
        _, k_w = jax.random.split(key)
        if w0 == "normal":
            w = jax.random.normal(k_w, (S,), dtype)
        elif w0 == "data":
            w = jnp.asarray(problem.data.w0, dtype)
        else:
            w = jnp.zeros((S,), dtype)
        return MSoBiRLFollower(jnp.zeros((S,), dtype), w, jnp.asarray(0, jnp.int32))

    def estimate(follower: MSoBiRLFollower, problem: BilevelProblem, x, key):
        mdp = problem.mdp
        first = follower.k == 0
        reward, reward_vjp = jax.vjp(problem.reward, x)
        # N warm-started sweeps for this reward, then the policy (k >= 1).
        u = jax.lax.fori_loop(
            0,
            inner_steps - 1,
            lambda _, u: soft_bellman_operator(mdp, reward, u),
            follower.v,
            unroll=UNROLL,
        )
        swept = soft_bellman_operator(mdp, reward, u)
        v = jnp.where(first, follower.v, swept)
        inner_residual = jnp.where(first, 0.0, jnp.max(jnp.abs(swept - u)))
        pi_tilde = soft_policy(mdp, soft_q(mdp, reward, v))
        pi = jnp.where(first, initial_policy(mdp), pi_tilde)

        f, (grad_x, grad_pi) = jax.value_and_grad(problem.objective, (0, 1))(x, pi)
        # Adjoint: one gradient step on ½‖A_kᵀ w − b_k‖².
        P_pi = jnp.einsum("sa,sat->st", pi, mdp.P)
        A_k = jnp.eye(mdp.num_states, dtype=P_pi.dtype) - mdp.gamma * P_pi
        pg = pi * grad_pi  # pi ⊙ ∇_pi f, [S, A]
        b = pg.sum(-1) - mdp.gamma * jnp.einsum("sa,sat->t", pg, mdp.P)  # Uᵀvec(pg)
        w = follower.w - zeta * A_k @ (A_k.T @ follower.w - b)
        # ĝ = ∇_x f + Jᵀ[(pi ⊙ ∇_pi f − pĩ ⊙ w_{k+1}) / tau]: one VJP.
        (grad_r,) = reward_vjp((pg - pi_tilde * w[:, None]) / mdp.tau)
        g_hat = jax.tree.map(jnp.add, grad_x, grad_r)
        metrics = {
            "f": f,
            "inner_residual": inner_residual.astype(f.dtype),
            "adjoint_residual": jnp.linalg.norm(A_k.T @ w - b),
            "transitions": jnp.zeros((), f.dtype),
        }
        return g_hat, MSoBiRLFollower(v, w, follower.k + 1), metrics

    return Estimator(init, estimate)


def make(**kwargs) -> Solver:
    """Builds M-SoBiRL from :class:`Params` fields.

    Deprecated: ``beta`` (use ``optimizer=Optimizer(learning_rate=...)``).

    Raises:
        ValueError/TypeError: a field breaks its rule (the message names it).
    """
    return build_solver(Params, estimator, kwargs, ALIASES)
