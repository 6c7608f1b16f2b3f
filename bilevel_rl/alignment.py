"""Alignment from demonstrations and preferences: SFT, RLHF, DPO, AIHF (math §6).

Sections cited as "math §n" are those of docs/math.md.

Tabular data are sufficient statistics, so that a batch of data sets is a batch of
arrays (``jax.vmap`` over repeats):

* demonstrations as ``demo_counts[S, A]``: ``(1/N) sum_{n,t} gamma^t 1{s^n_t = s,
  a^n_t = a}`` over the ``N`` demonstrations (for a bandit: action frequencies);
* preferences as ``wins[S, A, A]``: the fraction of the comparisons in which action
  ``a`` was preferred to ``b`` in state ``s`` (entries sum to one).

Then, with ``pi_r`` the soft-optimal policy of reward ``r`` (KL-regularized towards
``mdp.ref_policy`` when it is set) and ``beta = mdp.tau``::

    L1(pi) = sum_{s,a} demo_counts(s,a) log pi(a|s)                     (demonstrations)
    L2(r)  = sum_{s,a,b} wins(s,a,b) log sigmoid(r(s,a) - r(s,b))       (Bradley–Terry)
    AIHF:  max_r  alpha L1(pi_r) + L2(r)

``alpha = |D| / |P|`` weighs every demonstration like one comparison (the paper's
bandit examples). Special cases: SFT is the maximizer of ``L1`` over all policies
(:func:`sft_policy`); RLHF fits ``r`` by ``L2`` alone (:func:`fit_bradley_terry`) and
plays the KL-regularized optimal policy towards ``pi_SFT`` (:func:`rlhf_policy`);
DPO maximizes ``alpha L1(pi) + L2(beta log(pi / pi0))`` over policies directly
(:func:`dpo_loss`, solved by :func:`dpo_policy`), whose tabular optimum is
``pi0 exp(r_hat / beta)`` normalized.

References:
    Li et al., "Joint Demonstration and Preference Learning Improves Policy
    Alignment with Human Feedback" (AIHF), Sections 3–5; Rafailov et al. 2023 (DPO).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import struct

from bilevel_rl.mdp import TabularMDP
from bilevel_rl.problem import BilevelProblem
from bilevel_rl.rewards import tabular_reward
from bilevel_rl.soft import soft_value_iteration
from bilevel_rl.types import Array, PRNGKey

__all__ = [
    "AlignmentData",
    "aihf_problem",
    "aihf_upper",
    "bandit_datasets",
    "demo_term",
    "dpo_loss",
    "dpo_policy",
    "fit_bradley_terry",
    "preference_term",
    "rlhf_policy",
    "sft_policy",
    "total_variation",
]


@struct.dataclass
class AlignmentData:
    """Demonstrations and preferences of one data set (batch them with a leading axis).

    Attributes:
        demo_counts: ``[S, A]`` discounted demonstration visitation per
            demonstration (action frequencies for a bandit).
        wins: ``[S, A, A]`` fraction of comparisons with ``a`` preferred to ``b``.
        alpha: ``[]`` weight of the demonstration term.
    """

    demo_counts: Array
    wins: Array
    alpha: Array


def demo_term(demo_counts: Array, policy: Array) -> Array:
    """``L1(pi) = sum counts * log pi``; pairs without demonstrations add nothing."""
    safe = jnp.where(demo_counts > 0, policy, 1.0)
    return jnp.sum(demo_counts * jnp.log(safe))


def preference_term(wins: Array, reward: Array) -> Array:
    """``L2(r) = sum_{s,a,b} wins(s,a,b) log sigmoid(r(s,a) - r(s,b))``."""
    margin = reward[..., :, None] - reward[..., None, :]
    return jnp.sum(wins * jax.nn.log_sigmoid(margin))


def aihf_upper(data: AlignmentData, x: Array, policy: Array) -> Array:
    """Upper objective ``-(alpha L1(pi) + L2(r_x))`` with the tabular reward
    ``r_x = x`` (``[S, A]``): minimizing it is AIHF."""
    return -(
        data.alpha * demo_term(data.demo_counts, policy) + preference_term(data.wins, x)
    )


def aihf_problem(mdp: TabularMDP, data: AlignmentData, x0: Array | None = None):
    """AIHF as a :class:`~bilevel_rl.BilevelProblem` (tabular reward, ``x = r``).

    Args:
        mdp: the follower MDP; ``tau`` is the KL weight ``beta`` and ``ref_policy``
            the reference ``pi0`` (``None``: uniform, i.e. entropy regularization).
        data: :class:`AlignmentData`.
        x0: ``[S, A]`` initial reward (default zeros).

    Returns:
        ``BilevelProblem`` whose ``upper`` is :func:`aihf_upper`; any algorithm of
        :mod:`bilevel_rl.algorithms` minimizes it (``exact`` is exact AIHF).
    """
    if x0 is None:
        x0 = jnp.zeros(mdp.P.shape[-3:-1], mdp.P.dtype)
    return BilevelProblem(
        mdp=mdp, data=data, x0=x0, reward_fn=tabular_reward, upper=aihf_upper
    )


def sft_policy(demo_counts: Array) -> Array:
    """Supervised fine-tuning (behaviour cloning): the maximizer of ``L1``.

    Args:
        demo_counts: ``[S, A]``.

    Returns:
        ``[S, A]`` the normalized counts per state; uniform in unvisited states.
    """
    total = jnp.sum(demo_counts, axis=-1, keepdims=True)
    A = demo_counts.shape[-1]
    return jnp.where(total > 0, demo_counts / jnp.where(total > 0, total, 1.0), 1.0 / A)


def fit_bradley_terry(
    wins: Array, *, ridge: float = 1e-8, num_steps: int = 30
) -> Array:
    """The reward model of RLHF: ``argmax_r L2(r) - (ridge/2) ||r||^2`` by Newton.

    ``L2`` is concave; the ridge fixes the per-state additive constant (and keeps
    the optimum finite when a pair was only ever won by one side). Newton's method
    on each state's ``[A, A]`` system converges quadratically; ``num_steps`` is
    static.

    Args:
        wins: ``[S, A, A]``.
        ridge: ``> 0`` ridge weight.
        num_steps: Newton steps (30 reaches round-off for well-posed data).

    Returns:
        ``[S, A]`` the fitted reward.
    """

    def objective(r, w):
        return preference_term(w, r) - 0.5 * ridge * jnp.sum(r**2)

    def fit_state(w):
        def newton(r, _):
            g = jax.grad(objective)(r, w)
            H = jax.hessian(objective)(r, w)
            return r - jnp.linalg.solve(H, g), None

        r, _ = jax.lax.scan(newton, jnp.zeros(w.shape[-1], w.dtype), None, num_steps)
        return r

    return jax.vmap(fit_state)(wins)


def rlhf_policy(mdp: TabularMDP, reward: Array, reference: Array) -> Array:
    """RLHF's policy: KL-regularized soft-optimal for ``reward`` towards ``reference``.

    ``reference`` is usually :func:`sft_policy`; its zero entries stay zero (the KL
    term forbids leaving the reference's support), which is why RLHF cannot move
    mass to actions the demonstrations never covered.

    Args:
        mdp: the MDP (``tau`` is the KL weight ``beta``).
        reward: ``[S, A]``, e.g. :func:`fit_bradley_terry`.
        reference: ``[S, A]`` reference policy (rows summing to one).

    Returns:
        ``[S, A]``.
    """
    return soft_value_iteration(mdp.replace(ref_policy=reference), reward).policy


def dpo_loss(logits: Array, data: AlignmentData, reference: Array, beta) -> Array:
    """Negative DPO objective (with an optional demonstration term) over policies.

    ``-(alpha L1(pi) + sum wins log sigmoid(beta log(pi(a)/pi0(a)) - beta
    log(pi(b)/pi0(b))))`` with ``pi = softmax(logits)`` per state. On the support
    of ``reference`` its minimizer is ``reference * exp(r / beta)`` normalized with
    ``r`` maximizing ``alpha L1(pi_r) + L2(r)`` (``r = fit_bradley_terry`` when
    ``alpha = 0``).

    Args:
        logits: ``[S, A]`` policy parameters.
        data: :class:`AlignmentData`.
        reference: ``[S, A]`` ``pi0`` with positive entries.
        beta: KL weight.

    Returns:
        ``[]`` loss.
    """
    log_pi = jax.nn.log_softmax(logits, axis=-1)
    implicit_reward = beta * (log_pi - jnp.log(reference))
    policy = jnp.exp(log_pi)
    return -(
        data.alpha * demo_term(data.demo_counts, policy)
        + preference_term(data.wins, implicit_reward)
    )


def dpo_policy(
    data: AlignmentData, reference: Array, beta, *, num_steps: int = 200
) -> Array:
    """DPO by gradient-based optimization: ``softmax`` of the minimizer of
    :func:`dpo_loss` over logits (L-BFGS from ``log reference``, ``num_steps``
    static iterations, jittable and vmappable).

    Args:
        data: :class:`AlignmentData` (``alpha = 0`` is plain DPO).
        reference: ``[S, A]`` ``pi0`` with positive entries.
        beta: KL weight.
        num_steps: L-BFGS iterations.

    Returns:
        ``[S, A]`` the DPO policy.
    """
    opt = optax.lbfgs()

    def loss(z):
        return dpo_loss(z, data, reference, beta)

    value_and_grad = optax.value_and_grad_from_state(loss)

    def body(carry, _):
        z, state = carry
        value, grad = value_and_grad(z, state=state)
        updates, state = opt.update(
            grad, state, z, value=value, grad=grad, value_fn=loss
        )
        return (optax.apply_updates(z, updates), state), None

    z0 = jnp.log(reference)
    (z, _), _ = jax.lax.scan(body, (z0, opt.init(z0)), None, length=num_steps)
    return jax.nn.softmax(z, axis=-1)


def total_variation(p: Array, q: Array) -> Array:
    """``0.5 sum |p - q|`` over the last axis (summed over states for ``[S, A]``)."""
    return 0.5 * jnp.sum(jnp.abs(p - q), axis=-1).sum(axis=-1)


def bandit_datasets(
    key: PRNGKey,
    reward: Array,
    *,
    num_demos: int,
    comparisons_per_pair: int,
    covered: int | None = None,
) -> tuple[Array, Array]:
    """Demonstrations and preferences of AIHF Numerical Example 2 for one bandit.

    Demonstrations: ``num_demos`` i.i.d. draws from ``softmax(reward)`` restricted
    to the first ``covered`` actions. Preferences: ``comparisons_per_pair`` i.i.d.
    Bradley–Terry comparisons for every unordered pair of actions.

    Args:
        key: PRNG key.
        reward: ``[A]`` ground-truth reward.
        num_demos: ``|D|``.
        comparisons_per_pair: comparisons per pair (``|P| = A(A-1)/2`` times it).
        covered: demonstrations cover actions ``0..covered-1`` (default: all).

    Returns:
        ``(demo_counts[1, A], wins[1, A, A])``, both normalized (sum one).
    """
    A = reward.shape[-1]
    covered = A if covered is None else covered
    k_demo, k_pref = jax.random.split(key)
    logits = jnp.where(jnp.arange(A) < covered, reward, -jnp.inf)
    demos = jax.random.categorical(k_demo, logits, shape=(num_demos,))
    counts = jnp.zeros(A, reward.dtype).at[demos].add(1.0) / num_demos
    p_win = jax.nn.sigmoid(reward[:, None] - reward[None, :])
    upper = jnp.triu(jnp.ones((A, A), bool), 1)
    n_win = jax.random.binomial(
        k_pref, comparisons_per_pair, jnp.where(upper, p_win, 0.5)
    ).astype(reward.dtype)
    n_win = jnp.where(upper, n_win, 0.0)
    wins = n_win + jnp.where(upper, comparisons_per_pair - n_win, 0.0).T
    return counts[None], (wins / jnp.sum(wins))[None]
