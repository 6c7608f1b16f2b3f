"""Model-free hyper-gradients of trajectory upper levels (docs/math.md §4–5).

Upper objective ``f(x, pi) = E_{xi ~ rho(pi; M_u)}[l(xi; x)]`` over tuples ``xi =
(tau_1..tau_m)`` of ``H``-step trajectories of the upper MDP ``M_u`` (own ``P_u``,
``rho_u``; default ``M_u = M``). Prop. 5.2 with the Prop. 5.1 Jacobians ``dQ*``,
``dV*`` of the lower MDP ``M``:

    grad phi(x) = E[grad_x l(xi; x)]                                           (12)
                + (1/tau) E[l(xi; x) sum_{i,t} (dQ*(s_t, a_t) - dV*(s_t))]     (13)

computed exactly by enumeration (:func:`exact_trajectory_hypergradient`), with
sampled tuples (:func:`sampled_outer_hypergradient`, SoBiRL Algorithm 1) or fully
sampled (:func:`sampled_hypergradient`, Stoc-SoBiRL Algorithm 3).

Conventions: ``loss(x, trajs) -> []`` is ``l`` of ONE tuple, ``trajs`` a
:class:`~bilevel_rl.sampling.Trajectories` with fields ``[m, H]`` (``partial`` of a
``loss(data, x, trajs)`` of :mod:`bilevel_rl.objectives`); ``reward_fn(x) -> [S,
A]``; ``x`` any pytree. Sampled ``sum gamma^t grad_x r_x(s_t, a_t)`` are ``J^T`` of
visit counts: each estimate is ONE ``jax.vjp`` of ``x -> (l(xi_1..xi_D; x), r_x)``.
Sizes ``H, m, D, E, L`` are static; everything jits and vmaps.

References:
    Yang, Gao, Yuan, "Bilevel Reinforcement Learning via the Development of
    Hyper-gradient without Lower-Level Convexity", AISTATS 2025, Props. 5.1–5.2,
    Algorithms 1 and 3; docs/math.md §4–5.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from bilevel_rl.enumeration import (
    MAX_ENUMERATED_TUPLES,
    check_count,
    check_mdps,
    enumerate_tuples,
    expected_trajectory_loss,
)
from bilevel_rl.hypergrad import adjoint_weights, q_value_jacobian, value_jacobian
from bilevel_rl.implicit import DEFAULT_MAX_ITERS, DEFAULT_TOL
from bilevel_rl.mdp import TabularMDP
from bilevel_rl.sampling import Trajectories, rollout, rollout_from
from bilevel_rl.soft import soft_value_iteration
from bilevel_rl.types import Array, PRNGKey, PyTree
from bilevel_rl.types import BoundRewardFn as RewardFn
from bilevel_rl.types import BoundTrajectoryLoss as TrajectoryLoss

__all__ = [
    "BASELINES",
    "HypergradientSamples",
    "MAX_ENUMERATED_TUPLES",
    "centered_losses",
    "check_baseline",
    "draw_hypergradient_samples",
    "evaluate_hypergradient_samples",
    "enumerate_tuples",
    "exact_trajectory_hypergradient",
    "expected_trajectory_loss",
    "sampled_hypergradient",
    "sampled_outer_hypergradient",
    "samples_log_ratio",
]

BASELINES = ("none", "leave_one_out")
"""Baselines of the score term: ``b_j = 0`` or the mean loss of the other tuples."""


def check_baseline(baseline: str, num_samples: int, what: str = "tuples") -> None:
    """Raises ``ValueError`` naming ``baseline`` unless it is in :data:`BASELINES`
    and, for ``"leave_one_out"``, ``num_samples >= 2``."""
    if baseline not in BASELINES:
        raise ValueError(f"baseline: must be one of {BASELINES}, got {baseline!r}")
    if baseline == "leave_one_out" and num_samples < 2:
        raise ValueError(
            f"baseline: 'leave_one_out' needs D >= 2 {what}, got D = {num_samples}"
        )


def centered_losses(losses: Array, baseline: str, used: Array | None = None) -> Array:
    """``l_j - b_j``, the multipliers of the score term (13); ``[D]``.

    ``"leave_one_out"``: ``b_j`` is the mean loss of the other used tuples,
    independent of tuple ``j``; the score term stays unbiased because its factor
    ``sum_{i,t} (dQ - dV)(s_t, a_t)`` has mean 0 given the states (``E_{a ~
    pi}[dQ(s, a)] = dV(s)``, docs/math.md §4), and its variance drops when the
    losses' mean is large against their spread (``E[(l - b)²]`` in place of
    ``E[l²]``). ``"none"``: ``l_j`` (Algorithm 3 as written).

    Args:
        losses: ``[D]`` the tuples' losses.
        baseline: one of :data:`BASELINES`.
        used: ``None`` (all tuples) or ``[D]`` 0/1: the tuples the estimate uses.
    """
    if baseline == "none":
        return losses
    used = jnp.ones_like(losses) if used is None else used.astype(losses.dtype)
    others = jnp.sum(used * losses) - used * losses
    return losses - others / (jnp.sum(used) - used)


def _losses_and_vjp(loss: TrajectoryLoss, reward_fn: RewardFn, x, tuples):
    """``l(xi_j; x)`` for tuples ``[N, m, H]`` and the pullback of ``(l, r_x)``."""
    batched = jax.vmap(loss, in_axes=(None, 0))
    (losses, reward), vjp = jax.vjp(lambda x: (batched(x, tuples), reward_fn(x)), x)

    def pullback(weights, cotangent):
        return vjp((weights.astype(losses.dtype), cotangent.astype(reward.dtype)))[0]

    return losses, pullback


def _visit_table(trajs_states, trajs_actions, weights, num_states, num_actions):
    """``sum_n weights[n] 1{(s_n, a_n) = (s, a)}``; ``[S, A]``."""
    table = jnp.zeros((num_states, num_actions), weights.dtype)
    return table.at[trajs_states.ravel(), trajs_actions.ravel()].add(weights.ravel())


def _sampled_losses(key, loss, reward_fn, x, mdp, upper_mdp, policy, sizes):
    """Validates ``sizes = (H, m, D)``, draws ``D`` tuples of ``M_u`` with the
    first half of ``key`` (fields ``[D, m, H]``) and evaluates their losses."""
    upper_mdp = check_mdps(mdp, upper_mdp, policy)
    names = ("horizon", "num_trajectories", "num_samples")
    H, m, D = (check_count(name, v) for name, v in zip(names, sizes))
    key_outer, key_inner = jax.random.split(key)
    trajs = rollout(key_outer, upper_mdp, policy, horizon=H, num_trajectories=D * m)
    tuples = jax.tree.map(lambda a: a.reshape((D, m) + a.shape[1:]), trajs)
    losses, pullback = _losses_and_vjp(loss, reward_fn, x, tuples)
    return key_inner, tuples, losses, pullback


def _truncated_value_jacobians(mdp, reward_fn, x, policy, length):
    """``dQ_L = sum_{t<L} (gamma P Pi)^t J`` and ``dV_L = Lambda_pi dQ_L``."""
    flat_x, unravel = ravel_pytree(x)
    J = jax.jacfwd(lambda flat: reward_fn(unravel(flat)))(flat_x)  # [S, A, n]
    J = J.astype(jnp.result_type(J.dtype, mdp.P.dtype))

    def sweep(dq, _):
        dv = jnp.einsum("sa,san->sn", policy, dq)
        return J + mdp.gamma * jnp.einsum("sat,tn->san", mdp.P, dv), None

    dq = jax.lax.scan(sweep, jnp.zeros_like(J), None, length=length)[0]
    dv = jnp.einsum("sa,san->sn", policy, dq)
    return jax.vmap(jax.vmap(unravel))(dq), jax.vmap(unravel)(dv)


def exact_trajectory_hypergradient(
    loss: TrajectoryLoss,
    reward_fn: RewardFn,
    x: PyTree,
    mdp: TabularMDP,
    *,
    horizon: int,
    num_trajectories: int = 1,
    upper_mdp: TabularMDP | None = None,
    policy: Array | None = None,
    rollout_length: int | None = None,
    tol: float = DEFAULT_TOL,
    max_iters: int = DEFAULT_MAX_ITERS,
) -> PyTree:
    """Prop. 5.2, (12)+(13), computed exactly by enumerating all tuples.

    ``sum_xi p(xi) [grad_x l(xi; x) + (1/tau) l(xi; x) sum_{i,t} (dQ(s_t, a_t) -
    dV(s_t))]`` with ``dQ, dV`` the exact Prop. 5.1 Jacobians
    (:func:`~bilevel_rl.hypergrad.q_value_jacobian`) at ``policy``. At ``pi*_x``
    this is ``grad phi(x)``; at another policy it is the mean of
    :func:`sampled_outer_hypergradient`. With ``rollout_length = L`` the Jacobians
    are truncated to ``sum_{t<L} (gamma P Pi)^t J``: the exact mean of
    :func:`sampled_hypergradient` (any ``D``, ``E``), whose bias is ``O(gamma^L)``.
    Cost ``(S A)^(H m)`` loss evaluations: tiny MDPs only.

    Args:
        loss: ``loss(x, trajs) -> []``, ``trajs`` fields ``[m, H]``.
        reward_fn: ``reward_fn(x) -> [S, A]`` (lower-level reward model).
        x: leader variable (pytree).
        mdp: the lower MDP ``M`` (``P: [S, A, S]``).
        horizon, num_trajectories: ``H`` and ``m`` (static).
        upper_mdp: ``M_u`` generating the tuples (same ``S, A``); default ``mdp``.
        policy: ``[S, A]``; default ``pi*_x`` (soft value iteration with ``tol``,
            ``max_iters``, static).
        rollout_length: optional ``L`` (static) of the truncated Jacobians.

    Returns:
        A pytree like ``x``.

    Raises:
        ValueError: a size not an int ``>= 1``, too many tuples, bad ``policy``
            or ``upper_mdp`` shape.

    References:
        SoBiRL (Yang et al., AISTATS 2025) Props. 5.1–5.2; docs/math.md §4.
    """
    upper_mdp = check_mdps(mdp, upper_mdp, policy)
    if rollout_length is not None:
        rollout_length = check_count("rollout_length", rollout_length)
    if policy is None:
        sol = soft_value_iteration(mdp, reward_fn(x), tol=tol, max_iters=max_iters)
        policy = sol.policy
    policy = jax.lax.stop_gradient(policy)
    tuples, probs = enumerate_tuples(
        upper_mdp, policy, horizon=horizon, num_trajectories=num_trajectories
    )
    losses, pullback = _losses_and_vjp(loss, reward_fn, x, tuples)
    exploit = pullback(probs, jnp.zeros(policy.shape))  # (12)

    weights = jnp.broadcast_to((probs * losses)[:, None, None], tuples.states.shape)
    visits = _visit_table(tuples.states, tuples.actions, weights, *policy.shape)
    if rollout_length is None:
        dq = q_value_jacobian(mdp, reward_fn, x, policy)
        dv = value_jacobian(mdp, reward_fn, x, policy)
    else:
        dq, dv = _truncated_value_jacobians(mdp, reward_fn, x, policy, rollout_length)

    def explore(dq_leaf, dv_leaf, exploit_leaf):  # (13)
        term = jnp.tensordot(visits, dq_leaf, axes=2)
        term = term - jnp.tensordot(visits.sum(-1), dv_leaf, axes=1)
        return exploit_leaf + term / mdp.tau

    return jax.tree.map(explore, dq, dv, exploit)


def sampled_outer_hypergradient(
    key: PRNGKey,
    loss: TrajectoryLoss,
    reward_fn: RewardFn,
    x: PyTree,
    mdp: TabularMDP,
    policy: Array,
    *,
    horizon: int,
    num_samples: int,
    num_trajectories: int = 1,
    upper_mdp: TabularMDP | None = None,
    baseline: str = "none",
    with_value: bool = False,
) -> PyTree | tuple[Array, PyTree]:
    """SoBiRL (Algorithm 1) estimator: sampled tuples, exact ``dQ``/``dV``.

    ``g = (1/D) sum_j [grad_x l_j + (1/tau) (l_j - b_j) sum_{i,t} (dQ - dV)(s_t,
    a_t)]`` (``b_j``: :func:`centered_losses`; ``b_j = 0`` is the paper's),
    ``xi_j ~ rho(pi_k; M_u)``, ``dQ = (I - gamma P Pi_k)^{-1} J`` (Prop. 5.1 at
    ``pi_k``), as ``(1/D) sum_j grad l_j + J^T w`` with the adjoint ``w`` of
    :func:`~bilevel_rl.hypergrad.adjoint_weights`: one ``S x S`` solve, one VJP.
    Its mean is :func:`exact_trajectory_hypergradient` at ``policy``; its tuples
    are those of :func:`sampled_hypergradient` with the same key.

    Args:
        key: PRNG key; the estimate is a deterministic function of it.
        loss, reward_fn, x, mdp, horizon, num_trajectories, upper_mdp: as in
            :func:`exact_trajectory_hypergradient`.
        policy: ``[S, A]`` the current policy ``pi_k`` (in place of ``pi*_x``).
        num_samples: ``D`` tuples (static).
        baseline: one of :data:`BASELINES` (static): the score term's baseline.
        with_value: also return the sample mean of ``l`` (static).

    Returns:
        A pytree like ``x``, or ``(mean_loss, grad)`` if ``with_value``.

    Raises:
        ValueError: a size not an int ``>= 1``, bad ``policy``/``upper_mdp`` shape,
            an unknown ``baseline`` or ``"leave_one_out"`` with ``D < 2``.

    References:
        SoBiRL (Yang et al., AISTATS 2025) Props. 5.1–5.2, Algorithm 1, eq. 14;
        docs/math.md §4.
    """
    sizes = (horizon, num_trajectories, num_samples)
    _, tuples, losses, pullback = _sampled_losses(
        key, loss, reward_fn, x, mdp, upper_mdp, policy, sizes
    )
    D = losses.shape[0]
    check_baseline(baseline, D)
    score = centered_losses(losses, baseline)
    weights = jnp.broadcast_to(score[:, None, None] / D, tuples.states.shape)
    visits = _visit_table(tuples.states, tuples.actions, weights, *policy.shape)
    visits = visits.astype(policy.dtype)
    u = (visits - policy * visits.sum(-1, keepdims=True)) / mdp.tau
    grad = pullback(
        jnp.full((D,), 1.0 / D), adjoint_weights(mdp, policy, 0 * u, grad_q=u)
    )
    return (jnp.mean(losses), grad) if with_value else grad


class HypergradientSamples(NamedTuple):
    """``Xi``: the trajectories of one Algorithm-3 estimate, stored.

    Everything drawn from the policy is here, so the estimate can be evaluated at
    any ``x`` (and reweighted to any policy) with the same samples
    (:func:`evaluate_hypergradient_samples`): the fixed-sample reading of
    Stoc-SoBiRL's momentum (docs/math.md §5).

    Attributes:
        tuples: :class:`~bilevel_rl.sampling.Trajectories`, fields ``[D, m, H]``:
            the ``D`` tuples of ``m`` trajectories of ``M_u``.
        q_rollouts: fields ``[D, m, H, E, L]``: ``E`` generative rollouts of length
            ``L`` from each visited ``(s_t, a_t)`` (first action forced).
        v_rollouts: fields ``[D, m, H, E, L]``: ``E`` rollouts from each visited
            ``s_t`` (first action drawn from the policy).
        sizes: ``None`` (every stored draw is used) or ``[3]`` int32
            ``(D_k, E_k, L_k)``, at most ``(D, E, L)``: the estimate uses the first
            ``D_k`` tuples, the first ``E_k`` rollouts of each pair and their first
            ``L_k`` steps — a growing sampling schedule under static shapes.
    """

    tuples: Trajectories
    q_rollouts: Trajectories
    v_rollouts: Trajectories
    sizes: Array | None = None

    def num_transitions(self) -> Array | int:
        """Transitions the estimate uses: ``D m H (1 + 2 E L)`` — the tuples' steps
        and both rollout sets, at the used sizes."""
        D, m, H, E, L = self.q_rollouts.states.shape[-5:]
        if self.sizes is not None:
            D, E, L = self.sizes[0], self.sizes[1], self.sizes[2]
        return D * m * H * (1 + 2 * E * L)


def draw_hypergradient_samples(
    key: PRNGKey,
    mdp: TabularMDP,
    policy: Array,
    *,
    horizon: int,
    num_samples: int,
    num_rollouts: int,
    rollout_length: int,
    num_trajectories: int = 1,
    upper_mdp: TabularMDP | None = None,
    common_random_numbers: bool = True,
    sizes: Array | None = None,
) -> HypergradientSamples:
    """Draws the samples ``Xi`` of one Algorithm-3 estimate under ``policy``.

    ``D`` i.i.d. tuples ``xi_j ~ rho(pi; M_u)``; for each visited ``(s_t, a_t)``,
    ``E`` rollouts of length ``L`` in ``M`` under ``pi`` from ``(s_t, a_t)``
    (``dQ^``) and ``E`` from ``s_t`` with ``a_0 ~ pi`` (``dV^``).
    ``common_random_numbers`` couples the ``dQ^``/``dV^`` rollouts of a visited
    pair (same mean, less variance). Sizes are static; ``sizes`` (``[3]`` int32,
    traced, at most ``(D, E, L)``) makes the estimate use only the first
    ``(D_k, E_k, L_k)`` of them (:class:`HypergradientSamples`).

    Raises:
        ValueError: a size not an int ``>= 1``, or shapes that do not fit ``mdp``.
    """
    upper_mdp = check_mdps(mdp, upper_mdp, policy)
    names = ("horizon", "num_trajectories", "num_samples")
    static = (horizon, num_trajectories, num_samples)
    H, m, D = (check_count(name, v) for name, v in zip(names, static))
    E = check_count("num_rollouts", num_rollouts)
    L = check_count("rollout_length", rollout_length)
    key_outer, key_inner = jax.random.split(key)
    trajs = rollout(key_outer, upper_mdp, policy, horizon=H, num_trajectories=D * m)
    tuples = jax.tree.map(lambda a: a.reshape((D, m) + a.shape[1:]), trajs)
    starts = jnp.repeat(tuples.states[..., None], E, axis=-1)  # [D, m, H, E]
    first = jnp.repeat(tuples.actions[..., None], E, axis=-1)
    key_q, key_v = jax.random.split(key_inner)
    key_v = key_q if common_random_numbers else key_v
    q_roll = rollout_from(key_q, mdp, policy, starts, first, horizon=L)
    v_roll = rollout_from(key_v, mdp, policy, starts, None, horizon=L)
    return HypergradientSamples(tuples, q_roll, v_roll, sizes)


def samples_log_ratio(
    samples: HypergradientSamples, target: Array, sampling: Array
) -> tuple[Array, Array, Array]:
    """Log-likelihood ratios ``log(target / sampling)`` of the drawn actions.

    Returns:
        ``(tuple [D], q [D, m, H, E], v [D, m, H, E])``: per tuple (all its
        actions), per ``dQ^`` rollout (actions after the forced first one) and per
        ``dV^`` rollout (all its actions); rollouts count their first ``L_k``
        steps when ``samples.sizes`` is set.
    """

    def log_ratio(states, actions):
        return jnp.log(target[states, actions]) - jnp.log(sampling[states, actions])

    t = samples.tuples
    q, v = samples.q_rollouts, samples.v_rollouts
    steps = jnp.ones(q.states.shape[-1], target.dtype)  # the rollout steps used
    if samples.sizes is not None:
        steps = (jnp.arange(steps.size) < samples.sizes[2]).astype(target.dtype)
    tuple_lr = jnp.sum(log_ratio(t.states, t.actions), axis=(-2, -1))
    q_lr = jnp.sum(log_ratio(q.states[..., 1:], q.actions[..., 1:]) * steps[1:], -1)
    v_lr = jnp.sum(log_ratio(v.states, v.actions) * steps, axis=-1)
    return tuple_lr, q_lr, v_lr


def evaluate_hypergradient_samples(
    samples: HypergradientSamples,
    loss: TrajectoryLoss,
    reward_fn: RewardFn,
    x: PyTree,
    mdp: TabularMDP,
    *,
    reweight: tuple[Array, Array] | None = None,
    clip: float = 10.0,
    baseline: str = "none",
    with_value: bool = False,
) -> PyTree | tuple[Array, PyTree]:
    """Algorithm 3's estimate at ``x`` from stored samples ``Xi``.

        dQ^(s, a) = (1/E) sum_e sum_{t'<L} gamma^t' grad_x r_x(s^e_t', a^e_t'),
        g = (1/D) sum_j [grad_x l_j + (1/tau) (l_j - b_j) sum_{i,t} (dQ^ - dV^)(s_t,
            a_t)],

    ``b_j`` the score baseline (:func:`centered_losses`; ``0`` as in the paper).

    All rollouts fold into one ``[S, A]`` cotangent (discounted visit counts) and
    ONE VJP. For fixed samples the estimate is a smooth function of ``x`` (the
    Lipschitz estimator of the paper's Lemma I.4).

    Args:
        samples: from :func:`draw_hypergradient_samples`.
        loss, reward_fn, x, mdp, with_value: as in :func:`sampled_hypergradient`.
        reweight: ``(target, sampling)`` policies ``[S, A]``: importance-weight
            every term by the likelihood ratio of its tuple and rollout under
            ``target`` versus ``sampling`` (the policy that drew ``samples``), each
            weight clipped to ``clip``; unbiased for the target policy's
            expectation up to the clipping. ``None``: unweighted.
        clip: largest importance weight.
        baseline: one of :data:`BASELINES` (static); the leave-one-out mean is
            taken over the used tuples' unweighted losses at ``x``.

    Returns:
        ``grad`` (a pytree like ``x``), or ``(mean loss, grad)``.

    Raises:
        ValueError: an unknown ``baseline`` or ``"leave_one_out"`` with ``D < 2``.
    """
    tuples = samples.tuples
    losses, pullback = _losses_and_vjp(loss, reward_fn, x, tuples)
    q_roll, v_roll = samples.q_rollouts, samples.v_rollouts
    D, E, L = losses.shape[0], q_roll.states.shape[-2], q_roll.states.shape[-1]
    check_baseline(baseline, D)
    dtype = mdp.P.dtype
    discounts = jnp.cumprod(jnp.full((L,), mdp.gamma, dtype).at[0].set(1.0))
    if samples.sizes is None:
        scale = centered_losses(losses, baseline).astype(dtype) / (D * E * mdp.tau)
        weights = scale[:, None, None, None, None] * discounts  # [D, 1, 1, 1, L]
        outer = jnp.full((D,), 1.0 / D, dtype)
        mean_loss = jnp.mean(losses)
    else:  # the first (D_k, E_k, L_k) draws only
        used = [jnp.arange(n) < size for n, size in zip((D, E, L), samples.sizes)]
        tuple_mask, rollout_mask, step_mask = (u.astype(dtype) for u in used)
        D_k, E_k = (size.astype(dtype) for size in samples.sizes[:2])
        outer = tuple_mask / D_k
        score = centered_losses(losses, baseline, used[0]).astype(dtype)
        scale = score * outer / (E_k * mdp.tau)
        per_rollout = rollout_mask[:, None] * (discounts * step_mask)  # [E, L]
        weights = scale[:, None, None, None, None] * per_rollout
        mean_loss = jnp.sum(losses * outer.astype(losses.dtype))
    weights = jnp.broadcast_to(weights, q_roll.states.shape)  # [D, m, H, E, L]
    if reweight is None:
        signed = jnp.stack([weights, -weights])  # dQ^ rollouts minus dV^ ones
    else:
        tuple_lr, q_lr, v_lr = samples_log_ratio(samples, *reweight)
        tuple_lr = tuple_lr[:, None, None, None]

        def ratio(log_ratio):
            return jnp.minimum(jnp.exp(log_ratio), clip).astype(dtype)

        w_q = ratio(tuple_lr + q_lr)[..., None]
        w_v = ratio(tuple_lr + v_lr)[..., None]
        signed = jnp.stack([weights * w_q, -weights * w_v])
        outer = outer * ratio(tuple_lr[:, 0, 0, 0])
    states, actions = (jnp.stack([q, v]) for q, v in zip(q_roll[:2], v_roll[:2]))
    visits = _visit_table(states, actions, signed, *mdp.P.shape[-3:-1])
    grad = pullback(outer, visits)
    return (mean_loss, grad) if with_value else grad


def sampled_hypergradient(
    key: PRNGKey,
    loss: TrajectoryLoss,
    reward_fn: RewardFn,
    x: PyTree,
    mdp: TabularMDP,
    policy: Array,
    *,
    horizon: int,
    num_samples: int,
    num_rollouts: int,
    rollout_length: int,
    num_trajectories: int = 1,
    upper_mdp: TabularMDP | None = None,
    common_random_numbers: bool = True,
    baseline: str = "none",
    with_value: bool = False,
) -> PyTree | tuple[Array, PyTree]:
    """Stoc-SoBiRL (Algorithm 3) fully sampled hyper-gradient estimator.

    :func:`draw_hypergradient_samples` under ``policy``, then
    :func:`evaluate_hypergradient_samples` at ``x``. Mean:
    :func:`exact_trajectory_hypergradient` with ``rollout_length=L`` (bias
    ``O(gamma^L)``; ``(gamma |lambda_2(P Pi)|)^L`` on mixing MDPs, as the centred
    ``dQ^ - dV^`` forget the start); ``D``, ``E`` set the variance.

    Args:
        key, loss, reward_fn, x, mdp, policy, horizon, num_trajectories,
            upper_mdp, baseline, with_value: as in
            :func:`sampled_outer_hypergradient` (``mdp`` is the generative model).
        num_samples: ``D`` tuples per step (static) [reconstructed symbol].
        num_rollouts: ``E`` rollouts per visited pair (static) [reconstructed].
        rollout_length: ``L`` steps per rollout (static) [reconstructed].
        common_random_numbers: couple the ``dQ^``/``dV^`` rollouts (static).

    Returns, Raises: as :func:`sampled_outer_hypergradient`.

    References:
        SoBiRL (Yang et al., AISTATS 2025) Section 6, Algorithm 3, Appendix I
        (eqs. 78–80, Lemma I.1); docs/math.md §5 (symbols D, E, L [reconstructed]).
    """
    samples = draw_hypergradient_samples(
        key, mdp, policy, horizon=horizon, num_samples=num_samples,
        num_rollouts=num_rollouts, rollout_length=rollout_length,
        num_trajectories=num_trajectories, upper_mdp=upper_mdp,
        common_random_numbers=common_random_numbers,
    )  # fmt: skip
    return evaluate_hypergradient_samples(
        samples, loss, reward_fn, x, mdp, baseline=baseline, with_value=with_value
    )
