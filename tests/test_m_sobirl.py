"""M-SoBiRL (MATH.md §3): iteration 0 against an independent NumPy computation,
the paper's synthetic experiment, batching and configuration errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import softmax

from bilevel_rl.algorithms import Optimizer, m_sobirl
from bilevel_rl.experiment import run
from bilevel_rl.suites import sobirl_synthetic, sobirl_synthetic_from_arrays


def fixed_instance(seed=0, S=4, A=3, d=5):
    rng = np.random.default_rng(seed)
    P = rng.dirichlet(np.ones(S), size=(S, A))
    M = rng.normal(size=(d, d))
    c = rng.uniform(size=(S, A)) * rng.uniform(size=(S, A))
    x0 = rng.normal(size=d)
    w0 = rng.normal(size=S)
    return P, M, c, x0, w0


def numpy_first_estimate(P, M, c, x0, w0, gamma, tau, zeta):
    """ĝ_0 of MATH.md §3 written out by hand for the SoBiRL synthetic problem."""
    S, A, _ = P.shape
    pi0 = np.full((S, A), 1.0 / A)
    grad_pi = pi0  # f = ½‖x‖² + ½‖π‖²
    A0 = np.eye(S) - gamma * np.einsum("sa,sat->st", pi0, P)
    pg = pi0 * grad_pi
    U = np.eye(S)[:, None, :] - gamma * P  # U[(s,a), s']
    b = np.einsum("sat,sa->t", U, pg)
    w1 = w0 - zeta * A0 @ (A0.T @ w0 - b)
    r0 = c * (x0 @ M @ x0)
    pi_tilde = softmax(r0 / tau, axis=1)  # V_0 = 0
    dq = (M + M.T) @ x0  # ∂(xᵀMx)/∂x

    def JT(y):  # Jᵀ y for J(s,a) = c_sa (M + Mᵀ) x
        return np.sum(y * c) * dq

    return x0 + JT(pg) / tau - JT(pi_tilde * w1[:, None]) / tau, w1


@pytest.mark.parametrize("gamma, tau", [(0.5, 1.0), (0.9, 0.3)])
def test_first_estimate_matches_the_formula(gamma, tau):
    P, M, c, x0, w0 = fixed_instance()
    problem = sobirl_synthetic_from_arrays(P, M, c, x0, w0=w0, gamma=gamma, tau=tau)
    solver = m_sobirl.make(
        optimizer=Optimizer(learning_rate=1e-3), zeta=0.3, inner_steps=3, w0="data"
    )
    state = solver.init(problem, jax.random.key(0))
    new_state, metrics = jax.jit(solver.step)(state, problem)
    g_ref, w_ref = numpy_first_estimate(P, M, c, x0, w0, gamma, tau, 0.3)
    np.testing.assert_allclose(state.follower.w, w0, rtol=1e-12)  # w_0
    np.testing.assert_allclose(new_state.follower.w, w_ref, rtol=1e-12)  # w_1
    np.testing.assert_allclose(
        float(metrics["grad_norm"]), np.linalg.norm(g_ref), rtol=1e-12
    )
    np.testing.assert_allclose(new_state.x, x0 - 1e-3 * g_ref, rtol=1e-12)
    S, A, _ = P.shape
    f0 = 0.5 * x0 @ x0 + 0.5 * S / A  # ½‖x‖² + ½‖uniform π‖²_F
    np.testing.assert_allclose(float(metrics["f"]), f0, rtol=1e-12)


def test_synthetic_experiment_reaches_the_optimum():
    """MATH.md §3: β = 8e-3, ζ = 0.5, N = 10, K = 3000, float64, every instance."""
    keys = jax.random.split(jax.random.key(2025), 4)
    problems = jax.vmap(sobirl_synthetic)(keys)
    solver = m_sobirl.make(
        optimizer={"learning_rate": 8e-3}, zeta=0.5, inner_steps=10, w0="data"
    )
    state, hist = run(solver, problems, keys, 3000)
    assert hist["f"].shape == (4, 3000)
    assert bool(jnp.all(hist["finite"]))
    np.testing.assert_allclose(hist["exact_f"][:, -1], 1.0, atol=1e-6)
    np.testing.assert_allclose(hist["f"][:, -1], 1.0, atol=1e-6)
    assert float(hist["exact_grad_norm"][:, -1].max()) < 1e-6
    assert float(hist["grad_norm"][:, -1].max()) < 1e-6


def test_batch_equals_instances_run_alone():
    keys = jax.random.split(jax.random.key(7), 3)
    problems = jax.vmap(lambda k: sobirl_synthetic(k, dim=6))(keys)
    solver = m_sobirl.make(optimizer={"learning_rate": 8e-3}, inner_steps=4)
    _, hist = run(solver, problems, keys, 20)
    for i in range(3):
        single = jax.tree.map(lambda a: a[i], problems)
        _, h = run(solver, single, keys[i], 20)
        for name in ("grad_norm", "f", "exact_grad_norm"):
            np.testing.assert_allclose(hist[name][i], h[name], rtol=1e-12)


def test_diverging_run_is_flagged():
    problem = sobirl_synthetic(jax.random.key(3), dim=6)
    solver = m_sobirl.make(
        optimizer={"learning_rate": 1e3}, inner_steps=2, track_exact=False
    )
    _, hist = run(solver, problem, jax.random.key(0), 200)
    assert bool(hist["finite"][0]) and not bool(hist["finite"][-1])


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        (
            dict(optimizer={"learning_rate": -1.0}),
            "optimizer.learning_rate: must be finite and > 0",
        ),
        (dict(zeta=0.0), "zeta: must be finite and > 0"),
        (dict(inner_steps=0), "inner_steps: must be finite and > 0"),
        (dict(inner_steps=1.5), "inner_steps: must be an integer"),
        (dict(w0="ones"), "w0: must be one of"),
    ],
)
def test_bad_configuration(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        m_sobirl.make(**kwargs)


def test_x0_not_matching_the_reward_model_is_rejected_before_compiling():
    problem = sobirl_synthetic(jax.random.key(0), dim=6)
    bad = problem.replace(x0=jnp.zeros(5))
    with pytest.raises(ValueError, match="x0: does not fit the reward model"):
        run(m_sobirl.make(), bad, jax.random.key(0), 5)
    with pytest.raises(ValueError, match="num_iters: must be finite and > 0"):
        run(m_sobirl.make(), problem, jax.random.key(0), 0)
