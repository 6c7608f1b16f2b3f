"""The solver protocol shared by every algorithm, and shared validation/metrics.

An algorithm is an optax-style pure pair (DESIGN.md):

* ``init(problem, key) -> state``
* ``step(state, problem) -> (state, metrics)``

with hyper-parameters closed over by the module's ``make(...)``. ``state`` is a
``NamedTuple`` that carries its own PRNG key; ``metrics`` is a dict of scalars.
:func:`bilevel_rl.algorithms.run` (:mod:`.runner`) scans ``step`` inside one
``jit`` and, for a batch of problems, ``jax.vmap``-s the loop over problems and keys.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from bilevel_rl.hypergrad import value_and_hypergradient
from bilevel_rl.problem import BilevelProblem
from bilevel_rl.types import PRNGKey, PyTree


class Solver(NamedTuple):
    """An algorithm as a pure ``(init, step)`` pair.

    Attributes:
        init: ``init(problem, key) -> state``.
        step: ``step(state, problem) -> (state, metrics)``; ``metrics`` is a dict of
            scalar arrays recorded once per iteration by :func:`run`.
    """

    init: Callable[[BilevelProblem, PRNGKey], Any]
    step: Callable[[Any, BilevelProblem], tuple[Any, dict]]


# ------------------------------------------------------------- shared validation


def check_positive(name: str, value, *, integer: bool = False, allow_zero=False):
    """Raises ``ValueError`` naming ``name`` unless ``value`` is finite and > 0."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: must be a number, got {value!r}") from None
    if integer and number != int(number):
        raise ValueError(f"{name}: must be an integer, got {value!r}")
    ok = number >= 0 if allow_zero else number > 0
    if not (jnp.isfinite(number) and ok):
        rule = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}: must be finite and {rule}, got {value!r}")
    return int(number) if integer else number


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
        out = jax.eval_shape(single.reward_fn, single.data, x0)
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


def exact_metrics(problem: BilevelProblem, x: PyTree) -> dict:
    """``exact_f = f(x, pi*_x)`` and ``exact_grad_norm = ‖∇φ(x)‖`` (MATH.md §2).

    One follower solve (soft policy iteration) and one closed-form adjoint
    hyper-gradient of ``problem.upper``; used by every algorithm's
    ``track_exact`` option.
    """
    reward_fn, upper = problem.bind()
    f, grad = value_and_hypergradient(
        upper, reward_fn, x, problem.mdp, solver_method="policy_iteration"
    )
    return {"exact_f": f, "exact_grad_norm": tree_norm(grad)}
