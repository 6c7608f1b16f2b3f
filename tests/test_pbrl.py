"""PBRL (value penalty, MATH.md §8): Danskin's value gradient, convergence, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilevel_rl import soft_value_iteration
from bilevel_rl.algorithms import pbrl
from bilevel_rl.algorithms.pbrl import optimal_value_gradient
from bilevel_rl.experiment import run
from bilevel_rl.suites import garnet_mdp, sobirl_synthetic


def test_optimal_value_gradient_matches_finite_differences():
    mdp = garnet_mdp(jax.random.key(0), 8, 3, 3, gamma=0.9, tau=0.4, dtype=jnp.float64)
    features = jax.random.normal(jax.random.key(1), (8, 3, 4), jnp.float64)

    def reward_fn(x):
        return jnp.tanh(features @ x)

    def value(x):
        sol = soft_value_iteration(
            mdp, reward_fn(x), method="policy_iteration", tol=1e-14
        )
        return mdp.rho @ sol.v

    x = jnp.asarray([0.3, -0.7, 0.2, 1.1])
    g = optimal_value_gradient(mdp, reward_fn, x)
    h = 1e-6
    fd = [(value(x + h * e) - value(x - h * e)) / (2 * h) for e in jnp.eye(4)]
    np.testing.assert_allclose(g, fd, rtol=1e-7, atol=1e-9)
    # For a fixed policy the value is linear in the reward: exact by autodiff.
    pi = jax.nn.softmax(jax.random.normal(jax.random.key(2), (8, 3)), -1)
    g_pi = optimal_value_gradient(mdp, reward_fn, x, policy=pi)
    from bilevel_rl import soft_policy_evaluation

    auto = jax.grad(
        lambda x: mdp.rho @ soft_policy_evaluation(mdp, reward_fn(x), pi)[0]
    )
    np.testing.assert_allclose(g_pi, auto(x), rtol=1e-10)


def test_pbrl_closes_the_value_gap_and_approaches_the_optimum():
    keys = jax.random.split(jax.random.key(0), 3)
    problems = jax.vmap(lambda k: sobirl_synthetic(k, dim=6))(keys)
    solver = pbrl.make(
        optimizer={"learning_rate": 5e-3}, penalty=20.0, policy_step=1.0, inner_steps=2
    )
    _, hist = run(solver, problems, keys, 400)
    gap = np.asarray(hist["value_gap"])
    assert (gap >= -1e-10).all() and (gap[:, -1] < 1e-3).all()
    f = np.asarray(hist["exact_f"])
    assert (f[:, -1] < f[:, 0]).all()
    assert (f[:, -1] - 1.0 < 0.15).all()  # the optimum is f* = 1 (penalty bias)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(penalty=0.0), "penalty: must be finite and > 0"),
        (
            dict(optimizer={"learning_rate": -1.0}),
            "optimizer.learning_rate: must be finite and > 0",
        ),
        (dict(inner_steps=0), "inner_steps: must be finite and > 0"),
        (dict(policy_step=float("inf")), "policy_step: must be finite and > 0"),
    ],
)
def test_bad_configuration(kwargs, message):
    with pytest.raises(ValueError, match=message):
        pbrl.make(**kwargs)
