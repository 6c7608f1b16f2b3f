"""The protocol every algorithm is built on: an estimator composed into a solver.

An algorithm has two parts (docs/algorithms.md):

* an :class:`~bilevel_rl.types.Estimator` ``(init, estimate)``: the follower's
  state and, at the leader's ``x``, an estimate of the hyper-gradient of the upper
  objective, the follower's next state and the estimator's own metrics;
* :func:`make_solver`, which owns what every algorithm shares: the optax update
  of ``x`` (``optimizer`` only), the sign (an estimator of a maximized objective
  sets ``maximize``), the PRNG key, the common metrics with one meaning each and the
  exact metrics of ``track_exact``.

The result is an optax-style pure pair, a :class:`Solver`:

* ``init(problem, key) -> state``
* ``step(state, problem) -> (state, metrics)``

and :func:`bilevel_rl.experiment.run` scans ``step`` inside one ``jit`` and, for a
batch of problems, ``jax.vmap``-s the loop over problems and keys.

Common metrics (every solver, every iteration, at ``x_k`` before its update):

* ``grad_norm``: ``‖d_k‖``, the norm of the direction handed to the optimizer (the
  gradient of the minimized objective; after momentum where there is momentum);
* ``f``: the estimator's value of the upper objective at ``(x_k, pi_k)`` (a sample
  mean for sampled estimators; for a maximized objective ``L``, ``f = -L``);
* ``inner_residual``: how far the follower is from its target, in the estimator's
  own measure (documented per algorithm);
* ``transitions``: the transitions ``(s, a, s')`` drawn from the simulator in this
  iteration (0 for model-based estimators), so that methods compare per sample;
* with ``track_exact``: ``exact_f = f(x_k, pi*_{x_k})`` and ``exact_grad_norm =
  ‖∇φ(x_k)‖`` (:func:`exact_metrics`, docs/math.md §2).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from bilevel_rl.algorithms.follower import BEST_RESPONSE_TOL
from bilevel_rl.algorithms.params import build_optimizer, check_positive, from_kwargs
from bilevel_rl.hypergrad import value_and_hypergradient
from bilevel_rl.problem import BilevelProblem
from bilevel_rl.types import Estimator, Metrics, PRNGKey, PyTree

__all__ = [
    "COMMON_METRICS",
    "EXACT_METRICS",
    "Estimator",
    "Solver",
    "SolverState",
    "build_solver",
    "check_positive",
    "check_x0",
    "exact_metrics",
    "make_solver",
    "tree_norm",
]

COMMON_METRICS = ("grad_norm", "f", "inner_residual", "transitions")
"""Metrics every solver records (see the module docstring for their meaning)."""

EXACT_METRICS = ("exact_f", "exact_grad_norm")
"""Metrics added by ``track_exact``."""


class Solver(NamedTuple):
    """An algorithm as a pure ``(init, step)`` pair.

    Attributes:
        init: ``init(problem, key) -> state``.
        step: ``step(state, problem) -> (state, metrics)``; ``metrics`` is a dict of
            scalar arrays recorded once per iteration by ``run``.
        untracked_step: ``step`` without its diagnostic metrics (the
            :data:`EXACT_METRICS` of ``track_exact``: one exact follower solve
            each), the same new state; ``None`` when ``step`` has none to leave
            out. :func:`bilevel_rl.experiment.run` takes it at the iterations
            whose per-run metrics it does not record.
    """

    init: Callable[[BilevelProblem, PRNGKey], Any]
    step: Callable[[Any, BilevelProblem], tuple[Any, Metrics]]
    untracked_step: Callable[[Any, BilevelProblem], tuple[Any, Metrics]] | None = None


class SolverState(NamedTuple):
    """Iterate of a solver made by :func:`make_solver`.

    Attributes:
        x: the leader's variable ``x_k`` (pytree like ``problem.x0``).
        follower: the estimator's state (its own ``NamedTuple``).
        opt_state: the optax state of the update of ``x``.
        key: PRNG key; split once per step, the second half goes to the estimator.
    """

    x: PyTree
    follower: Any
    opt_state: optax.OptState
    key: PRNGKey


def make_solver(
    estimator: Estimator,
    optimizer: optax.GradientTransformation | Any,
    *,
    track_exact: bool = True,
) -> Solver:
    """Composes an estimator and the leader's update into a :class:`Solver`.

    Args:
        estimator: ``Estimator(init, estimate, maximize)``.
        optimizer: an optax transformation, or an
            :class:`~bilevel_rl.algorithms.params.Optimizer` (built here). It is
            applied to the gradient of the minimized objective (the estimate, or its
            negative when ``estimator.maximize``).
        track_exact: also record :data:`EXACT_METRICS` (one exact follower solve
            and one adjoint per iteration).

    Returns:
        A :class:`Solver` whose state is a :class:`SolverState`.
    """
    opt = build_optimizer(optimizer)

    def init(problem: BilevelProblem, key: PRNGKey) -> SolverState:
        follower = estimator.init(problem, problem.x0, key)
        return SolverState(problem.x0, follower, opt.init(problem.x0), key)

    def step(state: SolverState, problem: BilevelProblem, tracked: bool = True):
        key, k_est = jax.random.split(state.key)
        grad, follower, own = estimator.estimate(
            state.follower, problem, state.x, k_est
        )
        if estimator.maximize:
            grad = jax.tree.map(jnp.negative, grad)
        metrics = {"grad_norm": tree_norm(grad), **own}
        if track_exact and tracked:
            metrics.update(exact_metrics(problem, state.x))
        updates, opt_state = opt.update(grad, state.opt_state, state.x)
        x = optax.apply_updates(state.x, updates)
        return SolverState(x, follower, opt_state, key), metrics

    if not track_exact:
        return Solver(init, step)
    return Solver(init, step, functools.partial(step, tracked=False))


def build_solver(params_cls, estimator_fn, options: dict, aliases=None) -> Solver:
    """The body of every ``algorithms.<name>.make(**options)``.

    ``params_cls(**options)`` (deprecated names in ``aliases`` mapped, with a
    warning), then :func:`make_solver` of ``estimator_fn(params)`` with
    ``params.optimizer`` and ``params.track_exact`` (``False`` for a ``Params``
    without it: its estimator reports the exact metrics itself).

    Raises:
        TypeError/ValueError: an unknown option, or one that breaks its rule.
    """
    params = from_kwargs(params_cls, options, aliases or {})
    track = getattr(params, "track_exact", False)
    return make_solver(estimator_fn(params), params.optimizer, track_exact=track)


# ------------------------------------------------------------- shared helpers


def check_x0(problem: BilevelProblem, x0: PyTree | None = None) -> None:
    """Checks that ``x0`` (default ``problem.x0``) fits ``problem.reward_fn``.

    Raises:
        ValueError: the reward model rejects ``x0`` or does not return ``[S, A]``.
    """
    x0 = problem.x0 if x0 is None else x0
    mdp = problem.mdp
    single = jax.tree.map(lambda a: a[0], problem) if mdp.P.ndim == 4 else problem
    if mdp.P.ndim == 4:
        x0 = jax.tree.map(lambda a: a[0], x0)
    try:
        out = jax.eval_shape(single.reward, x0)
    except Exception as err:  # shape errors inside the user's reward model
        raise ValueError(f"x0: does not fit the reward model ({err})") from None
    expected = (mdp.num_states, mdp.num_actions)
    if out.shape != expected:
        raise ValueError(
            f"x0: the reward model returns shape {out.shape}, expected [S, A] = "
            f"{expected}"
        )


def tree_norm(tree: PyTree) -> jax.Array:
    """Euclidean norm of a pytree of arrays."""
    return optax.tree.norm(tree)


def tree_finite(tree: PyTree) -> jax.Array:
    """``True`` iff every float/complex leaf of ``tree`` is finite (keys skipped)."""
    checks = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(x.dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack(checks)) if checks else jnp.asarray(True)


def exact_metrics(problem: BilevelProblem, x: PyTree) -> Metrics:
    """``exact_f = f(x, pi*_x)`` and ``exact_grad_norm = ‖∇φ(x)‖`` (docs/math.md §2).

    One follower solve (soft policy iteration to the round-off floor,
    :data:`~bilevel_rl.algorithms.follower.BEST_RESPONSE_TOL`) and one closed-form
    adjoint hyper-gradient of ``problem.upper``.
    """
    reward_fn, upper = problem.bind()
    f, grad = value_and_hypergradient(
        upper,
        reward_fn,
        x,
        problem.mdp,
        tol=BEST_RESPONSE_TOL,
        solver_method="policy_iteration",
    )
    return {"exact_f": f, "exact_grad_norm": tree_norm(grad)}
