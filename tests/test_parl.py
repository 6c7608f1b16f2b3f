"""PARL / A-PARL (MATH.md §6): the second-order hyper-gradient at an exact lower
solution equals the §2 closed form; the score-function upper gradient is unbiased;
A-PARL follows the exact hyper-gradient descent; bad settings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilevel_rl import hypergradient, soft_value_iteration
from bilevel_rl.algorithms import exact, parl
from bilevel_rl.algorithms.parl import (
    _sampled_upper_gradients,
    logit_policy,
    parl_hypergradient,
)
from bilevel_rl.experiment import run
from bilevel_rl.mdp import TabularMDP
from bilevel_rl.suites import shaping_problem, sobirl_synthetic

hypergradient_jit = jax.jit(
    parl_hypergradient, static_argnames=("cg_iters", "cg_tol", "damping")
)


def exact_upper_gradients(problem, x, logits):
    mdp = problem.mdp
    return jax.grad(
        lambda x, th: problem.objective(x, logit_policy(mdp, th)), argnums=(0, 1)
    )(x, logits)


def lower_solution(problem, x):
    sol = soft_value_iteration(
        problem.mdp, problem.reward(x), method="policy_iteration", tol=1e-14
    )
    logits = jnp.log(sol.policy)
    if problem.mdp.ref_policy is not None:
        logits = logits - jnp.log(problem.mdp.ref_policy)
    return logits


def with_reference_policy(problem, key):
    """The same problem with a KL-regularized follower (random ``pi0``)."""
    S, A = problem.mdp.num_states, problem.mdp.num_actions
    ref = jax.nn.softmax(jax.random.normal(key, (S, A), jnp.float64), -1)
    m = problem.mdp
    mdp = TabularMDP(m.P, m.rho, m.gamma, m.tau, ref_policy=ref)
    return problem.replace(mdp=mdp)


@pytest.mark.parametrize(
    "suite, kl", [("shaping", False), ("shaping", True), ("sobirl", False)]
)
def test_hypergradient_at_exact_lower_solution_equals_closed_form(suite, kl):
    key = jax.random.key(3)
    if suite == "shaping":
        problem = shaping_problem(key, dtype=jnp.float64)
        x = problem.x0 + 0.4 * jax.random.normal(key, problem.x0.shape)
    else:
        problem = sobirl_synthetic(key, dim=5)
        x = problem.x0
    if kl:
        problem = with_reference_policy(problem, jax.random.key(9))
    logits = lower_solution(problem, x)
    gx, gth = exact_upper_gradients(problem, x, logits)
    # Shifting theta(s, .) by any c(s) changes nothing (the shift-invariance).
    shifted = logits + jax.random.normal(jax.random.key(1), logits.shape[:1])[:, None]
    reward_fn, upper = problem.bind()
    closed = hypergradient(upper, reward_fn, x, problem.mdp)
    for th in (logits, shifted):
        g, residual = hypergradient_jit(problem, x, th, gx, gth, cg_iters=200)
        np.testing.assert_allclose(g, closed, rtol=1e-6, atol=1e-9)
        assert residual < 1e-10
    # Damping instead of the projection: an O(lam) error, not exact.
    errs = []
    for lam in (1e-3, 1e-5):
        damped, _ = hypergradient_jit(
            problem, x, logits, gx, gth, cg_iters=200, damping=lam
        )
        errs.append(float(jnp.max(jnp.abs(damped - closed))))
    assert errs[0] > 1e-8 and errs[1] < 0.05 * errs[0]


def test_sampled_upper_gradients_are_unbiased():
    problem = shaping_problem(jax.random.key(0), horizon=4, dtype=jnp.float64)
    x = problem.x0 + 0.3
    logits = 0.5 * jax.random.normal(jax.random.key(2), problem.mdp.P.shape[:2])
    gx, gth = exact_upper_gradients(problem, x, logits)
    draw = jax.jit(
        jax.vmap(lambda k: _sampled_upper_gradients(k, problem, x, logits, 8)[:2])
    )
    sx, sth = draw(jax.random.split(jax.random.key(1), 4000))
    for sample, exact_value in ((sx, gx), (sth, gth)):
        sample = np.asarray(sample)
        mean = sample.mean(0)
        stderr = sample.std(0, ddof=1) / np.sqrt(len(sample))
        assert np.all(np.abs(mean - np.asarray(exact_value)) <= 5 * stderr + 1e-12)
        assert np.max(stderr) < 0.05 * np.max(np.abs(exact_value))


def test_a_parl_follows_exact_hypergradient_descent():
    keys = jax.random.split(jax.random.key(0), 2)
    problems = jax.vmap(lambda k: shaping_problem(k, dtype=jnp.float64))(keys)
    _, ref = run(exact.make(optimizer={"learning_rate": 0.5}), problems, keys, 150)
    solver = parl.make(optimizer={"learning_rate": 0.5}, inner_steps=5, policy_step=2.0)
    _, hist = run(solver, problems, keys, 150)
    # K = 5 warm-started PG steps track theta*(x_k): the lower gap vanishes and
    # the leader's path is that of exact hyper-gradient descent.
    assert (hist["lower_gap"] >= -1e-12).all()
    assert (hist["lower_gap"][:, -1] < 1e-5).all()
    assert (hist["cg_residual"] < 1e-9).all()
    np.testing.assert_allclose(hist["exact_f"][:, -1], ref["exact_f"][:, -1], atol=1e-4)
    g = hist["exact_grad_norm"]
    assert (g[:, -1] < 0.05 * g[:, 0]).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(optimizer={"learning_rate": 0.0}),
            "optimizer.learning_rate: must be finite and > 0",
        ),
        (dict(inner_steps=0), "inner_steps: must be finite and > 0"),
        (dict(policy_step=-1.0), "policy_step: must be finite and > 0"),
        (dict(cg_iters=2.5), "cg_iters: must be an integer"),
        (dict(damping=-1e-3), "damping: must be finite and >= 0"),
        (dict(num_samples=1), "num_samples: must be >= 2"),
    ],
)
def test_bad_configuration(kwargs, message):
    with pytest.raises(ValueError, match=message):
        parl.make(**kwargs)


def test_sampled_variant_needs_a_trajectory_loss():
    problem = sobirl_synthetic(jax.random.key(0), dim=3)
    solver = parl.make(num_samples=4)
    with pytest.raises(ValueError, match="problem.trajectory_loss: sampled PARL"):
        solver.init(problem, jax.random.key(0))
