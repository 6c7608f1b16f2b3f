"""The solver protocol shared by every algorithm, and the scanned ``run`` loop.

An algorithm is an optax-style pure pair (DESIGN.md):

* ``init(problem, key) -> state``
* ``step(state, problem) -> (state, metrics)``

with hyper-parameters closed over by the module's ``make(...)``. ``state`` is a
``NamedTuple`` that carries its own PRNG key; ``metrics`` is a dict of scalars.
:func:`run` scans ``step`` ``num_iters`` times inside one ``jit`` and, for a batch of
problems (a leading axis on ``problem.mdp.P``), ``jax.vmap``-s the whole loop over
problems and keys.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from bilevel_rl.distributed import batch_map, cache_bytes
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


def run(
    solver: Solver,
    problem: BilevelProblem,
    key: PRNGKey,
    num_iters: int,
    *,
    chunk_size: int | None = None,
) -> tuple[Any, dict]:
    """Runs ``num_iters`` steps of ``solver`` in one compiled ``lax.scan``.

    Args:
        solver: from an algorithm's ``make(...)``.
        problem: one instance, or a batch (``problem.mdp.P: [B, S, A, S]`` and every
            other array field with a leading ``B``).
        key: a PRNG key; for a batch either one key (split into ``B``) or ``[B]``
            keys (e.g. one per seed).
        num_iters: number of outer iterations (static).
        chunk_size: for a batch, the number of instances that run all their
            iterations together before the next chunk starts (``lax.map`` with
            ``batch_size``); ``None`` picks enough instances to fill about half the
            L2 cache on CPU (the whole batch on accelerators). Results do not
            depend on it.

    Returns:
        ``(final_state, history)``; ``history`` maps each metric name to an array of
        shape ``[num_iters]`` (``[B, num_iters]`` for a batch).

    Raises:
        ValueError: ``num_iters < 1``, ``problem.x0`` does not fit the reward model,
            or a batch of keys of the wrong length.
    """
    num_iters = int(num_iters)
    if num_iters < 1:
        raise ValueError(f"num_iters: must be >= 1, got {num_iters}")
    check_x0(problem)
    batch = problem.mdp.P.shape[:-3]
    if not batch:
        return _run_single(solver, problem, key, num_iters)
    if len(batch) != 1:
        raise ValueError(f"problem.mdp.P: expected at most one batch axis, got {batch}")
    keys = key if key.shape == batch else jax.random.split(key, batch[0])
    if keys.shape != batch:
        raise ValueError(f"key: expected one key or {batch[0]} keys, got {key.shape}")
    if chunk_size is None:
        chunk_size = _auto_chunk(problem, batch[0])
    chunk_size = check_positive("chunk_size", chunk_size, integer=True)
    return _run_batch(solver, problem, keys, num_iters, min(chunk_size, batch[0]))


def _auto_chunk(problem: BilevelProblem, batch_size: int) -> int:
    if jax.default_backend() != "cpu":
        return batch_size
    per_instance = sum(x.nbytes for x in jax.tree.leaves(problem)) // batch_size
    return max(1, min(batch_size, (cache_bytes() // 2) // max(per_instance, 1)))


def _scan(solver, problem, key, num_iters):
    state = solver.init(problem, key)

    def body(state, _):
        return solver.step(state, problem)

    return jax.lax.scan(body, state, None, length=num_iters)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _run_single(solver, problem, key, num_iters):
    return _scan(solver, problem, key, num_iters)


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _run_batch(solver, problem, keys, num_iters, chunk_size):
    def one(args):
        return _scan(solver, *args, num_iters)

    return batch_map(one, (problem, keys), chunk_size=chunk_size)


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


def all_finite(tree: PyTree) -> jax.Array:
    """``True`` iff every leaf of ``tree`` is finite everywhere."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


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
