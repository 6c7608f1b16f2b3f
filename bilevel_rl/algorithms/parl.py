"""PARL / A-PARL: policy alignment with second-order hyper-gradients (MATH.md §6).

The follower's policy is parameterized by tabular softmax logits ``theta[S, A]``,
``pi_theta = softmax(theta)`` (times ``mdp.ref_policy`` when set), and maximizes its
soft value ``J(theta; x) = rho^T V^{pi_theta}_{r_x, tau}`` (exact, one linear solve).
The leader minimizes ``G(x, theta*(x)) = f(x, pi_{theta*(x)})``. By the implicit
function theorem at ``grad_theta J(theta*; x) = 0``::

    grad G = grad_x f - (d^2 J / d theta dx)^T v,     H v = grad_theta f,
    H = d^2 J / d theta^2                                (Hessian of the follower)

``(d^2 J / d theta dx)^T v = grad_x <grad_theta J(theta; x), v>`` is one
reverse-over-reverse product; ``H v`` products are ``jax.jvp`` of ``jax.grad`` (the
Hessian is never formed). ``H`` is singular along the per-state shifts
``theta(s, .) + c(s)`` (they do not change ``pi_theta``); the system is solved by
conjugate gradients on ``-H`` restricted to the subspace orthogonal to them (every
product is projected to zero per-state mean), or, with ``damping = lam > 0``, on
``-H + lam I`` (MATH.md §6). ``grad_theta f`` is orthogonal to the shifts, so the
projected solve is exact; at an exact lower-level solution this hyper-gradient is
the §2 closed form (tested).

**A-PARL** (the algorithm run here): per outer iteration, ``inner_steps = K``
warm-started policy-gradient ascent steps ``theta <- theta + pg_step grad_theta J``
(exact gradient), then one leader step with the hyper-gradient at the current
``theta``. Variants of the upper gradient:

* exact (``num_samples=None``): ``grad_x f`` and ``grad_theta f`` by autodiff of
  ``problem.upper`` at ``pi_theta``;
* sampled (``num_samples = n``): from ``n`` tuples of trajectories of
  ``pi_theta`` and the problem's ``trajectory_loss`` ``l``:
  ``grad_theta G = E[(l - b) sum_t grad_theta log pi_theta(a_t|s_t)]`` (score
  function, ``b`` the leave-one-out mean of the other tuples' losses, which keeps it
  unbiased) and ``grad_x G = E[grad_x l]``. The follower's value, gradient and
  Hessian products stay exact (the model-based lower level of the tabular setting).

References:
    Chakraborty, Bedi, Koppel, Wang, Huang, Manocha, "PARL: A Unified Framework for
    Policy Alignment in Reinforcement Learning from Human Feedback", ICLR 2024;
    MATH.md §6.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from bilevel_rl.algorithms.base import Solver, check_positive, exact_metrics, tree_norm
from bilevel_rl.algorithms.sobirl import check_trajectory_problem
from bilevel_rl.mdp import TabularMDP
from bilevel_rl.problem import BilevelProblem
from bilevel_rl.sampling import rollout
from bilevel_rl.soft import soft_policy_evaluation, soft_value_iteration
from bilevel_rl.types import Array, PRNGKey, PyTree

__all__ = [
    "PARLState",
    "follower_value",
    "logit_policy",
    "make",
    "parl_hypergradient",
]


class PARLState(NamedTuple):
    """Iterate of A-PARL.

    Attributes:
        x: leader variable ``x_k`` (reward parameters ``nu``).
        logits: ``[S, A]`` the follower's policy logits ``theta_k`` (warm start).
        opt_state: optax state of ``x``.
        key: PRNG key (sampled variant).
    """

    x: PyTree
    logits: Array
    opt_state: optax.OptState
    key: PRNGKey


def logit_policy(mdp: TabularMDP, logits: Array) -> Array:
    """``pi_theta = softmax(theta + log pi0)`` (``pi0 = mdp.ref_policy``, if set).

    Args:
        mdp: the MDP (its ``ref_policy``).
        logits: ``[S, A]``.

    Returns:
        ``[S, A]`` rows are distributions.
    """
    if mdp.ref_policy is not None:
        logits = logits + jnp.log(mdp.ref_policy)
    return jax.nn.softmax(logits, axis=-1)


def follower_value(mdp: TabularMDP, reward: Array, logits: Array) -> Array:
    """``J(theta) = rho^T V^{pi_theta}``, the regularized value of logits; ``[]``."""
    v, _ = soft_policy_evaluation(mdp, reward, logit_policy(mdp, logits))
    return mdp.rho @ v


def _center(v: Array) -> Array:
    """Projection onto the complement of the per-state shifts (zero row means)."""
    return v - jnp.mean(v, axis=-1, keepdims=True)


def parl_hypergradient(
    problem: BilevelProblem,
    x: PyTree,
    logits: Array,
    grad_x_f: PyTree,
    grad_theta_f: Array,
    *,
    cg_iters: int,
    cg_tol: float = 1e-12,
    damping: float = 0.0,
) -> tuple[PyTree, Array]:
    """PARL's implicit hyper-gradient at ``(x, theta)`` from the upper gradients.

    Args:
        problem: one instance.
        x: leader variable.
        logits: ``[S, A]`` follower logits ``theta`` (exact lower solution for the
            exact hyper-gradient; any ``theta`` in A-PARL).
        grad_x_f: ``grad_x f`` at fixed ``theta`` (pytree like ``x``).
        grad_theta_f: ``[S, A]`` ``grad_theta f``.
        cg_iters: maximum conjugate-gradient iterations (static).
        cg_tol: relative residual tolerance of CG.
        damping: ``lam >= 0``; ``0`` solves on the shift-free subspace.

    Returns:
        ``(grad, residual)``: the hyper-gradient (like ``x``) and the relative
        residual ``‖(-H + lam I) u - b‖ / ‖b‖`` of the projected system.
    """
    mdp = problem.mdp

    def grad_theta_j(th, xx):
        return jax.grad(follower_value, argnums=2)(mdp, problem.reward(xx), th)

    def neg_hessian(u):  # (-H + lam I) u on the shift-free subspace
        _, hu = jax.jvp(lambda th: grad_theta_j(th, x), (logits,), (_center(u),))
        return _center(-hu) + damping * u

    b = _center(grad_theta_f)
    u, _ = jax.scipy.sparse.linalg.cg(neg_hessian, b, tol=cg_tol, maxiter=cg_iters)
    u = jax.lax.stop_gradient(_center(u))
    norm_b = jnp.linalg.norm(b)
    residual = jnp.linalg.norm(neg_hessian(u) - b) / jnp.where(norm_b > 0, norm_b, 1.0)
    # H v = b  with  v = -u;  grad = grad_x f - grad_x <grad_theta J, v>.
    mixed = jax.grad(lambda xx: jnp.vdot(grad_theta_j(logits, xx), u))(x)
    return jax.tree.map(jnp.add, grad_x_f, mixed), residual


def _sampled_upper_gradients(key, problem, x, logits, num_samples):
    """Score-function estimates of ``(grad_x G, grad_theta G, mean loss)``."""
    mdp = problem.mdp
    m, H, n = problem.num_trajectories, problem.horizon, num_samples
    policy = logit_policy(mdp, logits)
    trajs = rollout(key, mdp, policy, horizon=H, num_trajectories=n * m)
    tuples = jax.tree.map(lambda a: a.reshape((n, m) + a.shape[1:]), trajs)
    losses, grad_x = jax.vmap(
        jax.value_and_grad(problem.loss), in_axes=(None, 0), out_axes=(0, 0)
    )(x, tuples)
    baseline = (jnp.sum(losses) - losses) / max(n - 1, 1) if n > 1 else 0.0

    def log_prob(th, tup):
        pi = logit_policy(mdp, th)
        return jnp.sum(jnp.log(pi[tup.states, tup.actions]))

    scores = jax.vmap(jax.grad(log_prob), in_axes=(None, 0))(logits, tuples)
    weights = jax.lax.stop_gradient(losses - baseline)
    grad_theta = jnp.mean(weights[:, None, None] * scores, axis=0)
    grad_x = jax.tree.map(lambda g: jnp.mean(g, axis=0), grad_x)
    return grad_x, grad_theta, jnp.mean(losses)


def make(
    *,
    beta: float = 1e-2,
    inner_steps: int = 10,
    pg_step: float = 1.0,
    cg_iters: int = 50,
    cg_tol: float = 1e-12,
    damping: float = 0.0,
    num_samples: int | None = None,
    optimizer: optax.GradientTransformation | None = None,
    track_exact: bool = True,
) -> Solver:
    """Builds A-PARL.

    Args:
        beta: leader step size (default ``optax.sgd(beta)``).
        inner_steps: ``K`` policy-gradient steps per outer iteration.
        pg_step: step size of the follower's policy-gradient ascent on ``theta``.
        cg_iters: maximum CG iterations of the Hessian solve (``S (A - 1)``
            suffice in exact arithmetic).
        cg_tol: relative CG tolerance.
        damping: ``lam >= 0`` of ``-H + lam I`` (``0``: projected, undamped).
        num_samples: ``None`` for exact upper gradients; else ``n >= 2`` tuples of
            trajectories per estimate (the problem needs a ``trajectory_loss``).
        optimizer: any optax transformation of the hyper-gradient.
        track_exact: record ``exact_f`` and ``exact_grad_norm`` at ``x_k``.

    Returns:
        A :class:`~bilevel_rl.algorithms.base.Solver` with metrics ``grad_norm``,
        ``f`` (``f(x_k, pi_theta_k)``, or the sample mean of the loss),
        ``inner_residual`` (``‖grad_theta J‖`` after the ``K`` steps),
        ``lower_gap`` (``V*(rho) - J(theta_k)``), ``cg_residual`` and the exact ones.

    Raises:
        ValueError: non-positive ``beta``/``pg_step``/``cg_tol``, ``inner_steps``
            or ``cg_iters < 1``, negative ``damping``, ``num_samples < 2``, or (at
            ``init``) a sampled variant on a problem without a trajectory loss.
    """
    beta = check_positive("beta", beta)
    inner_steps = check_positive("inner_steps", inner_steps, integer=True)
    pg_step = check_positive("pg_step", pg_step)
    cg_iters = check_positive("cg_iters", cg_iters, integer=True)
    cg_tol = check_positive("cg_tol", cg_tol)
    damping = check_positive("damping", damping, allow_zero=True)
    if num_samples is not None:
        num_samples = check_positive("num_samples", num_samples, integer=True)
        if num_samples < 2:
            raise ValueError(
                f"num_samples: must be >= 2 (leave-one-out baseline), got {num_samples}"
            )
    opt = optimizer if optimizer is not None else optax.sgd(beta)

    def init(problem: BilevelProblem, key: PRNGKey) -> PARLState:
        if num_samples is not None:
            check_trajectory_problem(problem, "sampled PARL")
        logits = jnp.zeros(problem.mdp.P.shape[-3:-1], problem.mdp.P.dtype)
        return PARLState(problem.x0, logits, opt.init(problem.x0), key)

    def step(state: PARLState, problem: BilevelProblem):
        mdp = problem.mdp
        reward = problem.reward(state.x)
        ascent = jax.grad(follower_value, argnums=2)

        def pg(logits, _):
            return logits + pg_step * ascent(mdp, reward, logits), None

        logits, _ = jax.lax.scan(pg, state.logits, None, inner_steps)
        key, k_sample = jax.random.split(state.key)
        if num_samples is None:
            f, (gx, gth) = jax.value_and_grad(
                lambda x, th: problem.objective(x, logit_policy(mdp, th)),
                argnums=(0, 1),
            )(state.x, logits)
        else:
            gx, gth, f = _sampled_upper_gradients(
                k_sample, problem, state.x, logits, num_samples
            )
        grad, cg_residual = parl_hypergradient(
            problem, state.x, logits, gx, gth,
            cg_iters=cg_iters, cg_tol=cg_tol, damping=damping,
        )  # fmt: skip
        star = soft_value_iteration(mdp, reward, method="policy_iteration", tol=1e-12)
        metrics = {
            "grad_norm": tree_norm(grad),
            "f": f,
            "inner_residual": jnp.linalg.norm(ascent(mdp, reward, logits)),
            "lower_gap": mdp.rho @ star.v - follower_value(mdp, reward, logits),
            "cg_residual": cg_residual,
        }
        if track_exact:
            metrics.update(exact_metrics(problem, state.x))
        updates, opt_state = opt.update(grad, state.opt_state, state.x)
        x = optax.apply_updates(state.x, updates)
        return PARLState(x, logits, opt_state, key), metrics

    return Solver(init, step)
