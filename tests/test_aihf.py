"""AIHF, SFT, RLHF and DPO (MATH.md §7): the paper's bandit facts, Lemma 5.1, DPO's
closed form, and Numerical Example 2 at a reduced number of repeats."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bilevel_rl import hypergradient, occupancy_measure, soft_optimal_policy
from bilevel_rl.algorithms import aihf, drlhf, exact
from bilevel_rl.algorithms.aihf import lemma51_gradient
from bilevel_rl.alignment import (
    AlignmentData,
    aihf_problem,
    bandit_datasets,
    demo_term,
    dpo_policy,
    fit_bradley_terry,
    rlhf_policy,
    sft_policy,
    total_variation,
)
from bilevel_rl.experiment import run
from bilevel_rl.suites import aihf_gaussian_reward, bandit_mdp, dirichlet_mdp

BANDIT = bandit_mdp(2, tau=1.0, dtype=jnp.float64)


def two_action_data(demos, prefs):
    """``demos = (n1, n2)`` demonstrations, ``prefs = (m1, m2)``: ``m1`` times
    action 1 preferred to action 2. ``alpha = |D| / |P|``."""
    counts = jnp.asarray([demos], float) / sum(demos)
    wins = jnp.asarray([[[0.0, prefs[0]], [prefs[1], 0.0]]]) / sum(prefs)
    return AlignmentData(counts, wins, jnp.asarray(sum(demos) / sum(prefs)))


# Paper Section 4: (demonstrations, preferences) and the expected pi_1 of
# SFT, of the preference reward r_P, of RLHF and of AIHF.
EXAMPLES = [
    ((50, 50), (6, 4), 1 / 2, 6 / 10, 6 / 10, 56 / 110),
    ((6, 4), (50, 50), 6 / 10, 1 / 2, 6 / 10, 56 / 110),
]


@pytest.mark.parametrize("demos, prefs, sft, r_p, rlhf, aihf_pi1", EXAMPLES)
def test_bandit_examples_exact(demos, prefs, sft, r_p, rlhf, aihf_pi1):
    data = two_action_data(demos, prefs)
    pi_sft = sft_policy(data.demo_counts)
    assert float(pi_sft[0, 0]) == pytest.approx(sft, abs=1e-12)
    r_hat = fit_bradley_terry(data.wins)
    pi_rp = soft_optimal_policy(BANDIT, r_hat)
    assert float(pi_rp[0, 0]) == pytest.approx(r_p, abs=1e-6)
    assert float(rlhf_policy(BANDIT, r_hat, pi_sft)[0, 0]) == pytest.approx(
        rlhf, abs=1e-6
    )
    # Closed form of the AIHF optimum for two actions (MATH.md §7).
    closed = (demos[0] + prefs[0]) / (sum(demos) + sum(prefs))
    assert closed == pytest.approx(aihf_pi1, abs=1e-15)
    problem = aihf_problem(BANDIT, data)
    step = 0.5 / (1.0 + float(data.alpha))
    for solver in (
        exact.make(optimizer={"learning_rate": step}),
        aihf.make(optimizer={"learning_rate": step}, inner_steps=1),
    ):
        state, hist = run(solver, problem, jax.random.key(0), 300)
        pi = soft_optimal_policy(BANDIT, state.x)
        assert float(pi[0, 0]) == pytest.approx(aihf_pi1, abs=1e-6)
        assert float(hist["exact_grad_norm"][-1]) < 1e-8


def test_lemma51_gradient_equals_exact_gradient_of_l1():
    key = jax.random.key(3)
    mdp = dirichlet_mdp(key, 6, 3, gamma=0.8, tau=0.7, dtype=jnp.float64)
    expert = jax.nn.softmax(jax.random.normal(jax.random.key(4), (6, 3)), -1)
    # Demonstrations' visitation per trajectory: that of an expert in this MDP.
    counts = occupancy_measure(mdp, expert) / (1.0 - mdp.gamma)
    data = AlignmentData(counts, jnp.zeros((6, 3, 3)), jnp.asarray(1.0))
    problem = aihf_problem(mdp, data)
    x = jax.random.normal(jax.random.key(5), (6, 3), jnp.float64)
    pi = soft_optimal_policy(mdp, x)
    visits = occupancy_measure(mdp, pi) / (1.0 - mdp.gamma)
    lemma = lemma51_gradient(problem, x, pi, visits)
    exact_grad = hypergradient(lambda x, p: demo_term(counts, p), lambda x: x, x, mdp)
    np.testing.assert_allclose(lemma, exact_grad, rtol=1e-9, atol=1e-12)


def test_sampled_aihf_converges_to_the_exact_aihf_optimum():
    # Algorithm 1 with the agent's visitation from 64 sampled trajectories of 60
    # steps (truncation 0.8^60 ~ 2e-6) and a 1/sqrt(k) step approaches the optimum
    # of exact AIHF (hyper-gradient descent with the exact gradient, 4000 steps).
    mdp = dirichlet_mdp(jax.random.key(0), 4, 2, gamma=0.8, tau=0.7, dtype=jnp.float64)
    expert = jax.nn.softmax(jax.random.normal(jax.random.key(1), (4, 2)), -1)
    counts = occupancy_measure(mdp, expert) / (1.0 - mdp.gamma)
    wins = jax.random.uniform(jax.random.key(2), (4, 2, 2)) * (1 - jnp.eye(2))
    data = AlignmentData(counts, wins / wins.sum(), jnp.asarray(0.1))
    problem = aihf_problem(mdp, data)
    _, ref = run(
        exact.make(optimizer={"learning_rate": 3.0}), problem, jax.random.key(0), 4000
    )
    assert float(ref["exact_grad_norm"][-1]) < 1e-4  # an ill-conditioned valley
    schedule = optax.scale_by_schedule(lambda k: -3.0 / jnp.sqrt(1.0 + k / 100))
    solver = aihf.make(optimizer=schedule, num_samples=64, horizon=60)
    keys = jax.random.split(jax.random.key(3), 4)
    problems = jax.tree.map(lambda a: jnp.stack([a] * 4), problem)
    _, hist = run(solver, problems, keys, 1000)
    gap = hist["exact_f"][:, -50:].mean(-1) - ref["exact_f"][-1]
    # Initial gap 0.29; exact AIHF itself is 3.6e-3 away after 100 iterations.
    assert (gap >= -1e-12).all() and (gap < 1e-3).all(), gap
    assert (hist["exact_grad_norm"][:, -1] < 0.1 * ref["exact_grad_norm"][0]).all()


def test_dpo_gradient_solution_matches_its_closed_form():
    A = 5
    rng = np.random.default_rng(0)
    wins = rng.uniform(0.2, 1.0, (1, A, A)) * (1 - np.eye(A))
    data = AlignmentData(jnp.zeros((1, A)), jnp.asarray(wins / wins.sum()), 0.0)
    ref = jnp.asarray(rng.dirichlet(np.ones(A)))[None]
    beta = 0.5
    pi_dpo = dpo_policy(data, ref, beta)
    mdp = bandit_mdp(A, tau=beta, dtype=jnp.float64)
    closed = rlhf_policy(mdp, fit_bradley_terry(data.wins, ridge=1e-12), ref)
    np.testing.assert_allclose(pi_dpo, closed, atol=1e-6)


def test_numerical_example_2_aihf_beats_sft_and_rlhf():
    r = aihf_gaussian_reward(50, dtype=jnp.float64)
    truth = jax.nn.softmax(r)[None]
    mdp = bandit_mdp(50, tau=1.0, dtype=jnp.float64)
    keys = jax.random.split(jax.random.key(0), 4)

    def estimates(key):
        counts, wins = bandit_datasets(
            key, r, num_demos=2000, comparisons_per_pair=200, covered=45
        )
        alpha = 2000 / (200 * 50 * 49 / 2)
        data = AlignmentData(counts, wins, jnp.asarray(alpha))
        pi_sft = sft_policy(counts)
        pi_rlhf = rlhf_policy(mdp, fit_bradley_terry(wins), pi_sft)
        return data, pi_sft, pi_rlhf

    data, pi_sft, pi_rlhf = jax.vmap(estimates)(keys)
    problems = jax.vmap(lambda d: aihf_problem(mdp, d))(data)
    state, _ = run(exact.make(optimizer={"learning_rate": 100.0}), problems, keys, 200)
    pi_aihf = jax.vmap(lambda x: soft_optimal_policy(mdp, x))(state.x)
    tv = {
        name: np.asarray(jax.vmap(total_variation, (0, None))(pi, truth))
        for name, pi in [("sft", pi_sft), ("rlhf", pi_rlhf), ("aihf", pi_aihf)]
    }
    assert (tv["aihf"] < tv["sft"]).all() and (tv["aihf"] < tv["rlhf"]).all()
    for pi in (pi_sft, pi_rlhf):
        assert float(pi[..., 45:].sum(-1).max()) < 0.01
    assert float(pi_aihf[..., 45:].sum(-1).min()) > 0.05  # truth: 0.096


def test_drlhf_converges_to_the_two_stage_rlhf_solution():
    data = two_action_data((50, 50), (6, 4))
    problem = aihf_problem(BANDIT, data)
    state, hist = run(
        drlhf.make(optimizer={"learning_rate": 2.0}), problem, jax.random.key(0), 200
    )
    margin = float(state.x[0, 0] - state.x[0, 1])
    assert margin == pytest.approx(float(np.log(6 / 4)), abs=1e-6)  # BT MLE
    assert float(state.follower.policy[0, 0]) == pytest.approx(0.6, abs=1e-6)
    # Not the AIHF optimum: the alternating scheme ignores the demonstrations.
    assert float(hist["exact_grad_norm"][-1]) > 1e-3


def test_drlhf_is_two_stage_rlhf_only_with_the_sft_reference():
    # Demonstrations 6:4, preferences 50:50: pi_SFT = 0.6, the BT reward is flat,
    # so RLHF (reference pi_SFT) keeps 0.6 while pi(r̂_P) with a uniform reference
    # is 0.5: the counts separate the two.
    data = two_action_data((6, 4), (50, 50))
    solver = drlhf.make(optimizer={"learning_rate": 2.0})
    pi_sft = sft_policy(data.demo_counts)
    finals = {}
    for name, mdp in [("uniform", BANDIT), ("sft", BANDIT.replace(ref_policy=pi_sft))]:
        state, _ = run(solver, aihf_problem(mdp, data), jax.random.key(0), 200)
        finals[name] = float(state.follower.policy[0, 0])
    r_hat = fit_bradley_terry(data.wins)
    assert finals["uniform"] == pytest.approx(0.5, abs=1e-6)
    assert finals["sft"] == pytest.approx(
        float(rlhf_policy(BANDIT, r_hat, pi_sft)[0, 0]), abs=1e-6
    )
    assert finals["sft"] == pytest.approx(0.6, abs=1e-6)


@pytest.mark.parametrize(
    "make, kwargs, message",
    [
        (
            aihf.make,
            dict(optimizer={"learning_rate": 0.0}),
            "optimizer.learning_rate: must be finite and > 0",
        ),
        (aihf.make, dict(num_samples=0), "num_samples: must be finite"),
        (aihf.make, dict(horizon=0), "horizon: must be finite and > 0"),
        (drlhf.make, dict(inner_steps=0), "inner_steps: must be finite and > 0"),
        (drlhf.make, dict(policy_step=-1.0), "policy_step: must be finite and > 0"),
    ],
)
def test_bad_configuration(make, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make(**kwargs)
