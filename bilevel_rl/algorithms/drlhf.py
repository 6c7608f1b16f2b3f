"""DRLHF: deep RL from human preferences, alternating (Christiano et al. 2017).

A baseline without hyper-gradient coupling (MATH.md §8). Per iteration:

1. reward step: ``theta <- theta + eta grad_theta L2(r_theta)`` (the Bradley–Terry
   log-likelihood of the preference counts,
   :func:`bilevel_rl.alignment.preference_term`);
2. policy step: ``N`` warm-started soft policy-iteration / PMD steps towards the
   soft-optimal (KL-regularized) policy of the current reward.

Its fixed point is the two-stage RLHF solution (BT reward, then the regularized
optimal policy); unlike AIHF it ignores the demonstrations in the reward.
Problems are those of :func:`bilevel_rl.alignment.aihf_problem` (``AlignmentData``).

References:
    Christiano et al., "Deep Reinforcement Learning from Human Preferences",
    NeurIPS 2017; MATH.md §8.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from bilevel_rl.algorithms.base import Solver, check_positive, exact_metrics, tree_norm
from bilevel_rl.algorithms.sobirl import align_policy
from bilevel_rl.alignment import demo_term, preference_term
from bilevel_rl.problem import BilevelProblem
from bilevel_rl.soft import soft_policy
from bilevel_rl.types import Array, PRNGKey, PyTree


class DRLHFState(NamedTuple):
    """Iterate of DRLHF: reward parameters, current policy, optax state, key."""

    x: PyTree
    policy: Array
    opt_state: optax.OptState
    key: PRNGKey


def make(
    *,
    eta: float = 1.0,
    inner_steps: int = 1,
    pmd_eta: float = float("inf"),
    optimizer: optax.GradientTransformation | None = None,
    track_exact: bool = True,
) -> Solver:
    """Builds DRLHF.

    Args:
        eta: reward step size (ascent on ``L2``; default ``optax.sgd(eta)``).
        inner_steps: policy steps per iteration.
        pmd_eta: PMD step (``inf``: soft policy iteration).
        optimizer: optax transformation of ``-grad L2``.
        track_exact: record the AIHF objective's exact value and hyper-gradient
            norm at ``theta_k`` (how far the alternating scheme is from AIHF).

    Returns:
        A :class:`~bilevel_rl.algorithms.base.Solver` with metrics ``grad_norm``
        (‖grad L2‖), ``f`` (``-(alpha L1(pi_k) + L2(r_k))``), ``inner_residual``.

    Raises:
        ValueError: non-positive ``eta``/``pmd_eta`` or ``inner_steps < 1``.
    """
    eta = check_positive("eta", eta)
    inner_steps = check_positive("inner_steps", inner_steps, integer=True)
    if pmd_eta != float("inf"):
        pmd_eta = check_positive("pmd_eta", pmd_eta)
    opt = optimizer if optimizer is not None else optax.sgd(eta)

    def init(problem: BilevelProblem, key: PRNGKey) -> DRLHFState:
        mdp = problem.mdp
        policy = soft_policy(mdp, jnp.zeros(mdp.P.shape[-3:-1], mdp.P.dtype))
        return DRLHFState(problem.x0, policy, opt.init(problem.x0), key)

    def step(state: DRLHFState, problem: BilevelProblem):
        data = problem.data
        reward, vjp = jax.vjp(problem.reward, state.x)
        l2, grad_r = jax.value_and_grad(preference_term, argnums=1)(data.wins, reward)
        (g,) = vjp(grad_r)
        policy, change = align_policy(
            problem, reward, state.policy, eta=pmd_eta, inner_steps=inner_steps,
            inner_tol=0.0,
        )  # fmt: skip
        f = -(data.alpha * demo_term(data.demo_counts, policy) + l2)
        metrics = {"grad_norm": tree_norm(g), "f": f, "inner_residual": change}
        if track_exact:
            metrics.update(exact_metrics(problem, state.x))
        updates, opt_state = opt.update(
            jax.tree.map(jnp.negative, g), state.opt_state, state.x
        )
        x = optax.apply_updates(state.x, updates)
        return DRLHFState(x, policy, opt_state, state.key), metrics

    return Solver(init, step)
