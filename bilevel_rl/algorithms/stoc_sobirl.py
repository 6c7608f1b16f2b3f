"""Stoc-SoBiRL: fully sampled hyper-gradients with momentum (Algorithms 3–4).

Per outer iteration ``k`` (docs/math.md §5):

1. ``pi_k``: ``N`` warm-started PMD steps toward ``pi*_{x_k}`` (as in SoBiRL);
2. ``ĝ(x_k, pi_k; Xi_k)``: Algorithm 3 with ``D`` tuples, ``E`` generative rollouts
   of length ``L`` per visited pair
   (:func:`bilevel_rl.estimators.sampled_hypergradient`) **[reconstructed symbols]**
   — constant sizes, or the growing schedule ``(D_k, E_k, L_k)`` of
   :func:`sample_sizes` (``sample_growth = 1/3``: the theorem's configuration);
   the metric ``transitions`` counts the transitions each estimate uses; the score
   term's losses as drawn (``baseline="none"``, the paper's) or minus the mean loss
   of the other tuples (``"leave_one_out"``: unbiased, less variance;
   :func:`bilevel_rl.estimators.centered_losses`);
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

import jax
import jax.numpy as jnp
import numpy as np

from bilevel_rl.algorithms import momentum as mom
from bilevel_rl.algorithms.base import Solver, build_solver, make_solver, tree_norm
from bilevel_rl.algorithms.follower import (
    PolicyFollower,
    align_policy,
    best_response,
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
    positive,
    step_or_inf,
    unit_interval,
    validate,
)
from bilevel_rl.estimators import (
    BASELINES,
    check_baseline,
    draw_hypergradient_samples,
    evaluate_hypergradient_samples,
)
from bilevel_rl.hypergrad import hypergradient
from bilevel_rl.types import Array, Estimator

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
    baseline: str = option(
        "none",
        "score-term baseline: none (Algorithm 3 as written) or leave_one_out (the "
        "mean loss of the other tuples: unbiased, less variance)",
        choice(*BASELINES),
    )
    num_rollouts: int = option(4, "E generative rollouts per visited pair", count)
    rollout_length: int = option(20, "L steps per rollout (bias O(gamma^L))", count)
    sample_growth: float = option(
        0.0,
        "p of the sampling schedule: D_k, E_k = floor((D, E) (1 + k/growth_offset)^p)"
        ", L_k = floor(L (1 + p log(1 + k/growth_offset))) (0: constant D, E, L; "
        "1/3: the theorem's configuration)",
        nonnegative,
    )
    growth_offset: float = option(100.0, "k_0 of the sampling schedule", positive)
    schedule_iters: int | None = option(
        None,
        "K: the sampling schedule stops growing at k = K (its sizes there are the "
        "static shapes); required when sample_growth > 0",
        optional(count),
    )
    inner_steps: int = option(10, "N PMD steps per iteration", count)
    policy_step: float = option(
        float("inf"), "PMD step of the follower (inf: soft policy iteration)",
        step_or_inf,
    )  # fmt: skip
    track_exact: bool = option(True, "record exact_f and exact_grad_norm", flag)

    def __post_init__(self):
        validate(self)
        check_baseline(self.baseline, self.num_samples)
        if self.sample_growth > 0 and self.schedule_iters is None:
            raise ValueError(
                "schedule_iters: required when sample_growth > 0 (the schedule's "
                "largest sizes, at k = schedule_iters, fix the static shapes)"
            )
        if self.momentum != "none" and not isinstance(self.optimizer, Optimizer):
            raise ValueError(
                "optimizer: the momentum schedule reads the step size, so it must "
                "be an Optimizer (name, learning_rate, schedule), not an optax "
                "transformation"
            )


def sample_sizes(params: Params, k, xp=jnp):
    """``(D_k, E_k, L_k)`` of the sampling schedule at iteration ``k``.

    ``t = min(k, K) / k_0``; ``D_k = floor(D (1 + t)^p)``, ``E_k = floor(E (1 + t)^p)``,
    ``L_k = floor(L (1 + p log(1 + t)))`` (``p = sample_growth``, ``k_0 =
    growth_offset``, ``K = schedule_iters``). With ``p = 1/3`` the sampled
    direction's variance (``O(1/(D_k))`` for the tuples, ``O(1/(D_k E_k))`` for the
    rollouts) falls like ``k^{-1/3}``, the step ``lr_k``, and its ``gamma^{L_k}`` bias
    at least as fast: the order at which plain SGD with ``lr_k ~ k^{-1/3}`` reaches
    ``(1/K) sum_k ‖∇φ(x_k)‖² = Õ(K^{-2/3})``. The paper's Theorem 7.7 says only
    "appropriate sampling configurations" with ``D``, ``E`` growing and
    ``L = O(log(1/eps))`` (its explicit sizes are lost) — **[reconstructed]**,
    docs/math.md §5.

    Args:
        params: the options (``p = 0``: the constant ``(D, E, L)``).
        k: ``[]`` iteration (traced, with ``xp = jax.numpy``) or an int
            (``xp = numpy``: the static largest sizes at ``k = K``).

    Returns:
        ``[3]`` int32 array (``jax.numpy``) or a tuple of ints (``numpy``).
    """
    base = (params.num_samples, params.num_rollouts, params.rollout_length)
    if params.sample_growth == 0:
        return xp.asarray(base, xp.int32) if xp is jnp else base
    p = params.sample_growth
    t = xp.minimum(k, params.schedule_iters) / params.growth_offset
    growth = (1.0 + t) ** p
    scales = (growth, growth, 1.0 + p * xp.log1p(t))
    sizes = [xp.floor(n * scale) for n, scale in zip(base, scales)]
    if xp is jnp:  # never above the static sizes, whatever the float rounding
        top = jnp.asarray(sample_sizes(params, params.schedule_iters, np), jnp.int32)
        return jnp.minimum(jnp.stack(sizes).astype(jnp.int32), top)
    return tuple(int(n) for n in sizes)


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

    top = sample_sizes(params, params.schedule_iters, np)  # the static shapes

    def draw(follower: PolicyFollower, problem, x, key, k):
        return draw_hypergradient_samples(
            key,
            problem.mdp,
            follower.policy,
            horizon=problem.horizon,
            num_trajectories=problem.num_trajectories,
            num_samples=top[0],
            num_rollouts=top[1],
            rollout_length=top[2],
            sizes=sample_sizes(params, k) if params.sample_growth > 0 else None,
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
            baseline=params.baseline,
            with_value=True,
        )

    return mom.SplitEstimator(init, align, draw, evaluate)


def correction_sq_ratio(
    params: Params, problem, x, key, delta: float, reuse: str = "fixed"
):
    """:func:`~bilevel_rl.algorithms.momentum.correction_sq_ratio` of this estimator
    between ``x`` and ``x - delta u`` (``u`` a random unit direction from ``key``),
    with the followers at ``pi*`` of both points: one draw of ``L̃²``.

    Returns:
        ``[]`` ``‖ĝ(x; Xi) - ĝ(x - delta u; Xi)‖² / delta²``.
    """
    k_u, k_xi = jax.random.split(key)
    u = jax.random.normal(k_u, jnp.shape(x), jnp.result_type(x))
    points = (x, x - delta * u / jnp.linalg.norm(u))
    followers = tuple(
        PolicyFollower(best_response(problem.mdp, problem.reward(z)).policy)
        for z in points
    )
    split = split_estimator(params)
    return mom.correction_sq_ratio(split, problem, followers, points, k_xi, reuse)


def direction_errors(problem, keys, iters: int, **options) -> tuple[Array, Array]:
    """How far the direction is from the hyper-gradient along one run per key.

    Runs Stoc-SoBiRL with ``options`` (:class:`Params` fields) on one problem for
    ``iters`` iterations per key, reads ``d_k`` off the update ``x_{k+1} = x_k -
    lr_k d_k`` and compares it with the exact ``∇φ(x_k)`` (docs/math.md §2).

    Args:
        problem: one problem (no batch axis).
        keys: ``[n]`` PRNG keys, one run each.
        iters: iterations per run (static).

    Returns:
        ``(‖d_k - ∇φ(x_k)‖², ‖∇φ(x_k)‖²)``, each ``[n, iters]``.

    Raises:
        ValueError: an option breaks its rule, or the optimizer is not plain
            ``sgd`` (``d_k`` could not be read off the update).
    """
    params = Params(**dict(options, track_exact=False))
    if not isinstance(params.optimizer, Optimizer) or params.optimizer.name != "sgd":
        raise ValueError(
            "optimizer: direction_errors reads d_k off the update, so it must be "
            f"plain sgd, got {params.optimizer!r}"
        )
    solver = make_solver(estimator(params), params.optimizer, track_exact=False)
    lr = params.optimizer.step_size
    reward_fn, upper = problem.bind()

    def one(key):
        def body(state, k):
            new, _ = solver.step(state, problem)
            d = jax.tree.map(lambda a, b: (a - b) / lr(k), state.x, new.x)
            g = hypergradient(upper, reward_fn, state.x, problem.mdp)
            err = jax.tree.map(jnp.subtract, d, g)
            return new, (tree_norm(err) ** 2, tree_norm(g) ** 2)

        steps = jnp.arange(iters, dtype=jnp.int32)
        return jax.lax.scan(body, solver.init(problem, key), steps)[1]

    return jax.jit(jax.vmap(one))(keys)


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
