"""SoBiRL (Algorithm 1) and Stoc-SoBiRL (Algorithms 3-4) on the reward-shaping suite."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilevel_rl import hypergradient
from bilevel_rl.algorithms import exact, sobirl, stoc_sobirl
from bilevel_rl.estimators import (
    exact_trajectory_hypergradient,
    expected_trajectory_loss,
    sampled_outer_hypergradient,
)
from bilevel_rl.experiment import run
from bilevel_rl.suites import shaping_problem, sobirl_synthetic

TINY = dict(num_states=3, num_actions=2, dim=3, horizon=3, gamma=0.8, tau=0.7)
SMALL = dict(num_states=5, num_actions=3, dim=4, horizon=6, gamma=0.8, tau=0.5)


def test_shaping_policy_level_objective_is_the_trajectory_expectation():
    problem = shaping_problem(jax.random.key(0), **TINY)
    reward_fn, upper = problem.bind()
    x = problem.x0
    pi = jax.nn.softmax(jax.random.normal(jax.random.key(1), (3, 2)), axis=-1)
    exact = expected_trajectory_loss(problem.loss, x, pi, problem.mdp, horizon=3)
    np.testing.assert_allclose(upper(x, pi), exact, rtol=1e-12)
    # hence Prop. 5.2 by enumeration equals the closed-form hyper-gradient
    g_enum = exact_trajectory_hypergradient(
        problem.loss, reward_fn, x, problem.mdp, horizon=3
    )
    g_closed = hypergradient(upper, reward_fn, x, problem.mdp)
    np.testing.assert_allclose(g_enum, g_closed, rtol=1e-9)


def test_sobirl_step_uses_the_sampled_outer_estimator_at_the_aligned_policy():
    problem = shaping_problem(jax.random.key(2), **SMALL)
    solver = sobirl.make(optimizer={"learning_rate": 0.1}, num_samples=4, inner_steps=5)
    state = solver.init(problem, jax.random.key(3))
    new, metrics = jax.jit(solver.step)(state, problem)
    # the policy is aligned to pi*_{x0} (soft policy iteration converges in <= 5)
    reward_fn, upper = problem.bind()
    _, k_est = jax.random.split(state.key)
    f, g = sampled_outer_hypergradient(
        k_est,
        problem.loss,
        reward_fn,
        problem.x0,
        problem.mdp,
        new.follower.policy,
        horizon=SMALL["horizon"],
        num_samples=4,
        with_value=True,
    )
    np.testing.assert_allclose(new.x, problem.x0 - 0.1 * g, rtol=1e-12)
    np.testing.assert_allclose(metrics["f"], f, rtol=1e-12)
    assert float(metrics["inner_residual"]) < 1e-8


@functools.lru_cache
def batch(n=4):
    keys = jax.random.split(jax.random.key(5), n)
    return jax.vmap(lambda k: shaping_problem(k, **SMALL))(keys), keys


def assert_descends(hist, by):
    """The exact φ drops by more than ``by`` on average over the batch (initial mean
    ≈ -1.74; exact hyper-gradient descent reaches ≈ -2.17) and the exact gradient
    ends near the stochastic noise floor (it starts at 0.03-0.45)."""
    f = np.asarray(hist["exact_f"])
    assert np.mean(f[:, 0] - f[:, -1]) > by, f[:, [0, -1]]
    g = np.asarray(hist["exact_grad_norm"])
    assert np.mean(g[:, -50:]) < 0.1, np.mean(g[:, -50:], axis=1)


def test_sobirl_converges_on_a_batch():
    problems, keys = batch()
    solver = sobirl.make(optimizer={"learning_rate": 0.5}, num_samples=8, inner_steps=3)
    _, hist = run(solver, problems, keys, 400)
    assert bool(hist["finite"].all())
    assert_descends(hist, by=0.15)


@pytest.mark.parametrize("momentum", ["storm", "average"])
def test_stoc_sobirl_converges_and_follows_its_schedules(momentum):
    # 16 instances: the per-instance drops vary by ~0.25, so the mean drop's
    # standard error must be small against the threshold of assert_descends.
    problems, keys = batch(16)
    a, w, c = 0.5, 10.0, 20.0
    solver = stoc_sobirl.make(
        optimizer={"learning_rate": a, "schedule": "inverse_cube_root", "offset": w},
        momentum_scale=c,
        momentum=momentum,
        num_samples=4,
        num_rollouts=2,
        rollout_length=15,
        inner_steps=3,
    )
    _, hist = run(solver, problems, keys, 400)
    assert bool(hist["finite"].all())
    assert_descends(hist, by=0.08)
    k = np.arange(400)
    beta = a / (w + k) ** (1 / 3)
    np.testing.assert_allclose(hist["step_size"][0], beta, rtol=1e-12)
    eta = np.concatenate([[1.0], np.clip(c * beta[:-1] ** 2, 0, 1)])
    np.testing.assert_allclose(hist["momentum_weight"][0], eta, rtol=1e-12)
    # d_0 = ĝ_0
    np.testing.assert_allclose(hist["grad_norm"][:, 0], hist["estimate_norm"][:, 0])


def test_storm_reuses_the_samples_at_the_previous_point():
    """With a vanishing step the previous point equals the current one, so the
    STORM correction cancels exactly: d_k = d_{k-1} for k >= 1 (same samples)."""
    problem = shaping_problem(jax.random.key(7), **SMALL)
    solver = stoc_sobirl.make(
        optimizer={
            "learning_rate": 1e-300,
            "schedule": "inverse_cube_root",
            "offset": 10.0,
        },
        momentum_scale=1.0,
        num_samples=2,
        num_rollouts=1,
        rollout_length=5,
        inner_steps=6,
        track_exact=False,
    )
    state = solver.init(problem, jax.random.key(0))
    step = jax.jit(solver.step)
    state, _ = step(state, problem)
    d0 = state.follower.d
    state, m1 = step(state, problem)
    # eta_1 = c beta_0^2 ~ 0, so d_1 = ĝ_1 + (d_0 - ĝ_1) = d_0
    np.testing.assert_allclose(state.follower.d, d0, rtol=1e-12, atol=1e-14)
    assert float(m1["estimate_norm"]) != pytest.approx(float(jnp.linalg.norm(d0)))


@pytest.mark.parametrize(
    "module, kwargs, msg",
    [
        (
            sobirl,
            dict(optimizer={"learning_rate": 0.0}),
            "optimizer.learning_rate: must be finite and > 0",
        ),
        (sobirl, dict(num_samples=0), "num_samples: must be finite and > 0"),
        (sobirl, dict(inner_steps=0), "inner_steps: must be finite and > 0"),
        (sobirl, dict(policy_step=-1.0), "policy_step: must be finite and > 0"),
        (stoc_sobirl, dict(num_rollouts=0), "num_rollouts: must be finite and > 0"),
        (stoc_sobirl, dict(rollout_length=0), "rollout_length: must be finite"),
        (stoc_sobirl, dict(num_samples=0), "num_samples: must be finite and > 0"),
        (stoc_sobirl, dict(momentum="adam"), "momentum: must be one of"),
        (
            stoc_sobirl,
            dict(optimizer={"learning_rate": -1.0}),
            "optimizer.learning_rate: must be finite and > 0",
        ),
        (stoc_sobirl, dict(average_weight=1.5), "average_weight: must lie in"),
    ],
)
def test_bad_configuration(module, kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        module.make(**kwargs)


@pytest.mark.parametrize("module", [sobirl, stoc_sobirl])
def test_problem_without_trajectory_loss_is_rejected(module):
    problem = sobirl_synthetic(jax.random.key(0), dim=4)
    with pytest.raises(ValueError, match="problem.trajectory_loss"):
        run(module.make(), problem, jax.random.key(0), 3)


def test_exact_outer_expectation_equals_enumerated_prop_5_2_off_the_optimum():
    problem = shaping_problem(jax.random.key(3), **TINY)
    x = problem.x0
    pi = jax.nn.softmax(jax.random.normal(jax.random.key(4), (3, 2)), axis=-1)
    f, g = sobirl.exact_outer_hypergradient(problem, x, pi)
    reward_fn, _ = problem.bind()
    ref = exact_trajectory_hypergradient(
        problem.loss, reward_fn, x, problem.mdp, horizon=TINY["horizon"], policy=pi
    )
    np.testing.assert_allclose(g, ref, rtol=1e-10, atol=1e-12)
    exact_f = expected_trajectory_loss(problem.loss, x, pi, problem.mdp, horizon=3)
    np.testing.assert_allclose(f, exact_f, rtol=1e-12)


def test_deterministic_sobirl_converges_like_exact_descent():
    problems, keys = batch()
    lr = {"learning_rate": 0.5}
    _, hist = run(sobirl.make(optimizer=lr, num_samples=None, inner_steps=3), problems,
                  keys, 300)  # fmt: skip
    _, ref = run(exact.make(optimizer=lr), problems, keys, 300)
    assert float(np.max(hist["transitions"])) == 0.0
    np.testing.assert_allclose(hist["exact_f"][:, -1], ref["exact_f"][:, -1], atol=1e-6)
    # the same stationary points, at the rate of exact descent
    np.testing.assert_allclose(
        hist["exact_grad_norm"][:, -1], ref["exact_grad_norm"][:, -1], rtol=0.05
    )
