"""Oracle hyper-gradient descent: ``x <- x - beta ∇φ(x)`` with the exact §2 gradient.

Each iteration solves the follower's problem to ``tol`` (soft policy iteration by
default, a handful of ``S x S`` solves) and takes the closed-form adjoint
hyper-gradient of MATH.md §2. It is the reference the other algorithms are
compared against.
"""

from __future__ import annotations

from typing import NamedTuple

import optax

from bilevel_rl.algorithms.base import Solver, check_positive, tree_norm
from bilevel_rl.hypergrad import value_and_hypergradient
from bilevel_rl.problem import BilevelProblem
from bilevel_rl.types import PRNGKey, PyTree


class ExactState(NamedTuple):
    """Iterate of exact hyper-gradient descent: ``x``, optax state and a key."""

    x: PyTree
    opt_state: optax.OptState
    key: PRNGKey


def make(
    *,
    beta: float = 1e-2,
    optimizer: optax.GradientTransformation | None = None,
    tol: float = 1e-10,
    max_iters: int = 10_000,
    solver_method: str = "policy_iteration",
) -> Solver:
    """Builds exact (oracle) hyper-gradient descent.

    Args:
        beta: step size of the default ``optax.sgd(beta)``.
        optimizer: any optax transformation of the exact gradient.
        tol: accuracy of the follower's solve.
        max_iters: cap on the follower's solver iterations.
        solver_method: ``"policy_iteration"`` or ``"value_iteration"``.

    Returns:
        A :class:`~bilevel_rl.algorithms.base.Solver` recording ``f``
        (``f(x_k, pi*_{x_k})``), ``grad_norm`` and ``exact_grad_norm`` (both
        ``‖∇φ(x_k)‖``), ``exact_f``.

    Raises:
        ValueError: non-positive ``beta``, negative ``tol`` or ``max_iters < 1``.
    """
    beta = check_positive("beta", beta)
    tol = check_positive("tol", tol, allow_zero=True)
    max_iters = check_positive("max_iters", max_iters, integer=True)
    opt = optimizer if optimizer is not None else optax.sgd(beta)

    def init(problem: BilevelProblem, key: PRNGKey) -> ExactState:
        return ExactState(problem.x0, opt.init(problem.x0), key)

    def step(state: ExactState, problem: BilevelProblem):
        reward_fn, upper = problem.bind()
        f, grad = value_and_hypergradient(
            upper,
            reward_fn,
            state.x,
            problem.mdp,
            method="closed_form",
            tol=tol,
            max_iters=max_iters,
            solver_method=solver_method,
        )
        updates, opt_state = opt.update(grad, state.opt_state, state.x)
        x = optax.apply_updates(state.x, updates)
        norm = tree_norm(grad)
        metrics = {
            "grad_norm": norm,
            "f": f,
            "exact_grad_norm": norm,
            "exact_f": f,
        }
        return ExactState(x, opt_state, state.key), metrics

    return Solver(init, step)
