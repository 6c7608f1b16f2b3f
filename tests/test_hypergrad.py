"""The hyper-gradient verification triangle of MATH.md §2 (float64).

closed form == implicit (custom_vjp) == SoBiRL eq. 24 to round-off; unrolled within a
gamma^K-scaled bound and geometrically convergent; central finite differences and
``jax.test_util.check_grads``; cotangents for ``P``, ``gamma``, ``tau`` and
``ref_policy``; edge cases (tau = 1e-3, gamma = 0.99, A = 1, KL); jit and vmap;
dense vs iterative adjoint; Prop. 5.1 Jacobians.

Compile budget: every jitted function below is module-level and sees few shapes
(``S, A = 6, 3`` for almost everything).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from jax.test_util import check_grads

from bilevel_rl.hypergrad import (
    adjoint_weights,
    hypergradient,
    q_value_jacobian,
    value_and_hypergradient,
    value_jacobian,
)
from bilevel_rl.implicit import soft_optimal_policy, soft_optimal_solution
from bilevel_rl.mdp import TabularMDP, stack
from bilevel_rl.soft import soft_value_iteration, soft_value_iteration_unrolled

S, A, D = 6, 3, 4
TOL = 1e-13  # forward tolerance: the "exact" solution
K_EXACT = 4000  # unrolled sweeps with K gamma^K < 1e-14 even for gamma = 0.99


class Data(NamedTuple):
    feats: jax.Array  # [S, A, D]
    target: jax.Array  # [S, A]


def reward_model(data: Data, x) -> jax.Array:
    """Nonlinear reward ``scale * tanh(phi w) + b``; ``x`` is a dict pytree."""
    return x["scale"] * jnp.tanh(data.feats @ x["w"]) + x["b"]


def upper_objective(data: Data, x, policy) -> jax.Array:
    """Quadratic in the policy plus terms in ``x`` (one coupling ``x`` and ``pi``)."""
    return (
        0.5 * jnp.sum((policy - data.target) ** 2)
        + 0.05 * jnp.sum(x["w"] ** 2)
        + jnp.sum(policy[:, 0] * x["b"][:, 0])
    )


def _fns(data):
    return (
        functools.partial(upper_objective, data),
        functools.partial(reward_model, data),
    )


@functools.partial(
    jax.jit, static_argnames=("method", "num_unrolled", "adjoint", "solver_method")
)
def vhg(
    x,
    mdp,
    data,
    *,
    method,
    num_unrolled=K_EXACT,
    adjoint="auto",
    solver_method="value_iteration",
):
    upper, reward_fn = _fns(data)
    return value_and_hypergradient(
        upper,
        reward_fn,
        x,
        mdp,
        method=method,
        num_unrolled=num_unrolled,
        tol=TOL,
        solver_method=solver_method,
        adjoint=adjoint,
    )


@jax.jit
def phi(x, mdp, data):
    """``f(x, pi*_x)`` by the (non-differentiable) while-loop solver."""
    upper, reward_fn = _fns(data)
    return upper(x, soft_value_iteration(mdp, reward_fn(x), tol=TOL).policy)


def solution_loss(sol, coef):
    """A loss through ``q``, ``v`` and ``policy`` of a ``SoftSolution``."""
    gp, gq, gv = coef
    return (
        jnp.sum(gp * sol.policy**2) + jnp.sum(gq * sol.q) + jnp.sum(gv * jnp.sin(sol.v))
    )


@functools.partial(jax.jit, static_argnames=("adjoint",))
def grad_implicit(mdp, reward, coef, adjoint="auto"):
    return jax.grad(
        lambda m, r: solution_loss(
            soft_optimal_solution(m, r, tol=TOL, adjoint=adjoint), coef
        ),
        argnums=(0, 1),
    )(mdp, reward)


@functools.partial(jax.jit, static_argnames=("num_iters",))
def grad_unrolled(mdp, reward, coef, num_iters=K_EXACT):
    return jax.grad(
        lambda m, r: solution_loss(
            soft_value_iteration_unrolled(m, r, num_iters), coef
        ),
        argnums=(0, 1),
    )(mdp, reward)


@jax.jit
def loss_at(mdp, reward, coef):
    return solution_loss(soft_value_iteration(mdp, reward, tol=TOL), coef)


# ---------------------------------------------------------------------- instances


def garnet_P(rng: np.random.Generator, num_states, num_actions, branching):
    """Garnet-like sparse rows: ``branching`` random next states, uniform weights."""
    P = np.zeros((num_states, num_actions, num_states))
    for s in range(num_states):
        for a in range(num_actions):
            nxt = rng.choice(num_states, size=branching, replace=False)
            P[s, a, nxt] = rng.uniform(0.1, 1.0, size=branching)
    return P / P.sum(-1, keepdims=True)


def make_instance(
    seed,
    *,
    family="dirichlet",
    gamma=0.8,
    tau=0.5,
    kl=False,
    scale=1.0,
    num_states=S,
    num_actions=A,
):
    rng = np.random.default_rng(seed)
    if family == "dirichlet":
        P = rng.dirichlet(np.ones(num_states), size=(num_states, num_actions))
    else:
        P = garnet_P(rng, num_states, num_actions, branching=2)
    ref = rng.dirichlet(2 * np.ones(num_actions), size=num_states) if kl else None
    mdp = TabularMDP.create(P, gamma=gamma, tau=tau, ref_policy=ref)
    data = Data(
        feats=jnp.asarray(rng.normal(size=(num_states, num_actions, D))),
        target=jnp.asarray(rng.dirichlet(np.ones(num_actions), size=num_states)),
    )
    x = {
        "w": jnp.asarray(rng.normal(size=D)),
        "scale": jnp.asarray(scale),
        "b": jnp.asarray(0.5 * scale * rng.normal(size=(num_states, num_actions))),
    }
    return x, mdp, data


CASES = {
    "dirichlet": dict(),
    "garnet": dict(family="garnet", gamma=0.9),
    "kl": dict(kl=True),
    "garnet_kl": dict(family="garnet", kl=True, tau=0.2),
    "tau_1e-3": dict(tau=1e-3, scale=2e-3),
    "tau_1e-3_saturated": dict(tau=1e-3),
    "gamma_0.99": dict(gamma=0.99),
}


def flat(tree):
    return ravel_pytree(tree)[0]


def rel_err(a, b):
    a, b = flat(a), flat(b)
    return float(jnp.max(jnp.abs(a - b)) / jnp.maximum(jnp.max(jnp.abs(b)), 1e-300))


# --------------------------------------------------------------------- the triangle


@pytest.mark.parametrize("case", list(CASES))
def test_closed_form_implicit_eq24_agree(case):
    x, mdp, data = make_instance(1, **CASES[case])
    f0, g0 = vhg(x, mdp, data, method="closed_form")
    for method in ("implicit", "eq24"):
        f, g = vhg(x, mdp, data, method=method)
        assert rel_err(g, g0) < 1e-9, (method, rel_err(g, g0))
        np.testing.assert_allclose(f, f0, rtol=1e-12)
    np.testing.assert_allclose(f0, phi(x, mdp, data), rtol=1e-12)
    assert np.all(np.isfinite(flat(g0)))


@pytest.mark.parametrize("case", list(CASES))
def test_unrolled_many_sweeps_matches_exact(case):
    x, mdp, data = make_instance(1, **CASES[case])
    _, exact = vhg(x, mdp, data, method="closed_form")
    _, unrolled = vhg(x, mdp, data, method="unrolled", num_unrolled=K_EXACT)
    assert rel_err(unrolled, exact) < 1e-9


@pytest.mark.parametrize(
    "case", ["dirichlet", "garnet_kl", "tau_1e-3", "tau_1e-3_saturated", "gamma_0.99"]
)
def test_central_finite_differences(case):
    # tau_1e-3: rewards scaled so that r / tau = O(1); tau_1e-3_saturated: not
    # rescaled, r / tau = O(1 / tau) and the policy is nearly greedy. The step
    # moves the logits r / tau by ~1e-5 in both.
    x, mdp, data = make_instance(2, **CASES[case])
    _, g = vhg(x, mdp, data, method="closed_form")
    assert float(jnp.linalg.norm(flat(g))) > 0
    flat_x, unravel = ravel_pytree(x)
    rng = np.random.default_rng(3)
    h = 1e-5 * float(CASES[case].get("scale", 1.0))
    if case == "tau_1e-3_saturated":
        h = 1e-5 * float(mdp.tau)
    for _ in range(3):
        d = jnp.asarray(rng.normal(size=flat_x.shape))
        d = d / jnp.linalg.norm(d)
        fd = (
            phi(unravel(flat_x + h * d), mdp, data)
            - phi(unravel(flat_x - h * d), mdp, data)
        ) / (2 * h)
        np.testing.assert_allclose(jnp.dot(flat(g), d), fd, rtol=1e-6, atol=1e-8)


def test_check_grads_implicit_path():
    x, mdp, data = make_instance(4, kl=True)
    upper, reward_fn = _fns(data)

    @jax.jit
    def f(x):
        return upper(x, soft_optimal_policy(mdp, reward_fn(x), tol=TOL))

    check_grads(f, (x,), order=1, modes=["rev"])


def test_unrolled_error_decays_geometrically():
    """Policy objective: below a gamma^K-scaled bound and at least geometric."""
    gamma = 0.6
    x, mdp, data = make_instance(5, gamma=gamma)
    _, exact = vhg(x, mdp, data, method="closed_form")
    Ks = np.array([2, 4, 6, 8, 10])
    errs = np.array(
        [
            rel_err(vhg(x, mdp, data, method="unrolled", num_unrolled=int(k))[1], exact)
            for k in Ks
        ]
    )
    assert np.all(errs <= 10.0 * gamma**Ks), errs
    assert np.all(np.diff(np.log(errs)) < 0), errs
    # The policy ignores constant shifts of v, so the slowest mode (eigenvalue
    # gamma, along constants) drops out: faster than gamma^K.
    slope = np.polyfit(Ks, np.log(errs), 1)[0]
    assert slope < np.log(gamma), slope


def test_unrolled_value_objective_rate_is_log_gamma():
    """Through ``v`` the error is ``C gamma^K``: log-linear slope == log gamma."""
    gamma = 0.6
    x, mdp, data = make_instance(5, gamma=gamma)
    rng = np.random.default_rng(6)
    coef = (
        jnp.asarray(rng.normal(size=(S, A))),
        jnp.asarray(rng.normal(size=(S, A))),
        jnp.asarray(rng.normal(size=S)),
    )
    reward = reward_model(data, x)
    _, exact = grad_implicit(mdp, reward, coef)
    Ks = np.array([4, 8, 12, 16, 20])
    errs = np.array(
        [
            rel_err(grad_unrolled(mdp, reward, coef, num_iters=int(k))[1], exact)
            for k in Ks
        ]
    )
    slope = np.polyfit(Ks, np.log(errs), 1)[0]
    assert abs(slope - np.log(gamma)) < 0.02 * abs(np.log(gamma)), (slope, errs)
    assert np.all(errs <= 10.0 * gamma**Ks), errs


# ------------------------------------------------- cotangents of the MDP data (vjp)


def _coef(seed, num_states=S, num_actions=A):
    rng = np.random.default_rng(seed)
    return (
        jnp.asarray(rng.normal(size=(num_states, num_actions))),
        jnp.asarray(rng.normal(size=(num_states, num_actions))),
        jnp.asarray(rng.normal(size=num_states)),
    )


@pytest.mark.parametrize("kl", [False, True])
def test_mdp_cotangents_match_unrolled(kl):
    """P, gamma, tau, ref_policy and reward cotangents, loss through q, v, policy."""
    x, mdp, data = make_instance(7, kl=kl, gamma=0.9)
    reward, coef = reward_model(data, x), _coef(8)
    g_imp = grad_implicit(mdp, reward, coef)
    g_unr = grad_unrolled(mdp, reward, coef)
    names = ["P", "rho", "gamma", "tau", "ref_policy", "reward"]
    m_imp, r_imp = g_imp
    m_unr, r_unr = g_unr
    for name in names:
        a = r_imp if name == "reward" else getattr(m_imp, name)
        b = r_unr if name == "reward" else getattr(m_unr, name)
        if a is None:
            assert not kl and name == "ref_policy"
            continue
        if name == "rho":
            assert float(jnp.max(jnp.abs(a))) == 0.0
            continue
        assert rel_err(a, b) < 1e-9, (name, rel_err(a, b))
    # MATH.md §2: dphi/dP[s, a, s'] = gamma w(s, a) V*(s') with w = dphi/dr.
    v = soft_value_iteration(mdp, reward, tol=TOL).v
    np.testing.assert_allclose(
        m_imp.P, mdp.gamma * r_imp[:, :, None] * v[None, None, :], rtol=1e-12
    )


@pytest.mark.parametrize("kl", [False, True])
def test_mdp_cotangents_match_finite_differences(kl):
    x, mdp, data = make_instance(9, kl=kl)
    reward, coef = reward_model(data, x), _coef(10)
    m_bar, _ = grad_implicit(mdp, reward, coef)
    rng = np.random.default_rng(11)
    h = 1e-6
    # P along a direction that keeps every row summing to one.
    dP = rng.normal(size=mdp.P.shape)
    dP = jnp.asarray(dP - dP.mean(-1, keepdims=True))
    directions = {"P": dP, "gamma": 1.0, "tau": 1.0}
    if kl:
        dref = rng.normal(size=(S, A))
        directions["ref_policy"] = jnp.asarray(dref - dref.mean(-1, keepdims=True))
    for name, d in directions.items():
        plus = mdp.replace(**{name: getattr(mdp, name) + h * d})
        minus = mdp.replace(**{name: getattr(mdp, name) - h * d})
        fd = (loss_at(plus, reward, coef) - loss_at(minus, reward, coef)) / (2 * h)
        np.testing.assert_allclose(
            jnp.sum(getattr(m_bar, name) * d), fd, rtol=1e-6, err_msg=name
        )


@pytest.mark.parametrize("gamma", [0.8, 0.99])
def test_dense_and_iterative_adjoint_agree(gamma):
    x, mdp, data = make_instance(12, gamma=gamma, kl=True)
    reward, coef = reward_model(data, x), _coef(13)
    dense = grad_implicit(mdp, reward, coef, adjoint="dense")
    iterative = grad_implicit(mdp, reward, coef, adjoint="iterative")
    assert rel_err(iterative, dense) < 1e-9
    _, g_dense = vhg(x, mdp, data, method="closed_form", adjoint="dense")
    _, g_iter = vhg(x, mdp, data, method="closed_form", adjoint="iterative")
    assert rel_err(g_iter, g_dense) < 1e-9


def test_iterative_adjoint_slow_mixing_chain():
    """A sticky ring (second eigenvalue near 1): the deflation cannot help, but the
    iteration still converges at rate gamma."""
    n = 8
    P = np.zeros((n, 2, n))
    for s in range(n):
        P[s, 0, s] += 0.9
        P[s, 0, (s + 1) % n] += 0.1
        P[s, 1, s] += 0.9
        P[s, 1, (s - 1) % n] += 0.1
    mdp = TabularMDP.create(P, gamma=0.95, tau=0.3)
    rng = np.random.default_rng(14)
    policy = jnp.asarray(rng.dirichlet(np.ones(2), size=n))
    g, gq = jnp.asarray(rng.normal(size=(n, 2))), jnp.asarray(rng.normal(size=(n, 2)))
    gv = jnp.asarray(rng.normal(size=n))
    kw = dict(grad_q=gq, grad_v=gv, tol=TOL)
    w_dense = adjoint_weights(mdp, policy, g, adjoint="dense", **kw)
    w_iter = adjoint_weights(mdp, policy, g, adjoint="iterative", **kw)
    assert rel_err(w_iter, w_dense) < 1e-9


# ----------------------------------------------------------------------- edge cases


def test_single_action():
    """A = 1: the policy is constant (zero policy hyper-gradient), v is not."""
    x, mdp, data = make_instance(15, num_states=5, num_actions=1, gamma=0.9)
    upper, _ = _fns(data)
    grad_x_f = jax.grad(upper)(x, jnp.ones((5, 1)))
    for method in ("closed_form", "implicit", "eq24"):
        _, g = vhg(x, mdp, data, method=method)
        assert rel_err(g, grad_x_f) < 1e-12
    # Through v and q: V* = (I - gamma P)^{-1} r exactly (no entropy with A = 1).
    reward, coef = reward_model(data, x), _coef(16, 5, 1)
    _, r_bar = grad_implicit(mdp, reward, coef)
    _, r_unr = grad_unrolled(mdp, reward, coef, num_iters=600)
    assert rel_err(r_bar, r_unr) < 1e-10
    assert float(jnp.max(jnp.abs(r_bar))) > 0.1
    M = jnp.eye(5) - mdp.gamma * mdp.P[:, 0, :]
    v = jnp.linalg.solve(M, reward[:, 0])
    _, gq, gv = coef
    # loss = sum gq q + sum gv sin v, q = r + gamma P v
    v_bar = gv * jnp.cos(v) + mdp.gamma * mdp.P[:, 0, :].T @ gq[:, 0]
    expected = gq[:, 0] + jnp.linalg.solve(M.T, v_bar)
    np.testing.assert_allclose(r_bar[:, 0], expected, rtol=1e-10)


def test_value_and_hypergradient_value():
    x, mdp, data = make_instance(17)
    f, _ = vhg(x, mdp, data, method="closed_form")
    f_unr, _ = vhg(x, mdp, data, method="unrolled", num_unrolled=K_EXACT)
    np.testing.assert_allclose(f, phi(x, mdp, data), rtol=1e-12)
    np.testing.assert_allclose(f_unr, f, rtol=1e-12)


def test_unknown_options_raise():
    x, mdp, data = make_instance(0)
    upper, reward_fn = _fns(data)
    with pytest.raises(ValueError, match="method"):
        hypergradient(upper, reward_fn, x, mdp, method="newton")
    with pytest.raises(ValueError, match="solver_method"):
        hypergradient(upper, reward_fn, x, mdp, solver_method="magic")
    with pytest.raises(ValueError, match="adjoint"):
        hypergradient(upper, reward_fn, x, mdp, adjoint="lu")
    with pytest.raises(ValueError, match="num_unrolled"):
        hypergradient(upper, reward_fn, x, mdp, method="unrolled", num_unrolled=-1)
    with pytest.raises(ValueError, match="adjoint"):
        soft_optimal_policy(mdp, reward_fn(x), adjoint="cholesky")
    with pytest.raises(ValueError, match="method"):
        soft_optimal_solution(mdp, reward_fn(x), method="newton")


def test_float32_inputs_keep_their_dtype():
    x, mdp, data = make_instance(18)
    mdp32 = jax.tree.map(lambda a: a.astype(jnp.float32), mdp)
    reward = reward_model(data, x)
    coef = _coef(19)

    @jax.jit
    @functools.partial(jax.grad, argnums=(0, 1))
    def grad32(m, r):
        return solution_loss(soft_optimal_solution(m, r, tol=1e-6), coef)

    m32, r32 = grad32(mdp32, reward.astype(jnp.float32))
    m64, r64 = grad_implicit(mdp, reward, coef)
    assert r32.dtype == jnp.float32 and m32.P.dtype == jnp.float32
    assert rel_err(r32, r64) < 1e-3 and rel_err(m32.P, m64.P) < 1e-3


# ---------------------------------------------------------------------- jit & vmap


def test_jit_matches_eager():
    x, mdp, data = make_instance(20, kl=True)
    upper, reward_fn = _fns(data)
    eager = hypergradient(upper, reward_fn, x, mdp, tol=TOL)
    _, jitted = vhg(x, mdp, data, method="closed_form")
    assert rel_err(eager, jitted) < 1e-12


@pytest.mark.parametrize("method", ["closed_form", "implicit", "eq24"])
def test_vmap_over_mdps_and_x(method):
    instances = [make_instance(30 + i, gamma=0.7 + 0.1 * i) for i in range(3)]
    xs = jax.tree.map(lambda *a: jnp.stack(a), *[inst[0] for inst in instances])
    mdps = stack([inst[1] for inst in instances])
    datas = jax.tree.map(lambda *a: jnp.stack(a), *[inst[2] for inst in instances])
    run = functools.partial(vhg, method=method)
    _, batched = jax.vmap(run)(xs, mdps, datas)
    for i, (x, mdp, data) in enumerate(instances):
        _, single = run(x, mdp, data)
        assert rel_err(jax.tree.map(lambda a, i=i: a[i], batched), single) < 1e-10
    # A batch of x for one MDP.
    x0, mdp0, data0 = instances[0]
    _, batched_x = jax.vmap(run, in_axes=(0, None, None))(xs, mdp0, data0)
    for i in range(3):
        _, single = run(jax.tree.map(lambda a, i=i: a[i], xs), mdp0, data0)
        assert rel_err(jax.tree.map(lambda a, i=i: a[i], batched_x), single) < 1e-10


# ------------------------------------------------------------ Prop. 5.1 Jacobians


@jax.jit
def _prop_5_1_jacobians(x, mdp, data):
    reward_fn = functools.partial(reward_model, data)
    policy = soft_value_iteration(mdp, reward_fn(x), tol=TOL).policy
    dQ = q_value_jacobian(mdp, reward_fn, x, policy)
    dV = value_jacobian(mdp, reward_fn, x, policy)
    ref_q = jax.jacrev(lambda x: soft_optimal_solution(mdp, reward_fn(x), tol=TOL).q)(x)
    ref_v = jax.jacrev(lambda x: soft_optimal_solution(mdp, reward_fn(x), tol=TOL).v)(x)
    return dQ, dV, ref_q, ref_v, policy


@pytest.mark.parametrize("kl", [False, True])
def test_value_jacobians_prop_5_1(kl):
    x, mdp, data = make_instance(40, kl=kl)
    reward_fn = functools.partial(reward_model, data)
    dQ, dV, ref_q, ref_v, policy = _prop_5_1_jacobians(x, mdp, data)
    for key in x:
        assert dQ[key].shape == (S, A, *x[key].shape)
        assert dV[key].shape == (S, *x[key].shape)
        np.testing.assert_allclose(dQ[key], ref_q[key], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(dV[key], ref_v[key], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(
            dV[key],
            jnp.einsum("sa,sa...->s...", policy, dQ[key]),
            rtol=1e-12,
            atol=1e-14,
        )
    # Central finite differences of Q* along one direction.
    flat_x, unravel = ravel_pytree(x)
    d = jnp.asarray(np.random.default_rng(41).normal(size=flat_x.shape))
    h = 1e-6

    @jax.jit
    def q_at(fx):
        return soft_value_iteration(mdp, reward_fn(unravel(fx)), tol=TOL).q

    fd = (q_at(flat_x + h * d) - q_at(flat_x - h * d)) / (2 * h)
    jd = sum(jnp.tensordot(dQ[k], unravel(d)[k], axes=x[k].ndim) for k in x)
    np.testing.assert_allclose(jd, fd, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------- the suites' families


@pytest.mark.parametrize("family", ["garnet_mdp", "sobirl_synthetic", "four_rooms"])
def test_triangle_on_suite_families(family):
    from bilevel_rl import suites

    key = jax.random.key(0)
    if family == "garnet_mdp":
        mdp = suites.garnet_mdp(key, S, A, 2, gamma=0.9, tau=0.5)
        data = make_instance(50)[2]
        x = make_instance(50)[0]
        upper, reward_fn = _fns(data)
    elif family == "sobirl_synthetic":
        problem = suites.sobirl_synthetic(key)
        mdp, x = problem.mdp, 0.1 * problem.x0
        reward_fn, upper = problem.bind()
    else:
        problem = suites.four_rooms_problem(tau=0.05, gamma=0.95)
        mdp = problem.mdp
        x = 0.1 * jnp.asarray(np.random.default_rng(51).normal(size=problem.x0.shape))
        reward_fn, upper = problem.bind()

    @functools.partial(jax.jit, static_argnames="method")
    def run(x, method):
        return value_and_hypergradient(
            upper,
            reward_fn,
            x,
            mdp,
            method=method,
            tol=TOL,
            solver_method="policy_iteration",
            num_unrolled=800,  # gamma^800 <= 0.95^800 ~ 1e-18
        )

    f0, g0 = run(x, "closed_form")
    for method in ("implicit", "eq24", "unrolled"):
        f, g = run(x, method)
        assert rel_err(g, g0) < 1e-9, (family, method, rel_err(g, g0))
    flat_x, unravel = ravel_pytree(x)
    d = jnp.asarray(np.random.default_rng(52).normal(size=flat_x.shape))
    d = d / jnp.linalg.norm(d)
    h = 1e-5
    fd = (
        run(unravel(flat_x + h * d), "closed_form")[0]
        - run(unravel(flat_x - h * d), "closed_form")[0]
    ) / (2 * h)
    np.testing.assert_allclose(jnp.dot(flat(g0), d), fd, rtol=1e-6, atol=1e-9)


def test_auto_adjoint_threshold():
    from bilevel_rl import implicit

    limit = implicit.DENSE_ADJOINT_MAX_STATES
    assert implicit._resolve_adjoint("auto", limit) == "dense"
    assert implicit._resolve_adjoint("auto", limit + 1) == "iterative"
    assert implicit._resolve_adjoint("iterative", 2) == "iterative"
