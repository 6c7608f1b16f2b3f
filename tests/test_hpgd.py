"""HPGD (MATH.md §8): the estimator's mean equals the exact hyper-gradient within 5
standard errors; the algorithm decreases the exact objective; bad settings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilevel_rl import BilevelProblem, value_and_hypergradient
from bilevel_rl.algorithms import hpgd
from bilevel_rl.algorithms.hpgd import hpgd_estimate, target_reward
from bilevel_rl.experiment import run
from bilevel_rl.objectives import IncentiveData, incentive_design
from bilevel_rl.rewards import state_incentive_reward
from bilevel_rl.suites import dirichlet_mdp


def incentive_problem(key, S=6, A=3):
    k_mdp, k_r, k_x = jax.random.split(key, 3)
    mdp = dirichlet_mdp(k_mdp, S, A, gamma=0.8, tau=0.5, dtype=jnp.float64)
    data = IncentiveData(
        mdp=mdp,
        base_reward=jax.random.uniform(k_r, (S, A), jnp.float64),
        target=jnp.zeros(S).at[S - 1].set(1.0),
        cost=jnp.asarray(0.05),
    )
    x0 = 0.3 * jax.random.normal(k_x, (S,), jnp.float64)
    return BilevelProblem(
        mdp=mdp,
        data=data,
        x0=x0,
        reward_fn=state_incentive_reward,
        upper=incentive_design,
    )


def test_estimator_mean_matches_the_exact_hypergradient():
    problem = incentive_problem(jax.random.key(0))
    x = problem.x0
    reward_fn, upper = problem.bind()
    _, exact = value_and_hypergradient(upper, reward_fn, x, problem.mdp)
    estimate = jax.jit(
        jax.vmap(
            lambda k: hpgd_estimate(
                k, problem, x, target_reward(problem.data),
                num_trajectories=4, horizon=70,
            )
        )
    )  # fmt: skip
    samples = np.asarray(estimate(jax.random.split(jax.random.key(1), 2000)))
    mean = samples.mean(0)
    stderr = samples.std(0, ddof=1) / np.sqrt(len(samples))
    # Truncation bias gamma^70 ~ 2e-7 is far below the standard errors.
    assert np.all(np.abs(mean - np.asarray(exact)) <= 5 * stderr + 1e-6), (
        mean,
        exact,
        stderr,
    )
    assert np.all(stderr < 0.05 * np.abs(np.asarray(exact)).max())


def test_hpgd_decreases_the_exact_objective():
    keys = jax.random.split(jax.random.key(2), 3)
    problems = jax.vmap(incentive_problem)(keys)
    solver = hpgd.make(optimizer={"learning_rate": 0.2}, num_samples=8, horizon=40)
    _, hist = run(solver, problems, keys, 150)
    f = np.asarray(hist["exact_f"])
    assert (f[:, -20:].mean(1) < f[:, 0] - 0.01).all()
    g = np.asarray(hist["exact_grad_norm"])
    assert (g[:, -20:].mean(1) < 0.5 * g[:, 0]).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(optimizer={"learning_rate": 0.0}),
            "optimizer.learning_rate: must be finite and > 0",
        ),
        (dict(num_samples=0), "num_samples: must be finite and > 0"),
        (dict(horizon=-2), "horizon: must be finite and > 0"),
    ],
)
def test_bad_configuration(kwargs, message):
    with pytest.raises(ValueError, match=message):
        hpgd.make(upper_reward=target_reward, **kwargs)
