"""AIHF: alignment with integrated human feedback (AIHF paper, Algorithm 1).

Maximizes ``L(theta) = alpha L1(pi_theta) + L2(r_theta)`` where ``pi_theta`` is the
KL-regularized soft-optimal policy of ``r_theta`` (:mod:`bilevel_rl.alignment`,
docs/math.md §6). Per iteration ``k``:

1. policy alignment: ``N`` warm-started soft policy iteration / PMD steps towards
   ``pi_{theta_k}`` (``pi_{k+1}``);
2. ``g1 = (1/tau) J^T (mu_demo - mu_{pi_{k+1}})`` (Lemma 5.1), with ``mu`` the
   discounted state-action visitation per trajectory: ``mu_demo`` is
   ``data.demo_counts``; ``mu_pi`` is exact (``num_samples=None``) or the
   average over ``num_samples`` sampled agent trajectories of ``horizon`` steps;
3. ``g2 = J^T grad_r L2(r_theta)`` (exact: ``L2`` is a sum over the preference
   counts);
4. ``theta_{k+1} = theta_k + lr (alpha g1 + g2)`` (any optax transformation of
   ``-(alpha g1 + g2)``).

Lemma 5.1 holds at the exact ``pi_theta`` and when the demonstrations' visitation is
that of trajectories of the same MDP from ``rho``; with few alignment steps ``g1``
is the paper's approximation. The problem is :func:`bilevel_rl.alignment.aihf_problem`
(or any ``BilevelProblem`` whose ``data`` is an ``AlignmentData``).

References:
    Li et al., "Joint Demonstration and Preference Learning Improves Policy
    Alignment with Human Feedback", Algorithm 1 and Lemma 5.1; docs/math.md §6.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from bilevel_rl.algorithms.base import Solver, build_solver
from bilevel_rl.algorithms.follower import (
    PolicyFollower,
    align_policy,
    init_policy_follower,
)
from bilevel_rl.algorithms.params import (
    Optimizer,
    as_optimizer,
    count,
    flag,
    option,
    optional,
    step_or_inf,
    validate,
)
from bilevel_rl.alignment import AlignmentData, demo_term, preference_term
from bilevel_rl.problem import BilevelProblem
from bilevel_rl.sampling import rollout, visitation_counts
from bilevel_rl.soft import occupancy_measure
from bilevel_rl.types import Estimator, PyTree

DESCRIPTION = "AIHF (Li et al. 2024, Alg. 1): demonstrations + preferences, Lemma 5.1"
NEEDS = "alignment"
ALIASES = {
    "eta": "optimizer.learning_rate",
    "pmd_eta": "policy_step",
    "num_trajectories": "num_samples",
}


@dataclasses.dataclass(frozen=True)
class Params:
    """Options of AIHF (the optimizer ascends ``L``)."""

    optimizer: Optimizer = option(
        Optimizer(learning_rate=1.0), "the reward's update (ascent on L)", as_optimizer
    )
    inner_steps: int = option(10, "N policy-alignment steps per iteration", count)
    policy_step: float = option(
        float("inf"), "PMD step of the alignment (inf: soft policy iteration)",
        step_or_inf,
    )  # fmt: skip
    num_samples: int | None = option(
        None, "agent trajectories per iteration for mu_pi (unset: exact)",
        optional(count),
    )  # fmt: skip
    horizon: int = option(1, "steps per sampled agent trajectory", count)
    track_exact: bool = option(
        True, "record exact_f = -L(theta) and exact_grad_norm", flag
    )

    def __post_init__(self):
        validate(self)


def lemma51_gradient(problem: BilevelProblem, x, policy, agent_visits) -> PyTree:
    """``alpha g1 + g2`` at ``(x, policy)`` given the agent's visitation ``[S, A]``."""
    data: AlignmentData = problem.data
    reward, vjp = jax.vjp(problem.reward, x)
    grad_l2 = jax.grad(preference_term, argnums=1)(data.wins, reward)
    cot = data.alpha * (data.demo_counts - agent_visits) / problem.mdp.tau + grad_l2
    (g,) = vjp(cot)
    return g


def estimator(params: Params) -> Estimator:
    """AIHF's ascent direction ``alpha g1 + g2`` (``maximize``); metrics ``f``
    (``-(alpha L1(pi_k) + L2(r_k))``) and ``inner_residual``."""
    num_samples, horizon = params.num_samples, params.horizon

    def agent_visits(mdp, policy, key):
        if num_samples is None:
            return occupancy_measure(mdp, policy) / (1.0 - mdp.gamma)
        trajs = rollout(key, mdp, policy, horizon=horizon, num_trajectories=num_samples)
        counts = visitation_counts(trajs, mdp.num_states, mdp.num_actions, mdp.gamma)
        return counts / num_samples

    def estimate(follower: PolicyFollower, problem: BilevelProblem, x, key):
        reward = problem.reward(x)
        policy, change = align_policy(
            problem.mdp,
            reward,
            follower.policy,
            policy_step=params.policy_step,
            inner_steps=params.inner_steps,
        )
        visits = agent_visits(problem.mdp, policy, key)
        g = lemma51_gradient(problem, x, policy, visits)
        data = problem.data
        L = data.alpha * demo_term(data.demo_counts, policy) + preference_term(
            data.wins, reward
        )
        drawn = 0 if num_samples is None else num_samples * horizon
        metrics = {
            "f": -L,
            "inner_residual": change,
            "transitions": jnp.asarray(drawn, L.dtype),
        }
        return g, PolicyFollower(policy), metrics

    return Estimator(init_policy_follower, estimate, maximize=True)


def make(**kwargs) -> Solver:
    """Builds AIHF (Algorithm 1) from :class:`Params` fields.

    Deprecated: ``eta`` (use ``optimizer``), ``pmd_eta`` (``policy_step``),
    ``num_trajectories`` (``num_samples``).

    Raises:
        ValueError/TypeError: a field breaks its rule (the message names it).
    """
    return build_solver(Params, estimator, kwargs, ALIASES)
