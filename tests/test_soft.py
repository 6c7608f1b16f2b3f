"""Soft Bellman operators and solvers (MATH.md §1)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_P
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp as np_logsumexp

import bilevel_rl as br
from bilevel_rl.batched import solve_batch
from bilevel_rl.soft import METHODS, STATUS


def make_mdp(seed, S, A, gamma=0.9, tau=0.5, kl=False, dtype=np.float64):
    rng = np.random.default_rng(seed)
    ref = rng.dirichlet(np.ones(A), size=S) if kl else None
    mdp = br.TabularMDP.create(
        random_P(rng, S, A).astype(dtype),
        gamma=gamma,
        tau=tau,
        rho=rng.dirichlet(np.ones(S)),
        ref_policy=ref,
    )
    return mdp, jnp.asarray(rng.normal(size=(S, A)).astype(dtype))


@functools.partial(jax.jit, static_argnames=("method", "max_iters"))
def solve(mdp, reward, method="value_iteration", tol=1e-10, max_iters=10_000):
    return br.soft_value_iteration(
        mdp, reward, method=method, tol=tol, max_iters=max_iters
    )


def numpy_soft_vi(P, r, gamma, tau, sweeps, log_pi0=None):
    """Independent NumPy reference: plain soft value iteration."""
    v = np.zeros(P.shape[0])
    shift = 0.0 if log_pi0 is None else log_pi0
    for _ in range(sweeps):
        v = tau * np_logsumexp((r + gamma * P @ v) / tau + shift, axis=1)
    return v


@pytest.mark.parametrize("axis", [-1, 0])
def test_logsumexp_equals_the_reference_with_its_gradient(axis):
    """br.soft.logsumexp (sum as a contraction) == scipy and jax.nn, value and grad."""
    rng = np.random.default_rng(3)
    logits = rng.normal(scale=30.0, size=(6, 5))
    logits[1, 2] = -np.inf  # a zero-probability action (pi0 = 0)
    logits[2] = 700.0 + rng.normal(size=5)  # exp would overflow unshifted
    ours = br.soft.logsumexp(jnp.asarray(logits), axis=axis)
    np.testing.assert_allclose(ours, np_logsumexp(logits, axis=axis), rtol=1e-14)
    grad = jax.grad(lambda z: jnp.sum(br.soft.logsumexp(z, axis) ** 2))(logits)
    ref = jax.grad(lambda z: jnp.sum(jax.nn.logsumexp(z, axis) ** 2))(logits)
    np.testing.assert_allclose(grad, ref, rtol=1e-12, atol=1e-300)
    special = jnp.array([[-jnp.inf, -jnp.inf], [jnp.inf, 0.0], [jnp.nan, 0.0]])
    np.testing.assert_array_equal(
        br.soft.logsumexp(special), jax.nn.logsumexp(special, axis=-1)
    )


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kl", [False, True])
def test_fixed_point_policy_and_numpy_reference(method, kl):
    mdp, r = make_mdp(0, 6, 3, kl=kl)
    sol = solve(mdp, r, method=method)
    # the reported residual is the Bellman residual of the returned v
    bellman = br.soft_bellman_operator(mdp, r, sol.v)
    assert float(jnp.max(jnp.abs(bellman - sol.v))) <= float(sol.residual) + 1e-14
    assert float(sol.residual) <= 1e-10
    np.testing.assert_allclose(sol.q, r + mdp.gamma * mdp.P @ sol.v, atol=1e-12)
    np.testing.assert_allclose(sol.policy.sum(-1), 1.0, atol=1e-12)
    assert float(sol.policy.min()) > 0
    log_pi0 = np.log(np.asarray(mdp.ref_policy)) if kl else None
    v_ref = numpy_soft_vi(np.asarray(mdp.P), np.asarray(r), 0.9, 0.5, 400, log_pi0)
    np.testing.assert_allclose(sol.v, v_ref, atol=1e-9)


def test_methods_reach_the_same_fixed_point_and_pi_is_faster():
    mdp, r = make_mdp(1, 8, 3, gamma=0.99)
    vi = solve(mdp, r, method="value_iteration")
    pi = solve(mdp, r, method="policy_iteration")
    np.testing.assert_allclose(vi.v, pi.v, atol=1e-7)  # residual/(1-gamma) bound
    assert int(pi.iterations) < 20 < int(vi.iterations)


@settings(max_examples=25, deadline=None)
@given(
    S=st.sampled_from([1, 3, 5]),
    A=st.sampled_from([1, 2, 4]),
    gamma=st.floats(0.0, 0.95),
    tau=st.floats(0.05, 5.0),
    seed=st.integers(0, 10_000),
)
def test_random_mdps_fixed_point_and_evaluation(S, A, gamma, tau, seed):
    mdp, r = make_mdp(seed, S, A, gamma=gamma, tau=tau)
    sol = solve(mdp, r, method="value_iteration")
    assert float(sol.residual) <= 1e-10
    np.testing.assert_allclose(sol.policy.sum(-1), 1.0, atol=1e-12)
    # soft policy evaluation of pi* returns V* (up to the solver's accuracy)
    v, q = br.soft_policy_evaluation(mdp, r, sol.policy)
    bound = 1e-10 / (1 - gamma) + 1e-10
    np.testing.assert_allclose(v, sol.v, atol=bound * (1 + gamma / (1 - gamma)))
    np.testing.assert_allclose(q, r + gamma * mdp.P @ v, atol=1e-10)


@pytest.mark.parametrize("kl", [False, True])
def test_single_state_closed_form(kl):
    A, gamma, tau = 4, 0.7, 0.3
    r = jnp.array([[0.3, -1.0, 2.0, 0.5]])
    pi0 = np.array([[0.1, 0.2, 0.3, 0.4]]) if kl else None
    mdp = br.TabularMDP.create(np.ones((1, A, 1)), gamma=gamma, tau=tau, ref_policy=pi0)
    sol = solve(mdp, r)
    shift = np.log(pi0) if kl else 0.0
    logits = np.asarray(r) / tau + shift
    np.testing.assert_allclose(sol.policy, np.exp(logits - np_logsumexp(logits)))
    np.testing.assert_allclose(sol.v, tau * np_logsumexp(logits) / (1 - gamma))


def test_uniform_reference_policy_shifts_values_by_tau_log_A():
    mdp, r = make_mdp(2, 5, 3)
    kl = mdp.replace(ref_policy=jnp.full((5, 3), 1 / 3))
    ent, rel = solve(mdp, r), solve(kl, r)
    np.testing.assert_allclose(rel.policy, ent.policy, atol=1e-12)
    shift = 0.5 * np.log(3) / (1 - 0.9)
    np.testing.assert_allclose(ent.v - rel.v, shift, atol=1e-9)
    v_kl, _ = br.soft_policy_evaluation(kl, r, rel.policy)
    np.testing.assert_allclose(v_kl, rel.v, atol=1e-9)


def test_occupancy_sums_to_one_and_matches_power_series():
    mdp, r = make_mdp(3, 5, 3, gamma=0.8)
    pi = solve(mdp, r).policy
    d = br.occupancy_measure(mdp, pi)
    np.testing.assert_allclose(float(d.sum()), 1.0, atol=1e-12)
    assert float(d.min()) >= 0
    P_pi = np.einsum("sa,sat->st", pi, mdp.P)
    mu, d_s = np.asarray(mdp.rho), np.zeros(5)
    for t in range(300):
        d_s += (1 - 0.8) * 0.8**t * mu
        mu = mu @ P_pi
    np.testing.assert_allclose(d, d_s[:, None] * np.asarray(pi), atol=1e-12)


def test_unrolled_converges_geometrically_to_the_fixed_point():
    mdp, r = make_mdp(4, 6, 3, gamma=0.8)
    exact = solve(mdp, r)
    errs = []
    for K in (5, 10, 20, 40):
        sol = br.soft_value_iteration_unrolled(mdp, r, K)
        assert int(sol.iterations) == K
        errs.append(float(jnp.max(jnp.abs(sol.v - exact.v))))
        v0_err = float(jnp.max(jnp.abs(exact.v)))
        assert errs[-1] <= 0.8**K * v0_err + 1e-10
    assert errs == sorted(errs, reverse=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("method", METHODS)
def test_stability_grid_is_finite(dtype, method):
    """tau down to 1e-4, gamma up to 0.999, |r| up to 1e4, float32 and float64."""
    for tau in (1e-4, 1.0):
        for gamma in (0.5, 0.999):
            for scale in (1.0, 1e4):
                mdp, r = make_mdp(5, 4, 3, gamma=gamma, tau=tau, dtype=dtype)
                sol = solve(mdp, r * scale, method=method, tol=1e-8)
                assert sol.v.dtype == dtype
                for field in (sol.q, sol.v, sol.policy, sol.residual):
                    assert bool(jnp.all(jnp.isfinite(field))), (tau, gamma, scale)
                np.testing.assert_allclose(sol.policy.sum(-1), 1.0, atol=1e-5)
                v, _ = br.soft_policy_evaluation(mdp, r * scale, sol.policy)
                d = br.occupancy_measure(mdp, sol.policy)
                assert bool(jnp.all(jnp.isfinite(v))) and bool(jnp.all(jnp.isfinite(d)))


def test_float32_stops_at_its_roundoff_floor():
    mdp, r = make_mdp(6, 8, 4, gamma=0.9, dtype=np.float32)
    sol = solve(mdp, r, tol=1e-12)  # unreachable in float32
    assert int(sol.iterations) < 1000
    ref = solve(*make_mdp(6, 8, 4, gamma=0.9), method="policy_iteration")
    np.testing.assert_allclose(sol.v, ref.v, atol=1e-4)


def test_argument_errors_name_the_argument():
    mdp, r = make_mdp(7, 3, 2)
    with pytest.raises(ValueError, match="method: must be .auto. or one of"):
        br.soft_value_iteration(mdp, r, method="newton")
    with pytest.raises(ValueError, match="tol: must be >= 0"):
        br.soft_value_iteration(mdp, r, tol=-1.0)
    with pytest.raises(ValueError, match="max_iters: must be >= 1"):
        br.soft_value_iteration(mdp, r, max_iters=0)


@pytest.mark.parametrize("kl", [False, True])
def test_policy_mirror_descent_converges_to_the_soft_optimal_policy(kl):
    mdp, r = make_mdp(8, 6, 3, gamma=0.9, kl=kl)
    star = solve(mdp, r, method="policy_iteration").policy
    step = jax.jit(br.policy_mirror_descent_step, static_argnames="eta")
    for eta, rounds in ((0.5, 60), (5.0, 15), (float("inf"), 6)):
        pi = jnp.full((6, 3), 1 / 3)
        errs = []
        for _ in range(rounds):
            pi = step(mdp, r, pi, eta=eta)
            errs.append(float(jnp.max(jnp.abs(pi - star))))
        assert errs[-1] < 1e-6, (eta, errs[-1])
        assert errs[-1] < errs[0]
    # pi* is a fixed point of every step size
    np.testing.assert_allclose(step(mdp, r, star, eta=0.3), star, atol=1e-12)


# ----------------------------------------------------------- jit and vmap agreement

B, S, A = 5, 4, 3


@pytest.fixture(scope="module")
def batch():
    pairs = [make_mdp(10 + i, S, A, gamma=0.5 + 0.1 * i, kl=True) for i in range(B)]
    mdps = br.stack([m for m, _ in pairs])
    rewards = jnp.stack([r for _, r in pairs])
    policies = jax.nn.softmax(rewards, axis=-1)
    values = rewards[..., 0]
    return pairs, mdps, rewards, policies, values


PUBLIC = {
    "soft_q": lambda m, r, pi, v: br.soft_q(m, r, v),
    "soft_max": lambda m, r, pi, v: br.soft_max(m, r),
    "soft_policy": lambda m, r, pi, v: br.soft_policy(m, r),
    "soft_bellman_operator": lambda m, r, pi, v: br.soft_bellman_operator(m, r, v),
    "soft_policy_evaluation": lambda m, r, pi, v: br.soft_policy_evaluation(m, r, pi),
    "occupancy_measure": lambda m, r, pi, v: br.occupancy_measure(m, pi),
    "value_iteration": lambda m, r, pi, v: br.soft_value_iteration(m, r, tol=1e-9),
    "policy_iteration": lambda m, r, pi, v: br.soft_value_iteration(
        m, r, tol=1e-9, method="policy_iteration"
    ),
    "unrolled": lambda m, r, pi, v: br.soft_value_iteration_unrolled(m, r, 7),
    "pmd_step": lambda m, r, pi, v: br.policy_mirror_descent_step(m, r, pi, 2.0),
}


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_jit_and_vmap_match_unbatched(name, batch):
    pairs, mdps, rewards, policies, values = batch
    fn = PUBLIC[name]
    batched = jax.jit(jax.vmap(fn))(mdps, rewards, policies, values)
    for i, (m, r) in enumerate(pairs):
        single = fn(m, r, policies[i], values[i])
        jitted = jax.jit(fn)(m, r, policies[i], values[i])
        for a, b, c in zip(
            jax.tree.leaves(single), jax.tree.leaves(jitted), jax.tree.leaves(batched)
        ):
            np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(c[i], a, rtol=1e-12, atol=1e-12)


def test_vmapped_solver_stops_each_instance_on_its_own(batch):
    pairs, mdps, rewards, _, _ = batch
    vi = functools.partial(br.soft_value_iteration, tol=1e-9, method="value_iteration")
    out = jax.vmap(vi)(mdps, rewards)
    alone = [int(vi(m, r).iterations) for m, r in pairs]
    assert list(np.asarray(out.iterations)) == alone
    assert len(set(alone)) > 1  # gammas differ, so iteration counts differ


@pytest.mark.parametrize("chunk", [None, 1, 2, 5, 8])
def test_solve_batch_chunked_equals_vmap(chunk, batch):
    _, mdps, rewards, _, _ = batch
    ref = jax.vmap(lambda m, r: br.soft_value_iteration(m, r, tol=1e-9))(mdps, rewards)
    out = solve_batch(mdps, rewards, tol=1e-9, chunk_size=chunk)
    for a, b in zip(ref, out):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12)


def test_solve_batch_validates():
    mdp, r = make_mdp(0, 3, 2)
    with pytest.raises(ValueError, match=r"mdp.P: solve_batch needs one leading"):
        solve_batch(mdp, r)
    mdps = br.broadcast(mdp, 2)
    with pytest.raises(ValueError, match=r"reward: expected shape \[B, S, A\]"):
        solve_batch(mdps, r)
    with pytest.raises(ValueError, match="chunk_size: must be >= 1"):
        solve_batch(mdps, jnp.stack([r, r]), chunk_size=0)


def test_solve_batch_memory_budget_blocks_equal_one_call():
    keys = jax.random.split(jax.random.key(5), 7)
    mdps = jax.vmap(lambda k: br.suites.dirichlet_mdp(k, 5, 3, dtype=jnp.float64))(keys)
    rewards = jax.random.uniform(jax.random.key(6), (7, 5, 3), jnp.float64)
    whole = solve_batch(mdps, rewards, tol=1e-10, chunk_size=2)
    per_mdp = (5 * 3 * 5 + 3 * 5 * 3 + 3 * 5 + 8) * 8
    blocked = solve_batch(
        mdps, rewards, tol=1e-10, chunk_size=2, memory_budget=3 * per_mdp
    )  # three blocks of 3, the last padded
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(blocked), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="memory_budget: must be >= 1 byte"):
        solve_batch(mdps, rewards, memory_budget=0)


# --------------------------------------------------- stopping tests and method="auto"


@pytest.fixture(scope="module")
def hard_batch():
    """Four S=200, A=8 MDPs at gamma=0.99 (evaluation condition number ~ 200)."""
    pairs = [make_mdp(40 + i, 200, 8, gamma=0.99, tau=0.5) for i in range(4)]
    return br.stack([m for m, _ in pairs]), jnp.stack([r for _, r in pairs])


@pytest.mark.parametrize(
    "dtype, tol", [(np.float32, 1e-6), (np.float64, 1e-10)], ids=["f32", "f64"]
)
def test_policy_iteration_terminates_at_tol_or_its_floor(hard_batch, dtype, tol):
    mdps, rewards = hard_batch
    reference = solve_batch(mdps, rewards, tol=1e-12, method="policy_iteration")
    assert np.all(np.asarray(reference.status) == STATUS.index("converged"))
    cast = jax.tree.map(lambda a: a.astype(dtype), (mdps, rewards))
    sol = solve_batch(*cast, tol=tol, method="policy_iteration", max_iters=10_000)
    assert sol.v.dtype == dtype
    rounds, status = np.asarray(sol.iterations), np.asarray(sol.status)
    assert np.all(rounds <= 50), rounds
    v_inf = np.max(np.abs(np.asarray(sol.v, np.float64)), axis=-1)
    floor = br.soft.ROUNDOFF_FACTOR * np.finfo(dtype).eps * v_inf / (1 - 0.99)
    residual = np.asarray(sol.residual, np.float64)
    if dtype == np.float64:
        assert np.all(status == STATUS.index("converged")) and np.all(residual <= tol)
    else:  # 1e-6 is below float32's round-off at ||v|| ~ 300: the floor fires
        assert np.all(status == STATUS.index("roundoff_floor")), status
        assert np.all((residual > tol) & (residual <= floor)), (residual, floor)
    # The residual bounds the error: ||v - V*|| <= residual / (1 - gamma), plus
    # the float32 rounding of the float64 problem itself.
    error = np.max(np.abs(np.asarray(sol.v, np.float64) - reference.v), axis=-1)
    assert np.all(error <= residual / (1 - 0.99) + 1e-4 * v_inf), (error, residual)


def test_value_iteration_reports_which_test_fired():
    mdp, r = make_mdp(6, 8, 4, gamma=0.9)
    vi = functools.partial(solve, mdp, r, method="value_iteration")
    assert int(vi(tol=1e-6).status) == STATUS.index("converged")
    assert int(vi(tol=0.0).status) == STATUS.index("roundoff_floor")
    assert int(vi(tol=1e-12, max_iters=3).status) == STATUS.index("max_iters")
    pi = solve(mdp, r * np.nan, method="policy_iteration")
    assert int(pi.status) == STATUS.index("non_finite")


def test_auto_picks_the_method_the_cost_model_predicts_faster():
    from bilevel_rl.soft import predicted_times, select_method

    for args in [(200, 8, 0.5, 1e-3), (200, 8, 0.999, 1e-8), (16, 4, 0.9, 1e-6)]:
        S, A, gamma, tol = args
        times = predicted_times(S, A, gamma, tol, np.float64, scale=1.0)
        chosen = select_method(S, A, np.float64, tol=tol, gamma=gamma, scale=1.0)
        assert times[chosen] == min(times.values())
    # A short horizon and a loose tolerance favour sweeps; a long one rounds.
    assert select_method(200, 8, np.float64, tol=1e-2, gamma=0.3) == "value_iteration"
    assert select_method(200, 8, np.float64, tol=1e-8, gamma=0.999) == (
        "policy_iteration"
    )
    assert select_method(7, 3, np.float32, method="value_iteration") == (
        "value_iteration"
    )
    mdp, r = make_mdp(6, 8, 4, gamma=0.9)
    auto = solve(mdp, r, method="auto")
    jitted = jax.jit(lambda m, x: br.soft_value_iteration(m, x, tol=1e-10))(mdp, r)
    np.testing.assert_array_equal(auto.v, jitted.v)  # a static choice


def test_policy_iteration_with_zeros_in_the_reference_policy():
    mdp, r = make_mdp(3, 6, 4, gamma=0.9, kl=True)
    ref = mdp.ref_policy.at[:, 0].set(0.0)
    mdp = mdp.replace(ref_policy=ref / ref.sum(-1, keepdims=True))
    vi, pi = (solve(mdp, r, method=m, tol=1e-12) for m in METHODS)
    assert np.all(np.asarray(pi.policy[:, 0]) == 0.0)
    np.testing.assert_allclose(pi.v, vi.v, atol=1e-10)
