"""Upper objectives that are not covered by the algorithm and suite tests."""

import jax
import jax.numpy as jnp
import numpy as np

from bilevel_rl import hypergradient, rollout, soft_value_iteration
from bilevel_rl.objectives import DemoData, demo_log_likelihood
from bilevel_rl.sampling import visitation_counts
from bilevel_rl.suites import dirichlet_mdp


def test_demo_log_likelihood_matches_trajectories_and_its_hypergradient():
    """-alpha L1(pi) from visitation counts equals the per-trajectory average of
    -alpha sum_t gamma^t log pi(a_t|s_t), and its exact hyper-gradient passes
    the closed-form vs finite-difference check."""
    mdp = dirichlet_mdp(jax.random.key(0), 4, 3, gamma=0.8, tau=0.5)
    expert = soft_value_iteration(mdp, jnp.eye(4, 3)).policy
    demos = rollout(jax.random.key(1), mdp, expert, horizon=12, num_trajectories=50)
    data = DemoData(visitation_counts(demos, 4, 3, gamma=0.8) / 50, jnp.asarray(2.0))
    pi = jax.nn.softmax(jax.random.normal(jax.random.key(2), (4, 3)), axis=-1)
    direct = -2.0 * np.mean(
        np.sum(0.8 ** np.arange(12) * np.log(pi[demos.states, demos.actions]), -1)
    )
    np.testing.assert_allclose(demo_log_likelihood(data, None, pi), direct, rtol=1e-12)

    def reward_fn(x):
        return jnp.tanh(x)

    def upper(x, policy):
        return demo_log_likelihood(data, x, policy)

    x = jax.random.normal(jax.random.key(3), (4, 3))
    g = hypergradient(upper, reward_fn, x, mdp)

    def phi(x):
        sol = soft_value_iteration(mdp, reward_fn(x), tol=1e-13)
        return upper(x, sol.policy)

    e = np.zeros((4, 3))
    e[1, 2] = 1e-6
    fd = (phi(x + e) - phi(x - e)) / 2e-6
    np.testing.assert_allclose(g[1, 2], fd, rtol=1e-6, atol=1e-9)
