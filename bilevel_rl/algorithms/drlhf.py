"""DRLHF: deep RL from human preferences, alternating (Christiano et al. 2017).

A baseline without hyper-gradient coupling (docs/math.md §8). Per iteration:

1. reward step: ``theta <- theta + lr grad_theta L2(r_theta)`` (the Bradley–Terry
   log-likelihood of the preference counts,
   :func:`bilevel_rl.alignment.preference_term`);
2. policy step: ``N`` warm-started soft policy-iteration / PMD steps towards the
   soft-optimal (KL-regularized) policy of the current reward.

Its fixed point is the Bradley–Terry reward ``r̂_P`` and the soft-optimal policy of
``r̂_P`` regularized toward ``mdp.ref_policy`` (uniform when unset). That is the
two-stage RLHF solution only when ``mdp.ref_policy`` is the SFT policy
``pi_SFT`` of the demonstrations (RLHF's reference); with another reference it is
``pi(r̂_P)`` for that reference. Unlike AIHF it ignores the demonstrations in the
reward (they enter only its reported objective ``f``).
Problems are those of :func:`bilevel_rl.alignment.aihf_problem` (``AlignmentData``).

References:
    Christiano et al., "Deep Reinforcement Learning from Human Preferences",
    NeurIPS 2017; docs/math.md §8.
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
    step_or_inf,
    validate,
)
from bilevel_rl.alignment import demo_term, preference_term
from bilevel_rl.problem import BilevelProblem
from bilevel_rl.types import Estimator

DESCRIPTION = (
    "DRLHF (Christiano et al. 2017): alternating Bradley-Terry reward / policy"
)
NEEDS = "alignment"
ALIASES = {"eta": "optimizer.learning_rate", "pmd_eta": "policy_step"}


@dataclasses.dataclass(frozen=True)
class Params:
    """Options of DRLHF (the optimizer ascends ``L2``)."""

    optimizer: Optimizer = option(
        Optimizer(learning_rate=1.0), "the reward's update (ascent on L2)",
        as_optimizer,
    )  # fmt: skip
    inner_steps: int = option(1, "policy steps per iteration", count)
    policy_step: float = option(
        float("inf"), "PMD step of the policy (inf: soft policy iteration)",
        step_or_inf,
    )  # fmt: skip
    track_exact: bool = option(
        True, "record the AIHF objective's exact value and hyper-gradient norm", flag
    )

    def __post_init__(self):
        validate(self)


def estimator(params: Params) -> Estimator:
    """DRLHF's ascent direction ``grad L2`` (``maximize``); metrics ``f``
    (``-(alpha L1(pi_k) + L2(r_k))``) and ``inner_residual``."""

    def estimate(follower: PolicyFollower, problem: BilevelProblem, x, key):
        data = problem.data
        reward, vjp = jax.vjp(problem.reward, x)
        l2, grad_r = jax.value_and_grad(preference_term, argnums=1)(data.wins, reward)
        (g,) = vjp(grad_r)
        policy, change = align_policy(
            problem.mdp, reward, follower.policy, policy_step=params.policy_step,
            inner_steps=params.inner_steps,
        )  # fmt: skip
        f = -(data.alpha * demo_term(data.demo_counts, policy) + l2)
        metrics = {"f": f, "inner_residual": change, "transitions": jnp.zeros_like(f)}
        return g, PolicyFollower(policy), metrics

    return Estimator(init_policy_follower, estimate, maximize=True)


def make(**kwargs) -> Solver:
    """Builds DRLHF from :class:`Params` fields.

    Deprecated: ``eta`` (use ``optimizer``), ``pmd_eta`` (``policy_step``).

    Raises:
        ValueError/TypeError: a field breaks its rule (the message names it).
    """
    return build_solver(Params, estimator, kwargs, ALIASES)
