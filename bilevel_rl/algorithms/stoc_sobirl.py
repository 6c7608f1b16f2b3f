"""Stoc-SoBiRL: fully sampled hyper-gradients with momentum (Algorithms 3–4).

Per outer iteration ``k`` (docs/math.md §5):

1. ``pi_k``: ``N`` warm-started PMD steps toward ``pi*_{x_k}`` (as in SoBiRL);
2. ``ĝ(x_k, pi_k; Xi_k)``: Algorithm 3 with ``D`` tuples, ``E`` generative rollouts
   of length ``L`` per visited pair
   (:func:`bilevel_rl.estimators.sampled_hypergradient`) **[reconstructed symbols]**;
3. momentum (:mod:`bilevel_rl.algorithms.momentum`): STORM (``momentum="storm"``)
   **[reconstructed; corrected]** — ``Xi_k`` drawn once at ``(x_k, pi_k)`` and the
   same stored trajectories re-evaluated at ``x_{k-1}`` (``sample_reuse="fixed"``)
   or also likelihood-ratio weighted (``"likelihood_ratio"``) — the moving average
   (``"average"``) or none (``"none"``);
4. ``x_{k+1} = x_k - lr_k d_k`` with the optimizer's step; the default is the
   theory's ``lr_k = a / (w + k)^{1/3}`` (``Optimizer(learning_rate=a,
   schedule="inverse_cube_root", offset=w)``), and ``eta_{k+1} = clip(c lr_k^2, 0,
   1)`` with ``c = momentum_scale``.

References:
    Yang, Gao & Yuan, AISTATS 2025, Section 6, Algorithms 3–4; docs/math.md §5.
"""

from __future__ import annotations

import dataclasses

from bilevel_rl.algorithms import momentum as mom
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
    option,
    optional,
    positive,
    step_or_inf,
    unit_interval,
    validate,
)
from bilevel_rl.estimators import (
    draw_hypergradient_samples,
    evaluate_hypergradient_samples,
)
from bilevel_rl.types import Estimator

DESCRIPTION = (
    "Stoc-SoBiRL (Algs. 3-4): fully sampled hyper-gradient with STORM momentum"
)
NEEDS = "trajectories"
MOMENTUM = ("storm", "average", "none")
ALIASES = {
    "a": "optimizer.learning_rate",
    "w": "optimizer.offset",
    "c": "momentum_scale",
    "eta": "policy_step",
}


@dataclasses.dataclass(frozen=True)
class Params:
    """Options of Stoc-SoBiRL (defaults chosen on the reward-shaping suite)."""

    optimizer: Optimizer = option(
        Optimizer(learning_rate=0.5, schedule="inverse_cube_root", offset=10.0),
        "the leader's update: lr_k = a / (w + k)^(1/3) with a = learning_rate, "
        "w = offset",
        as_optimizer,
    )
    momentum: str = option("storm", "storm, average or none", choice(*MOMENTUM))
    momentum_scale: float = option(
        20.0, "c of the momentum schedule eta_{k+1} = clip(c lr_k^2, 0, 1)", positive
    )
    average_weight: float | None = option(
        None, "a constant eta for momentum = average (unset: the schedule)",
        optional(unit_interval),
    )  # fmt: skip
    sample_reuse: str = option(
        "fixed",
        "STORM's previous-point term: the same stored samples (fixed) or also "
        "weighted by their likelihood ratio (likelihood_ratio)",
        choice(*mom.REUSE),
    )
    weight_clip: float = option(
        10.0, "largest likelihood-ratio weight (likelihood_ratio)", positive
    )
    num_samples: int = option(8, "D trajectory tuples per estimate", count)
    num_rollouts: int = option(4, "E generative rollouts per visited pair", count)
    rollout_length: int = option(20, "L steps per rollout (bias O(gamma^L))", count)
    inner_steps: int = option(10, "N PMD steps per iteration", count)
    policy_step: float = option(
        float("inf"), "PMD step of the follower (inf: soft policy iteration)",
        step_or_inf,
    )  # fmt: skip
    track_exact: bool = option(True, "record exact_f and exact_grad_norm", flag)

    def __post_init__(self):
        validate(self)
        if self.momentum != "none" and not isinstance(self.optimizer, Optimizer):
            raise ValueError(
                "optimizer: the momentum schedule reads the step size, so it must "
                "be an Optimizer (name, learning_rate, schedule), not an optax "
                "transformation"
            )


def split_estimator(params: Params) -> mom.SplitEstimator:
    """Algorithm 3 in the two halves the momentum wrappers take."""

    def init(problem, x0, key):
        check_trajectory_problem(problem, "Stoc-SoBiRL")
        return init_policy_follower(problem, x0, key)

    def align(follower: PolicyFollower, problem, x):
        pi, change = align_policy(
            problem.mdp,
            problem.reward(x),
            follower.policy,
            policy_step=params.policy_step,
            inner_steps=params.inner_steps,
        )
        return PolicyFollower(pi), change

    def draw(follower: PolicyFollower, problem, x, key):
        return draw_hypergradient_samples(
            key,
            problem.mdp,
            follower.policy,
            horizon=problem.horizon,
            num_trajectories=problem.num_trajectories,
            num_samples=params.num_samples,
            num_rollouts=params.num_rollouts,
            rollout_length=params.rollout_length,
        )

    def evaluate(samples, problem, x, reweight):
        if reweight is not None:
            reweight = tuple(follower.policy for follower in reweight)
        return evaluate_hypergradient_samples(
            samples,
            problem.loss,
            problem.reward,
            x,
            problem.mdp,
            reweight=reweight,
            clip=params.weight_clip,
            with_value=True,
        )

    return mom.SplitEstimator(init, align, draw, evaluate)


def estimator(params: Params) -> Estimator:
    """Stoc-SoBiRL's direction ``d_k``; metrics ``f`` (sample mean of the loss),
    ``inner_residual``, ``estimate_norm``, ``step_size``, ``momentum_weight``."""
    split = split_estimator(params)
    if params.momentum == "none":
        return mom.plain(split)
    schedule = dict(step_size=params.optimizer.step_size, scale=params.momentum_scale)
    if params.momentum == "storm":
        return mom.storm(split, reuse=params.sample_reuse, **schedule)
    return mom.moving_average(split, weight=params.average_weight, **schedule)


def make(**kwargs) -> Solver:
    """Builds Stoc-SoBiRL from :class:`Params` fields.

    Deprecated: ``a``, ``w`` (use ``optimizer=Optimizer(learning_rate=a,
    schedule="inverse_cube_root", offset=w)``), ``c`` (``momentum_scale``), ``eta``
    (``policy_step``).

    Raises:
        ValueError/TypeError: a field breaks its rule (the message names it); at
            ``init``, a problem without a trajectory loss.
    """
    return build_solver(Params, estimator, kwargs, ALIASES)
