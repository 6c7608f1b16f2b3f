"""Oracle hyper-gradient descent: ``x <- x - lr ∇φ(x)`` with the exact gradient.

Each iteration solves the follower's problem to ``tol`` (soft policy iteration by
default, a handful of ``S x S`` solves) and takes the closed-form adjoint
hyper-gradient of docs/math.md §2. It is the reference the other algorithms are
compared against; its ``f`` and ``grad_norm`` are the exact ones, so it records
``exact_f``/``exact_grad_norm`` without a second solve.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from bilevel_rl.algorithms.base import Solver, build_solver, tree_norm
from bilevel_rl.algorithms.follower import init_no_follower
from bilevel_rl.algorithms.params import (
    Optimizer,
    as_optimizer,
    choice,
    count,
    nonnegative,
    option,
    validate,
)
from bilevel_rl.hypergrad import hypergradient_and_solution
from bilevel_rl.problem import BilevelProblem
from bilevel_rl.types import Estimator

DESCRIPTION = (
    "hyper-gradient descent with the exact adjoint hyper-gradient (the oracle)"
)
NEEDS = None
ALIASES = {"beta": "optimizer.learning_rate"}
"""What a problem must provide (``None``: any ``BilevelProblem``)."""


@dataclasses.dataclass(frozen=True)
class Params:
    """Options of exact hyper-gradient descent."""

    optimizer: Optimizer = option(
        Optimizer(learning_rate=1e-2), "the leader's update", as_optimizer
    )
    tol: float = option(
        1e-10, "residual tolerance of the follower's solve", nonnegative
    )
    max_iters: int = option(10_000, "cap on the follower solver's iterations", count)
    solver_method: str = option(
        "policy_iteration",
        "follower solver: policy_iteration or value_iteration",
        choice("policy_iteration", "value_iteration"),
    )

    def __post_init__(self):
        validate(self)


def estimator(params: Params) -> Estimator:
    """The exact hyper-gradient at ``x``; metrics ``f``, ``inner_residual`` (the
    follower solve's ``‖T(V) - V‖∞``), ``exact_f``, ``exact_grad_norm``."""

    def estimate(follower, problem: BilevelProblem, x, key):
        reward_fn, upper = problem.bind()
        f, grad, sol = hypergradient_and_solution(
            upper,
            reward_fn,
            x,
            problem.mdp,
            tol=params.tol,
            max_iters=params.max_iters,
            solver_method=params.solver_method,
        )
        metrics = {
            "f": f,
            "inner_residual": sol.residual,
            "transitions": jnp.zeros_like(f),
            "exact_f": f,
            "exact_grad_norm": tree_norm(grad),
        }
        return grad, follower, metrics

    return Estimator(init_no_follower, estimate)


def make(**kwargs) -> Solver:
    """Builds exact (oracle) hyper-gradient descent from :class:`Params` fields.

    Deprecated: ``beta`` (use ``optimizer=Optimizer(learning_rate=...)``).

    Raises:
        ValueError/TypeError: a field breaks its rule (the message names it).
    """
    return build_solver(Params, estimator, kwargs, ALIASES)
