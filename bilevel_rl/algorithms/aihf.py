"""AIHF: alignment with integrated human feedback (AIHF paper, Algorithm 1).

Maximizes ``L(theta) = alpha L1(pi_theta) + L2(r_theta)`` where ``pi_theta`` is the
KL-regularized soft-optimal policy of ``r_theta`` (:mod:`bilevel_rl.alignment`,
MATH.md §7). Per iteration ``k``:

1. policy alignment: ``N`` warm-started soft policy iteration / PMD steps towards
   ``pi_{theta_k}`` (``pi_{k+1}``);
2. ``g1 = (1/tau) J^T (mu_demo - mu_{pi_{k+1}})`` (Lemma 5.1), with ``mu`` the
   discounted state-action visitation per trajectory: ``mu_demo`` is
   ``data.demo_counts``; ``mu_pi`` is exact (``num_trajectories=None``) or the
   average over sampled agent trajectories of ``horizon`` steps;
3. ``g2 = J^T grad_r L2(r_theta)`` (exact: ``L2`` is a sum over the preference
   counts);
4. ``theta_{k+1} = theta_k + eta (alpha g1 + g2)`` (any optax transformation of
   ``-(alpha g1 + g2)``).

Lemma 5.1 holds at the exact ``pi_theta`` and when the demonstrations' visitation is
that of trajectories of the same MDP from ``rho``; with few alignment steps ``g1``
is the paper's approximation. The problem is :func:`bilevel_rl.alignment.aihf_problem`
(or any ``BilevelProblem`` whose ``data`` is an ``AlignmentData``).

References:
    Li et al., "Joint Demonstration and Preference Learning Improves Policy
    Alignment with Human Feedback", Algorithm 1 and Lemma 5.1; MATH.md §7.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from bilevel_rl.algorithms.base import Solver, check_positive, exact_metrics, tree_norm
from bilevel_rl.algorithms.sobirl import align_policy
from bilevel_rl.alignment import AlignmentData, demo_term, preference_term
from bilevel_rl.problem import BilevelProblem
from bilevel_rl.sampling import rollout, visitation_counts
from bilevel_rl.soft import occupancy_measure, soft_policy
from bilevel_rl.types import Array, PRNGKey, PyTree


class AIHFState(NamedTuple):
    """Iterate of AIHF.

    Attributes:
        x: reward parameters ``theta_k``.
        policy: ``[S, A]`` the aligned policy ``pi_k`` (warm start of the next
            alignment).
        opt_state: optax state.
        key: PRNG key (agent trajectories).
    """

    x: PyTree
    policy: Array
    opt_state: optax.OptState
    key: PRNGKey


def lemma51_gradient(problem: BilevelProblem, x, policy, agent_visits) -> PyTree:
    """``alpha g1 + g2`` at ``(x, policy)`` given the agent's visitation ``[S, A]``."""
    data: AlignmentData = problem.data
    reward, vjp = jax.vjp(problem.reward, x)
    grad_l2 = jax.grad(preference_term, argnums=1)(data.wins, reward)
    cot = data.alpha * (data.demo_counts - agent_visits) / problem.mdp.tau + grad_l2
    (g,) = vjp(cot)
    return g


def make(
    *,
    eta: float = 1.0,
    inner_steps: int = 10,
    pmd_eta: float = float("inf"),
    num_trajectories: int | None = None,
    horizon: int = 1,
    optimizer: optax.GradientTransformation | None = None,
    track_exact: bool = True,
) -> Solver:
    """Builds AIHF (Algorithm 1).

    Args:
        eta: reward step size (ascent; used when ``optimizer`` is ``None``).
        inner_steps: ``N`` policy-alignment steps per iteration.
        pmd_eta: PMD step of the alignment (``inf``: soft policy iteration).
        num_trajectories: agent trajectories per iteration for ``mu_pi``;
            ``None`` uses the exact visitation.
        horizon: length of the sampled agent trajectories (``gamma^H`` bias).
        optimizer: optax transformation applied to ``-(alpha g1 + g2)``; default
            ``optax.sgd(eta)``.
        track_exact: also record ``exact_f = -L(theta_k)`` at the exact
            ``pi_theta`` and the exact hyper-gradient norm (MATH.md §2).

    Returns:
        A :class:`~bilevel_rl.algorithms.base.Solver`; metrics ``grad_norm``
        (‖alpha g1 + g2‖), ``f`` (``-(alpha L1(pi_k) + L2(r_k))``),
        ``inner_residual`` and, with ``track_exact``, ``exact_f`` and
        ``exact_grad_norm``.

    Raises:
        ValueError: non-positive ``eta``/``pmd_eta``, ``inner_steps < 1``,
            ``num_trajectories < 1`` or ``horizon < 1``.
    """
    eta = check_positive("eta", eta)
    inner_steps = check_positive("inner_steps", inner_steps, integer=True)
    pmd_eta = (
        float(pmd_eta)
        if pmd_eta == float("inf")
        else check_positive("pmd_eta", pmd_eta)
    )
    if num_trajectories is not None:
        num_trajectories = check_positive(
            "num_trajectories", num_trajectories, integer=True
        )
    horizon = check_positive("horizon", horizon, integer=True)
    opt = optimizer if optimizer is not None else optax.sgd(eta)

    def agent_visits(problem, policy, key):
        mdp = problem.mdp
        if num_trajectories is None:
            return occupancy_measure(mdp, policy) / (1.0 - mdp.gamma)
        trajs = rollout(
            key, mdp, policy, horizon=horizon, num_trajectories=num_trajectories
        )
        counts = visitation_counts(trajs, mdp.num_states, mdp.num_actions, mdp.gamma)
        return counts / num_trajectories

    def init(problem: BilevelProblem, key: PRNGKey) -> AIHFState:
        mdp = problem.mdp
        S, A = mdp.num_states, mdp.num_actions
        zero_q = jnp.zeros((S, A), mdp.P.dtype)
        return AIHFState(
            problem.x0, soft_policy(mdp, zero_q), opt.init(problem.x0), key
        )

    def step(state: AIHFState, problem: BilevelProblem):
        key, k_roll = jax.random.split(state.key)
        reward = problem.reward(state.x)
        policy, change = align_policy(
            problem,
            reward,
            state.policy,
            eta=pmd_eta,
            inner_steps=inner_steps,
            inner_tol=0.0,
        )
        visits = agent_visits(problem, policy, k_roll)
        g = lemma51_gradient(problem, state.x, policy, visits)
        data = problem.data
        L = data.alpha * demo_term(data.demo_counts, policy) + preference_term(
            data.wins, reward
        )
        metrics = {"grad_norm": tree_norm(g), "f": -L, "inner_residual": change}
        if track_exact:
            metrics.update(exact_metrics(problem, state.x))
        descent = jax.tree.map(jnp.negative, g)
        updates, opt_state = opt.update(descent, state.opt_state, state.x)
        x = optax.apply_updates(state.x, updates)
        return AIHFState(x, policy, opt_state, key), metrics

    return Solver(init, step)
