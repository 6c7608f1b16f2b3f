"""PARL / A-PARL: policy alignment with second-order hyper-gradients (docs/math.md §7).

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
``-H + lam I`` (docs/math.md §7). ``grad_theta f`` is orthogonal to the shifts, so the
projected solve is exact; at an exact lower-level solution this hyper-gradient is
the §2 closed form (tested).

**A-PARL** (the algorithm run here): per outer iteration, ``inner_steps = K``
warm-started policy-gradient ascent steps ``theta <- theta + policy_step grad_theta J``
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
    docs/math.md §7.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from bilevel_rl.algorithms.base import Solver, build_solver
from bilevel_rl.algorithms.follower import best_response, check_trajectory_problem
from bilevel_rl.algorithms.params import (
    Optimizer,
    as_optimizer,
    at_least,
    count,
    flag,
    nonnegative,
    option,
    optional,
    positive,
    validate,
)
from bilevel_rl.estimators import centered_losses
from bilevel_rl.mdp import TabularMDP
from bilevel_rl.problem import BilevelProblem
from bilevel_rl.sampling import rollout
from bilevel_rl.soft import soft_policy_evaluation
from bilevel_rl.types import Array, Estimator, PRNGKey, PyTree

__all__ = [
    "LogitFollower",
    "Params",
    "estimator",
    "follower_value",
    "logit_policy",
    "make",
    "parl_hypergradient",
]

DESCRIPTION = (
    "A-PARL (Chakraborty et al. 2024): softmax-logit PG follower, HVP + CG "
    "hyper-gradient"
)
NEEDS = None
ALIASES = {"beta": "optimizer.learning_rate", "pg_step": "policy_step"}


@dataclasses.dataclass(frozen=True)
class Params:
    """Options of A-PARL."""

    optimizer: Optimizer = option(
        Optimizer(learning_rate=1e-2), "the leader's update", as_optimizer
    )
    inner_steps: int = option(10, "K policy-gradient steps per iteration", count)
    policy_step: float = option(
        1.0, "step of the follower's policy-gradient ascent on the logits", positive
    )
    cg_iters: int = option(50, "most CG iterations of the Hessian solve", count)
    cg_tol: float = option(1e-12, "relative CG tolerance", positive)
    damping: float = option(
        0.0, "lam of -H + lam I (0: projected, undamped)", nonnegative
    )
    num_samples: int | None = option(
        None, "tuples per sampled upper gradient (>= 2; unset: exact)",
        optional(at_least(2)),
    )  # fmt: skip
    track_exact: bool = option(True, "record exact_f and exact_grad_norm", flag)

    def __post_init__(self):
        validate(self)


class LogitFollower(NamedTuple):
    """A-PARL's follower: ``[S, A]`` policy logits ``theta_k`` (warm start)."""

    logits: Array


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
        cg_tol: relative residual tolerance of CG (at least the dtype's eps).
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
    # CG stops at a relative residual its dtype can reach: below eps it runs on
    # round-off until p.Ap underflows and alpha = 0/0 turns u into NaN.
    tol = max(cg_tol, float(jnp.finfo(b.dtype).eps))
    u, _ = jax.scipy.sparse.linalg.cg(neg_hessian, b, tol=tol, maxiter=cg_iters)
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

    def log_prob(th, tup):
        pi = logit_policy(mdp, th)
        return jnp.sum(jnp.log(pi[tup.states, tup.actions]))

    scores = jax.vmap(jax.grad(log_prob), in_axes=(None, 0))(logits, tuples)
    baseline = "leave_one_out" if n > 1 else "none"
    weights = jax.lax.stop_gradient(centered_losses(losses, baseline))
    grad_theta = jnp.mean(weights[:, None, None] * scores, axis=0)
    grad_x = jax.tree.map(lambda g: jnp.mean(g, axis=0), grad_x)
    return grad_x, grad_theta, jnp.mean(losses)


def estimator(params: Params) -> Estimator:
    """A-PARL's hyper-gradient at the current logits; metrics ``f``
    (``f(x_k, pi_theta_k)``, or the sample mean of the loss), ``inner_residual``
    (``‖grad_theta J‖`` after the ``K`` steps), ``lower_gap`` (``V*(rho) -
    J(theta_k)``) and ``cg_residual``."""
    num_samples = params.num_samples

    def init(problem: BilevelProblem, x0: PyTree, key: PRNGKey) -> LogitFollower:
        if num_samples is not None:
            check_trajectory_problem(problem, "sampled PARL")
        return LogitFollower(jnp.zeros(problem.mdp.P.shape[-3:-1], problem.mdp.P.dtype))

    def estimate(follower: LogitFollower, problem: BilevelProblem, x, key):
        mdp = problem.mdp
        reward = problem.reward(x)
        ascent = jax.grad(follower_value, argnums=2)

        def pg(logits, _):
            return logits + params.policy_step * ascent(mdp, reward, logits), None

        logits, _ = jax.lax.scan(pg, follower.logits, None, params.inner_steps)
        if num_samples is None:
            f, (gx, gth) = jax.value_and_grad(
                lambda x, th: problem.objective(x, logit_policy(mdp, th)),
                argnums=(0, 1),
            )(x, logits)
        else:
            gx, gth, f = _sampled_upper_gradients(key, problem, x, logits, num_samples)
        grad, cg_residual = parl_hypergradient(
            problem, x, logits, gx, gth,
            cg_iters=params.cg_iters, cg_tol=params.cg_tol, damping=params.damping,
        )  # fmt: skip
        star = best_response(mdp, reward)
        drawn = 0 if num_samples is None else num_samples * problem.num_trajectories
        drawn *= problem.horizon
        metrics = {
            "f": f,
            "inner_residual": jnp.linalg.norm(ascent(mdp, reward, logits)),
            "lower_gap": mdp.rho @ star.v - follower_value(mdp, reward, logits),
            "cg_residual": cg_residual,
            "transitions": jnp.asarray(drawn, f.dtype),
        }
        return grad, LogitFollower(logits), metrics

    return Estimator(init, estimate)


def make(**kwargs) -> Solver:
    """Builds A-PARL from :class:`Params` fields.

    Deprecated: ``beta`` (use ``optimizer``), ``pg_step`` (use ``policy_step``).

    Raises:
        ValueError/TypeError: a field breaks its rule (the message names it); at
            ``init``, a sampled variant on a problem without a trajectory loss.
    """
    return build_solver(Params, estimator, kwargs, ALIASES)
