"""Tabular RLHF suite (MATH.md §9.4): exact objective vs sampled pair losses, the
truth is a stationary point of the fitting term, offline data, accuracy score."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilevel_rl import soft_value_iteration
from bilevel_rl.sampling import rollout
from bilevel_rl.suites import (
    alignment_problem,
    held_out_pairs,
    preference_accuracy,
    rlhf_alignment_data,
    tabular_rlhf_problem,
)

PROBLEM = tabular_rlhf_problem(jax.random.key(0), num_states=4, num_actions=2)


def test_exact_objective_is_the_mean_pair_loss():
    problem = PROBLEM
    x = jnp.asarray([0.5, -1.0, 0.3, 0.8])
    policy = jax.nn.softmax(jax.random.normal(jax.random.key(1), (4, 2)), -1)
    exact = problem.objective(x, policy)

    @jax.jit
    def sampled(key):
        trajs = rollout(key, problem.mdp, policy, horizon=2, num_trajectories=2 * 4000)
        pairs = jax.tree.map(lambda a: a.reshape((4000, 2) + a.shape[1:]), trajs)
        return jax.vmap(problem.loss, in_axes=(None, 0))(x, pairs)

    losses = np.asarray(sampled(jax.random.key(2)))
    stderr = losses.std(ddof=1) / np.sqrt(len(losses))
    assert abs(losses.mean() - float(exact)) < 5 * stderr


def test_true_parameter_is_stationary_for_the_fitting_term():
    # Labels are the Bradley-Terry probabilities of r* = phi x*: at x = x* the BCE
    # part has zero gradient for any pair distribution, leaving the ridge lam x*.
    problem = PROBLEM
    policy = jax.nn.softmax(jax.random.normal(jax.random.key(3), (4, 2)), -1)
    x_star = problem.data.true_param
    g = jax.grad(problem.objective)(x_star, policy)
    np.testing.assert_allclose(g, problem.data.regularization * x_star, atol=1e-12)


def test_offline_data_and_accuracy_score():
    problem = tabular_rlhf_problem(jax.random.key(4), num_states=5, num_actions=3)
    make_data = jax.jit(
        rlhf_alignment_data,
        static_argnames=("num_demos", "demo_horizon", "num_comparisons"),
    )
    data = make_data(
        jax.random.key(5), problem, num_demos=50, demo_horizon=20, num_comparisons=4000
    )
    wins = np.asarray(data.wins)
    assert wins.sum() == pytest.approx(1.0)
    assert np.all(np.einsum("saa->sa", wins) == 0)
    gamma = float(problem.mdp.gamma)
    total = (1 - gamma**20) / (1 - gamma)
    assert float(data.demo_counts.sum()) == pytest.approx(total)
    assert float(data.alpha) == pytest.approx(50 / 4000)
    # The action with the larger true reward wins more often than not.
    r = np.asarray(problem.data.preferences.true_reward)
    better = r[:, :, None] > r[:, None, :]
    assert wins[better].sum() > 0.6
    # Demonstrations follow the true soft-optimal policy.
    expert = soft_value_iteration(problem.mdp, jnp.asarray(r)).policy
    visited = data.demo_counts.sum(-1) > 0.5
    empirical = data.demo_counts / data.demo_counts.sum(-1, keepdims=True)
    assert np.max(np.abs(empirical - expert)[visited]) < 0.15
    pairs = jax.jit(held_out_pairs, static_argnums=2)(jax.random.key(6), problem, 500)
    assert float(preference_accuracy(jnp.asarray(r), jnp.asarray(r), pairs)) == 1.0
    assert float(preference_accuracy(-jnp.asarray(r), jnp.asarray(r), pairs)) == 0.0
    assert float(preference_accuracy(0 * jnp.asarray(r), jnp.asarray(r), pairs)) == 0.5
    scaled = 3.0 * jnp.asarray(r) + 7.0  # returns of equal length: same order
    assert float(preference_accuracy(scaled, jnp.asarray(r), pairs)) == 1.0
    shapes = jax.eval_shape(
        lambda k: alignment_problem(k, num_demos=10, num_comparisons=30),
        jax.random.key(7),
    )
    assert shapes.x0.shape == (6, 3) and shapes.data.wins.shape == (6, 3, 3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(horizon=4), "horizon: the exact objective enumerates"),
        (dict(regularization=-1.0), "regularization"),
        (dict(dim=0), "dim: must be >= 1"),
    ],
)
def test_bad_sizes(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tabular_rlhf_problem(jax.random.key(0), **kwargs)
