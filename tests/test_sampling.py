"""Tests for bilevel_rl.sampling: shapes, determinism, statistics, jit/vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_P

from bilevel_rl.mdp import TabularMDP, stack
from bilevel_rl.sampling import (
    Preferences,
    Trajectories,
    bradley_terry_labels,
    demonstrations,
    discounted_sum,
    empirical_policy,
    preference_pairs,
    rollout,
    rollout_from,
    trajectory_returns,
    visitation_counts,
)
from bilevel_rl.soft import occupancy_measure

S, A, GAMMA = 4, 3, 0.8
H_SMALL, N_SMALL = 7, 8
H_LONG, N_LONG = 60, 2000  # gamma^H = 1.5e-6: truncation is negligible

rollout_jit = jax.jit(rollout, static_argnames=("horizon", "num_trajectories"))
rollout_from_jit = jax.jit(rollout_from, static_argnames=("horizon",))
prefs_jit = jax.jit(preference_pairs, static_argnames=("horizon", "num_pairs"))


def make_problem(seed: int, gamma: float = GAMMA):
    rng = np.random.default_rng(seed)
    mdp = TabularMDP.create(
        random_P(rng, S, A), gamma=gamma, tau=1.0, rho=rng.dirichlet(np.ones(S))
    )
    policy = jnp.asarray(rng.dirichlet(np.ones(A), size=S))
    reward = jnp.asarray(rng.normal(size=(S, A)))
    return mdp, policy, reward


@pytest.fixture(scope="module")
def problem():
    return make_problem(0)


@pytest.fixture(scope="module")
def long_rollout(problem):
    mdp, policy, _ = problem
    return rollout_jit(
        jax.random.key(1), mdp, policy, horizon=H_LONG, num_trajectories=N_LONG
    )


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ------------------------------------------------------------------ basic rollout


def test_shapes_dtypes_and_consistency(problem):
    mdp, policy, reward = problem
    tr = rollout_jit(
        jax.random.key(0),
        mdp,
        policy,
        horizon=H_SMALL,
        num_trajectories=N_SMALL,
        reward=reward,
    )
    assert isinstance(tr, Trajectories)
    for field in (tr.states, tr.actions, tr.log_probs, tr.rewards, tr.next_states):
        assert field.shape == (N_SMALL, H_SMALL)
    assert tr.final_states.shape == (N_SMALL,)
    assert tr.states.dtype == jnp.int32 and tr.actions.dtype == jnp.int32
    assert tr.final_states.dtype == jnp.int32
    assert tr.log_probs.dtype == policy.dtype
    s, a = np.asarray(tr.states), np.asarray(tr.actions)
    assert s.min() >= 0 and s.max() < S and a.min() >= 0 and a.max() < A
    np.testing.assert_allclose(tr.log_probs, np.log(np.asarray(policy))[s, a])
    np.testing.assert_allclose(tr.rewards, np.asarray(reward)[s, a])
    np.testing.assert_array_equal(tr.next_states[:, :-1], tr.states[:, 1:])
    np.testing.assert_array_equal(tr.next_states[:, -1], tr.final_states)


def test_determinism(problem):
    mdp, policy, reward = problem
    kw = dict(horizon=H_SMALL, num_trajectories=N_SMALL, reward=reward)
    a = rollout_jit(jax.random.key(3), mdp, policy, **kw)
    b = rollout_jit(jax.random.key(3), mdp, policy, **kw)
    c = rollout_jit(jax.random.key(4), mdp, policy, **kw)
    assert_trees_equal(a, b)
    assert not np.array_equal(a.states, c.states) or not np.array_equal(
        a.actions, c.actions
    )
    # eager == jit
    assert_trees_equal(rollout(jax.random.key(3), mdp, policy, **kw), a)
    # the same key under a nearby policy re-uses the noise (common random numbers)
    nearby = policy * jnp.array([1.02, 1.0, 0.98])
    d = rollout_jit(
        jax.random.key(3), mdp, nearby / nearby.sum(-1, keepdims=True), **kw
    )
    np.testing.assert_array_equal(d.states[:, 0], a.states[:, 0])
    assert np.mean(np.asarray(d.actions[:, 0] == a.actions[:, 0])) > 0.7


def test_zero_probabilities_are_never_sampled():
    rng = np.random.default_rng(5)
    P = random_P(rng, S, A, concentration=0.3)
    P[:, :, 0] = 0.0  # state 0 is never reached after t = 0
    P /= P.sum(-1, keepdims=True)
    rho = np.array([0.0, 0.5, 0.5, 0.0])
    mdp = TabularMDP.create(P, gamma=GAMMA, tau=1.0, rho=rho)
    policy = np.eye(A)[rng.integers(A, size=S)]  # deterministic: zeros elsewhere
    tr = rollout_jit(
        jax.random.key(0),
        mdp,
        jnp.asarray(policy),
        horizon=H_SMALL,
        num_trajectories=N_SMALL,
        reward=jnp.zeros((S, A)),
    )
    s, a, s2 = (np.asarray(x) for x in (tr.states, tr.actions, tr.next_states))
    assert np.all(rho[s[:, 0]] > 0)
    assert np.all(policy[s, a] == 1.0)
    assert np.all(P[s, a, s2] > 0)
    np.testing.assert_array_equal(tr.log_probs, 0.0)


def test_init_states_and_log_prob_gradient(problem):
    mdp, policy, _ = problem
    init = jnp.arange(N_SMALL, dtype=jnp.int32) % S

    def total_log_prob(pi):
        tr = rollout(jax.random.key(2), mdp, pi, horizon=H_SMALL, init_states=init)
        return tr.log_probs.sum(), tr

    grad, tr = jax.jit(jax.grad(total_log_prob, has_aux=True))(policy)
    np.testing.assert_array_equal(tr.states[:, 0], init)
    # d/d pi of sum_t log pi(a_t|s_t) = counts / pi (score of the sampled actions)
    np.testing.assert_allclose(grad, visitation_counts(tr, S, A) / policy)


def test_validation_errors(problem):
    mdp, policy, _ = problem
    with pytest.raises(ValueError, match="horizon"):
        rollout(jax.random.key(0), mdp, policy, horizon=0, num_trajectories=2)
    with pytest.raises(ValueError, match="num_trajectories"):
        rollout(jax.random.key(0), mdp, policy, horizon=2)
    with pytest.raises(ValueError, match="policy"):
        rollout(jax.random.key(0), mdp, policy[:, :2], horizon=2, num_trajectories=2)
    with pytest.raises(ValueError, match="init_states"):
        rollout(
            jax.random.key(0),
            mdp,
            policy,
            horizon=2,
            num_trajectories=3,
            init_states=jnp.zeros(2, jnp.int32),
        )
    with pytest.raises(ValueError, match="actions"):
        rollout_from(
            jax.random.key(0),
            mdp,
            policy,
            jnp.zeros(3, int),
            jnp.zeros(2, int),
            horizon=2,
        )


# -------------------------------------------------------------------- statistics


def test_discounted_occupancy_matches_exact(problem, long_rollout):
    mdp, policy, _ = problem
    per_traj = jax.vmap(lambda t: visitation_counts(t, S, A, GAMMA))(long_rollout)
    x = (1.0 - GAMMA) * np.asarray(per_traj)  # [N, S, A]
    mean = x.mean(0)
    se = x.std(0, ddof=1) / np.sqrt(N_LONG)
    exact = np.asarray(occupancy_measure(mdp, policy))
    assert np.all(se > 0)
    np.testing.assert_array_less(np.abs(mean - exact), 5 * se + GAMMA**H_LONG)
    total = (1.0 - GAMMA) * visitation_counts(long_rollout, S, A, GAMMA) / N_LONG
    np.testing.assert_allclose(total.sum(), 1.0 - GAMMA**H_LONG)


def test_behaviour_cloning_recovers_policy(problem, long_rollout):
    _, policy, _ = problem
    counts = np.asarray(visitation_counts(long_rollout, S, A))
    assert counts.sum() == N_LONG * H_LONG
    bc = np.asarray(empirical_policy(long_rollout, S, A))
    n_s = counts.sum(-1, keepdims=True)
    # visits are Markov-dependent in states but actions are drawn i.i.d. given s
    se = np.sqrt(bc * (1 - bc) / n_s) + 1e-12
    np.testing.assert_array_less(np.abs(bc - np.asarray(policy)), 5 * se)


def test_empirical_policy_edge_cases():
    states = jnp.array([[0, 0, 1]], jnp.int32)
    actions = jnp.array([[1, 1, 0]], jnp.int32)
    tr = Trajectories(states, actions, jnp.zeros((1, 3)), jnp.array([1], jnp.int32))
    np.testing.assert_allclose(
        visitation_counts(tr, 3, 2, gamma=0.5), [[0, 1.5], [0.25, 0], [0, 0]]
    )
    pi = empirical_policy(tr, 3, 2)
    np.testing.assert_allclose(pi, [[0, 1], [1, 0], [0.5, 0.5]])
    pi = empirical_policy(tr, 3, 2, smoothing=1.0)
    np.testing.assert_allclose(pi, [[1 / 4, 3 / 4], [2 / 3, 1 / 3], [0.5, 0.5]])


def test_discounted_sum():
    values = jnp.arange(12.0).reshape(3, 4)
    np.testing.assert_allclose(
        discounted_sum(values, 0.5),
        (np.arange(12.0).reshape(3, 4) * 0.5 ** np.arange(4)).sum(-1),
    )
    np.testing.assert_allclose(discounted_sum(values, 1.0), values.sum(-1))
    np.testing.assert_allclose(discounted_sum(values, 0.0), values[:, 0])
    g = jax.grad(lambda gm: discounted_sum(values[0], gm))(0.0)
    np.testing.assert_allclose(g, values[0, 1])


def test_generative_rollouts_start_and_estimate_q(problem):
    mdp, policy, reward = problem
    E, L = 400, H_LONG
    s_grid, a_grid = np.meshgrid(np.arange(S), np.arange(A), indexing="ij")
    states = jnp.asarray(np.repeat(s_grid[..., None], E, -1), jnp.int32)  # [S,A,E]
    actions = jnp.asarray(np.repeat(a_grid[..., None], E, -1), jnp.int32)
    key = jax.random.key(7)
    tq = rollout_from_jit(key, mdp, policy, states, actions, horizon=L, reward=reward)
    assert tq.states.shape == (S, A, E, L) and tq.final_states.shape == (S, A, E)
    np.testing.assert_array_equal(tq.states[..., 0], states)
    np.testing.assert_array_equal(tq.actions[..., 0], actions)
    np.testing.assert_allclose(
        tq.log_probs[..., 0], np.log(np.asarray(policy))[states, actions]
    )
    tv = rollout_from_jit(key, mdp, policy, states, horizon=L, reward=reward)
    np.testing.assert_array_equal(tv.states[..., 0], states)

    # exact (unregularized) Q^pi and V^pi by a linear solve
    P, pi, r = np.asarray(mdp.P), np.asarray(policy), np.asarray(reward)
    P_pi = np.einsum("sa,sat->st", pi, P)
    v = np.linalg.solve(np.eye(S) - GAMMA * P_pi, (pi * r).sum(-1))
    q = r + GAMMA * P @ v
    bias = GAMMA**L * np.abs(r).max() / (1 - GAMMA)
    for trajs, exact in ((tq, q), (tv, np.broadcast_to(v[:, None], (S, A)))):
        ret = np.asarray(discounted_sum(trajs.rewards, GAMMA))  # [S, A, E]
        np.testing.assert_allclose(
            ret, trajectory_returns(trajs, reward, GAMMA), rtol=1e-12
        )
        se = ret.std(-1, ddof=1) / np.sqrt(E)
        np.testing.assert_array_less(np.abs(ret.mean(-1) - exact), 5 * se + bias)


def test_bradley_terry_label_frequency(problem):
    mdp, policy, reward = problem
    reward = 0.3 * reward  # keeps sigmoid(R1 - R2) away from 0/1: a sharper test
    n = 4000
    prefs = prefs_jit(
        jax.random.key(11), mdp, policy, reward, horizon=H_SMALL, num_pairs=n
    )
    assert isinstance(prefs, Preferences)
    assert prefs.first.states.shape == (n, H_SMALL) and prefs.labels.shape == (n,)
    assert prefs.first.rewards is None
    y = np.asarray(prefs.labels)
    assert set(np.unique(y)) <= {0.0, 1.0}
    r = np.asarray(reward)
    returns = [r[t.states, t.actions].sum(-1) for t in (prefs.first, prefs.second)]
    diff = returns[0] - returns[1]
    p = 1.0 / (1.0 + np.exp(-diff))
    se = np.sqrt(np.mean(p * (1 - p)) / n)
    assert abs(y.mean() - p.mean()) < 5 * se
    # the mean alone is blind to the BT scale (diff is symmetric); the score test of
    # the logistic model y ~ Bernoulli(sigmoid(beta * diff)) at beta = 1 is not
    z = np.sum((y - p) * diff) / np.sqrt(np.sum(p * (1 - p) * diff**2))
    assert abs(z) < 5
    # labels are informative: y = 1 is more frequent where R1 > R2
    assert y[p > 0.5].mean() > y[p < 0.5].mean()
    winners, losers = prefs.ordered()
    first_wins = y == 1.0
    np.testing.assert_array_equal(
        winners.states[first_wins], prefs.first.states[first_wins]
    )
    np.testing.assert_array_equal(
        losers.actions[~first_wins], prefs.first.actions[~first_wins]
    )
    # the two trajectories of a pair are independent draws
    assert not np.array_equal(prefs.first.states, prefs.second.states)


def test_bandit_action_preferences():
    num_actions, n = 3, 3000
    mdp = TabularMDP.create(np.ones((1, num_actions, 1)), gamma=0.0, tau=1.0)
    policy = jnp.full((1, num_actions), 1.0 / num_actions)
    r = jnp.array([[0.0, 1.0, -1.0]])
    prefs = prefs_jit(
        jax.random.key(0), mdp, policy, r, horizon=1, num_pairs=n, gamma=mdp.gamma
    )
    np.testing.assert_array_equal(prefs.first.states, 0)
    a1, a2 = (
        np.asarray(prefs.first.actions[:, 0]),
        np.asarray(prefs.second.actions[:, 0]),
    )
    y = np.asarray(prefs.labels)
    r_np = np.asarray(r[0])
    for i, j in ((1, 0), (0, 2), (1, 2)):
        sel = (a1 == i) & (a2 == j)
        p = 1.0 / (1.0 + np.exp(-(r_np[i] - r_np[j])))
        se = np.sqrt(p * (1 - p) / sel.sum())
        assert abs(y[sel].mean() - p) < 5 * se
    labels = bradley_terry_labels(jax.random.key(1), jnp.zeros(n), jnp.zeros(n))
    assert abs(float(labels.mean()) - 0.5) < 5 * np.sqrt(0.25 / n)


def test_demonstrations_are_rollouts(problem):
    mdp, policy, reward = problem
    demos = jax.jit(demonstrations, static_argnames=("horizon", "num_trajectories"))(
        jax.random.key(5), mdp, policy, horizon=H_SMALL, num_trajectories=N_SMALL
    )
    ref = rollout_jit(
        jax.random.key(5),
        mdp,
        policy,
        horizon=H_SMALL,
        num_trajectories=N_SMALL,
        reward=reward,
    )
    assert demos.rewards is None
    # passing a reward only records it; the samples are the same
    assert_trees_equal(demos, ref._replace(rewards=None))


def test_float32_mdp():
    mdp, policy, reward = make_problem(3)
    mdp32 = jax.tree.map(lambda x: x.astype(jnp.float32), mdp)
    tr = rollout_jit(
        jax.random.key(0),
        mdp32,
        policy.astype(jnp.float32),
        horizon=H_SMALL,
        num_trajectories=N_SMALL,
        reward=reward.astype(jnp.float32),
    )
    assert tr.log_probs.dtype == jnp.float32 and tr.rewards.dtype == jnp.float32
    assert visitation_counts(tr, S, A, 0.5).dtype == jnp.float32


# ------------------------------------------------------------------- jit and vmap


def sample_everything(key, mdp, policy, reward):
    """Samplers (preference_pairs covers rollout) for the jit/vmap comparisons."""
    k1, k2 = jax.random.split(key)
    starts = jnp.arange(N_SMALL, dtype=jnp.int32) % S
    gen = rollout_from(
        k1, mdp, policy, starts, starts % A, horizon=H_SMALL, reward=reward
    )
    prefs = preference_pairs(
        k2, mdp, policy, reward, horizon=H_SMALL, num_pairs=N_SMALL, gamma=mdp.gamma
    )
    counts = visitation_counts(prefs.first, S, A, mdp.gamma)
    return (gen, prefs), (counts, empirical_policy(prefs.second, S, A))


sample_jit = jax.jit(sample_everything)


def assert_batch_matches_singles(batched, singles):
    for i, single in enumerate(singles):
        got = jax.tree.map(lambda x, i=i: x[i], batched)
        assert_trees_equal(got[0], single[0])  # integer samples: bitwise equal
        for x, y in zip(got[1], single[1]):
            np.testing.assert_allclose(x, y, rtol=1e-12)


def test_vmap_over_keys(problem):
    mdp, policy, reward = problem
    keys = jax.random.split(jax.random.key(9), 3)
    batched = jax.jit(jax.vmap(sample_everything, in_axes=(0, None, None, None)))(
        keys, mdp, policy, reward
    )
    singles = [sample_jit(k, mdp, policy, reward) for k in keys]
    assert_batch_matches_singles(batched, singles)


def test_vmap_over_mdps_and_policies():
    problems = [make_problem(seed) for seed in (20, 21, 22)]
    mdps = stack([p[0] for p in problems])
    policies = jnp.stack([p[1] for p in problems])
    rewards = jnp.stack([p[2] for p in problems])
    keys = jax.random.split(jax.random.key(4), 3)
    batched = jax.jit(jax.vmap(sample_everything))(keys, mdps, policies, rewards)
    singles = [sample_jit(keys[i], *problems[i]) for i in range(3)]
    assert_batch_matches_singles(batched, singles)
    # Preferences.ordered works on a batch of preference sets too
    winners, losers = batched[0][1].ordered()
    for i, single in enumerate(singles):
        w, l_ = single[0][1].ordered()
        np.testing.assert_array_equal(winners.states[i], w.states)
        np.testing.assert_array_equal(losers.actions[i], l_.actions)
