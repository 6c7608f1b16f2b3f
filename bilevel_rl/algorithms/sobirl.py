"""SoBiRL: model-free hyper-gradient descent (SoBiRL paper, Algorithm 1).

Per outer iteration ``k`` (docs/math.md §4):

1. bring ``pi_k`` close to ``pi*_{x_k}`` by ``N`` steps of entropy-regularized policy
   mirror descent warm-started at ``pi_{k-1}``
   (:func:`bilevel_rl.soft.policy_mirror_descent_step`, step ``policy_step``;
   ``inf`` is soft policy iteration) **[reconstructed inner rule]**; optionally stop
   early once successive policies differ by less than ``inner_tol``;
2. estimate (12)+(13) of Prop. 5.2 with ``pi_k`` in place of ``pi*``: ``D`` tuples
   of trajectories sampled from ``pi_k`` and the exact tabular ``∂Q/∂V`` of
   Prop. 5.1 (:func:`bilevel_rl.estimators.sampled_outer_hypergradient`), or, with
   ``num_samples`` unset, the exact expectation (:func:`exact_outer_hypergradient`):
   the deterministic method of the paper's analysis (its ``O(1/K)`` rate); the
   sampled estimate's score term optionally with the leave-one-out baseline
   (``baseline``; :func:`bilevel_rl.estimators.centered_losses`);
3. ``x <- x - lr ĝ`` (or any optax transformation of ``ĝ``).

The problem must carry a ``trajectory_loss`` (see :class:`bilevel_rl.BilevelProblem`).

References:
    Yang, Gao & Yuan, "Bilevel Reinforcement Learning via the Development of
    Hyper-gradient without Lower-Level Convexity", AISTATS 2025, Algorithm 1.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from bilevel_rl.algorithms.base import Solver, build_solver
from bilevel_rl.algorithms.follower import (
    PolicyFollower,
    align_policy,
    check_trajectory_problem,
    init_policy_follower,
)
from bilevel_rl.algorithms.params import (
    Optimizer,
    as_optimizer,
    choice,
    count,
    flag,
    nonnegative,
    option,
    optional,
    step_or_inf,
    validate,
)
from bilevel_rl.estimators import (
    BASELINES,
    check_baseline,
    sampled_outer_hypergradient,
)
from bilevel_rl.hypergrad import hypergradient_at_policy
from bilevel_rl.problem import BilevelProblem
from bilevel_rl.types import Estimator, PRNGKey, PyTree

DESCRIPTION = "SoBiRL (Alg. 1): PMD inner loop, exact dQ/dV, sampled outer trajectories"
NEEDS = "trajectories"

ALIASES = {"beta": "optimizer.learning_rate", "eta": "policy_step"}


@dataclasses.dataclass(frozen=True)
class Params:
    """Options of SoBiRL."""

    optimizer: Optimizer = option(
        Optimizer(learning_rate=1e-2), "the leader's update", as_optimizer
    )
    inner_steps: int = option(10, "N, the most PMD steps per iteration", count)
    policy_step: float = option(
        float("inf"), "PMD step of the follower (inf: soft policy iteration)",
        step_or_inf,
    )  # fmt: skip
    inner_tol: float = option(
        0.0, "stop the inner loop once the policy moves less (0: always N)",
        nonnegative,
    )  # fmt: skip
    num_samples: int | None = option(
        16,
        "D trajectory tuples per estimate (unset: the exact outer expectation, "
        "the deterministic method the paper analyses)",
        optional(count),
    )
    baseline: str = option(
        "none",
        "score-term baseline of the sampled estimate: none (as in the paper) or "
        "leave_one_out (the mean loss of the other tuples: unbiased, less variance)",
        choice(*BASELINES),
    )
    track_exact: bool = option(True, "record exact_f and exact_grad_norm", flag)

    def __post_init__(self):
        validate(self)
        if self.num_samples is not None:
            check_baseline(self.baseline, self.num_samples)
        elif self.baseline != "none":
            raise ValueError(
                "baseline: applies to the sampled estimate only; set num_samples or "
                "leave baseline = 'none'"
            )


def exact_outer_hypergradient(problem: BilevelProblem, x, policy):
    """``(f(x, pi), (12)+(13) at pi)``: Prop. 5.2's exact expectation at the policy
    ``pi`` (not ``pi*``), by the tabular closed form
    (:func:`bilevel_rl.hypergrad.hypergradient_at_policy`). ``problem.upper`` must be
    the exact expectation of the trajectory loss (tested against enumeration).
    """
    reward_fn, upper = problem.bind()
    return hypergradient_at_policy(upper, reward_fn, x, problem.mdp, policy)


def estimator(params: Params) -> Estimator:
    """SoBiRL's estimate; metrics ``f`` (sample mean of the loss) and
    ``inner_residual`` (sup-norm change of the last PMD step)."""

    def init(problem: BilevelProblem, x0: PyTree, key: PRNGKey) -> PolicyFollower:
        check_trajectory_problem(problem, "SoBiRL")
        return init_policy_follower(problem, x0, key)

    def estimate(follower: PolicyFollower, problem: BilevelProblem, x, key):
        pi, change = align_policy(
            problem.mdp,
            problem.reward(x),
            follower.policy,
            policy_step=params.policy_step,
            inner_steps=params.inner_steps,
            inner_tol=params.inner_tol,
        )
        if params.num_samples is None:
            f, g_hat = exact_outer_hypergradient(problem, x, pi)
            drawn = 0
        else:
            f, g_hat = sampled_outer_hypergradient(
                key,
                problem.loss,
                problem.reward,
                x,
                problem.mdp,
                pi,
                horizon=problem.horizon,
                num_samples=params.num_samples,
                num_trajectories=problem.num_trajectories,
                baseline=params.baseline,
                with_value=True,
            )
            drawn = params.num_samples * problem.num_trajectories * problem.horizon
        metrics = {
            "f": f,
            "inner_residual": change,
            "transitions": jnp.asarray(drawn, f.dtype),
        }
        return g_hat, PolicyFollower(pi), metrics

    return Estimator(init, estimate)


def make(**kwargs) -> Solver:
    """Builds SoBiRL from :class:`Params` fields.

    Deprecated: ``beta`` (use ``optimizer``), ``eta`` (use ``policy_step``).

    Raises:
        ValueError/TypeError: a field breaks its rule (the message names it); at
            ``init``, a problem without a trajectory loss.
    """
    return build_solver(Params, estimator, kwargs, ALIASES)
