"""Tests of the problem generators (bilevel_rl.suites), reward models and objectives.

Sizes are tiny and every jitted function is built once (module-level caches), since
compile time dominates on CPU.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bilevel_rl as bl
from bilevel_rl import objectives, rewards, suites

KEYS = jax.random.split(jax.random.key(0), 200)
CHECKED = (0, 1, 199)  # keys whose unbatched result is compared with the batch

# name -> generator of one key (all sizes static).
GENERATORS = {
    "dirichlet": lambda k: suites.dirichlet_mdp(k, 5, 3, concentration=0.3),
    "garnet": lambda k: suites.garnet_mdp(k, 6, 3, 2, gamma=0.9, tau=1.0),
    "chain": lambda k: suites.chain_mdp(k, 5, slip=0.2, gamma=0.9, tau=1.0),
    "gridworld": lambda k: suites.gridworld_mdp(k, 3, 4, slip=0.2, gamma=0.9, tau=1.0),
    "four_rooms": lambda k: suites.four_rooms(k),
    "four_rooms_reset": lambda k: suites.four_rooms(k, goal_mode="reset"),
    "sobirl": lambda k: suites.sobirl_synthetic(k),
    "sobirl_transitions": lambda k: suites.sobirl_transitions(k, 10, 5),
    "four_rooms_problem": lambda k: suites.four_rooms_problem(k),
    "reward_features": lambda k: suites.random_reward_features(k, 5, 3, 4),
}


@functools.cache
def jitted(name):
    return jax.jit(GENERATORS[name])


@functools.cache
def batched(name):
    return jax.jit(jax.vmap(GENERATORS[name]))(KEYS)


@functools.cache
def single(name, i):
    return jitted(name)(KEYS[i])


def mdp_of(out):
    if isinstance(out, bl.BilevelProblem):
        return out.mdp
    if isinstance(out, bl.TabularMDP):
        return out
    return None


def assert_valid(mdp: bl.TabularMDP):
    """Non-negative, row-stochastic, and accepted by TabularMDP.create."""
    P = np.asarray(mdp.P)
    assert P.ndim == 3 and P.shape[0] == P.shape[2]
    assert np.all(P >= 0)
    np.testing.assert_allclose(P.sum(-1), 1.0, atol=1e-12)
    assert mdp.gamma.shape == () and mdp.tau.shape == ()
    assert mdp.gamma.dtype == P.dtype and mdp.tau.dtype == P.dtype
    ref = None if mdp.ref_policy is None else np.asarray(mdp.ref_policy)
    bl.TabularMDP.create(
        P,
        gamma=float(mdp.gamma),
        tau=float(mdp.tau),
        rho=np.asarray(mdp.rho),
        ref_policy=ref,
    )


# ------------------------------------------------------------- all generators


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_jit_vmap_match_unbatched_and_valid(name):
    out_b = batched(name)
    for i in CHECKED:
        out_i = single(name, i)
        leaves_i = jax.tree.leaves(out_i)
        leaves_b = jax.tree.leaves(out_b)
        assert len(leaves_i) == len(leaves_b)
        for a, b in zip(leaves_i, leaves_b):
            assert b.shape == (len(KEYS), *a.shape)
            assert a.dtype == jnp.float64 or not jnp.issubdtype(a.dtype, jnp.floating)
            np.testing.assert_allclose(b[i], a, rtol=1e-12, atol=1e-14)
        mdp = mdp_of(out_i)
        if mdp is not None:
            assert_valid(mdp)
        if name == "sobirl_transitions":
            one = jnp.ones((), out_i.dtype)
            assert_valid(bl.TabularMDP(out_i, jnp.ones(10) / 10, 0.5 * one, one))


def test_random_keys_give_different_instances():
    for name in ("dirichlet", "garnet", "sobirl_transitions"):
        P = jax.tree.leaves(batched(name))[0]
        assert not np.allclose(P[0], P[1])


def test_random_mdp_dispatches():
    def jaxpr(f):
        return str(jax.make_jaxpr(f)(KEYS[0]))

    assert jaxpr(lambda k: suites.random_mdp(k, 6, 3, branching=2)) == jaxpr(
        lambda k: suites.garnet_mdp(k, 6, 3, 2)
    )
    assert jaxpr(lambda k: suites.random_mdp(k, 6, 3, concentration=0.5)) == jaxpr(
        lambda k: suites.dirichlet_mdp(k, 6, 3, concentration=0.5)
    )


def test_float32_dtype():
    for mdp in (
        jax.jit(lambda k: suites.garnet_mdp(k, 4, 2, 2, dtype=jnp.float32))(KEYS[0]),
        suites.chain_mdp(None, 4, dtype=jnp.float32),
        suites.bandit_mdp(3, dtype=jnp.float32),
    ):
        for leaf in jax.tree.leaves(mdp):
            assert leaf.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(mdp.P).sum(-1), 1.0, atol=1e-6)


def test_invalid_sizes_raise():
    with pytest.raises(ValueError, match="branching"):
        suites.garnet_mdp(KEYS[0], 4, 2, 5)
    with pytest.raises(ValueError, match="num_states"):
        suites.sobirl_transitions(KEYS[0], 1, 2)
    with pytest.raises(ValueError, match="goal_mode"):
        suites.four_rooms(goal_mode="teleport")
    with pytest.raises(ValueError, match="not a free"):
        suites.four_rooms_state(0, 0)


# ------------------------------------------------------------ random MDP suites


def test_garnet_rows_have_exactly_branching_nonzeros():
    P = np.asarray(batched("garnet").P)
    assert np.all((P > 0).sum(-1) == 2)


def test_dirichlet_rows_are_valid():
    P = np.asarray(batched("dirichlet").P)
    assert np.all(np.isfinite(P)) and np.all(P >= 0)
    np.testing.assert_allclose(P.sum(-1), 1.0, atol=1e-12)
    assert P.max(-1).mean() > 1 / 5 + 0.2  # concentration 0.3: peaked rows


def test_reward_features_and_models():
    rf = single("reward_features", 0)
    assert rf.features.shape == (5, 3, 4) and rf.true_param.shape == (4,)
    r = rewards.linear_reward(rf.features, rf.true_param)
    np.testing.assert_allclose(r, rf.true_reward, rtol=1e-12)
    np.testing.assert_allclose(
        rewards.tanh_reward(rf.features, rf.true_param), np.tanh(rf.true_reward)
    )
    x = jnp.arange(15.0).reshape(5, 3)
    assert rewards.tabular_reward(None, x) is x


# ------------------------------------------------------------ chain / gridworld


def test_chain_transitions():
    P = np.asarray(single("chain", 0).P)
    assert P.shape == (5, 2, 5)
    np.testing.assert_allclose(P[2, 1], [0, 0.2, 0, 0.8, 0])
    np.testing.assert_allclose(P[2, 0], [0, 0.8, 0, 0.2, 0])
    np.testing.assert_allclose(P[0, 0], [0.8, 0.2, 0, 0, 0])  # left end stays
    np.testing.assert_allclose(P[4, 1], [0, 0, 0, 0.2, 0.8])


def test_chain_vmaps_over_slip():
    P = jax.vmap(lambda p: suites.chain_mdp(None, 3, slip=p).P)(jnp.array([0.0, 0.5]))
    np.testing.assert_allclose(P[0, 1, 1], [0, 0, 1])
    np.testing.assert_allclose(P[1, 1, 1], [0.5, 0, 0.5])


def test_gridworld_transitions():
    P = np.asarray(single("gridworld", 0).P)  # 3 x 4, slip 0.2
    assert P.shape == (12, 4, 12)
    s = 1 * 4 + 1  # centre cell (1, 1); up, right, down, left neighbours:
    np.testing.assert_allclose(P[s, 1, [1, 6, 9, 4]], [0.2 / 3, 0.8, 0.2 / 3, 0.2 / 3])
    # corner (0, 0): up and left hit the border and stay.
    np.testing.assert_allclose(P[0, 0, [0, 1, 4]], [0.8 + 0.2 / 3, 0.2 / 3, 0.2 / 3])


# ------------------------------------------------------------------- Four-Rooms


def test_four_rooms_layout():
    assert len(suites.FOUR_ROOMS_LAYOUT) == 13
    assert all(len(row) == 13 for row in suites.FOUR_ROOMS_LAYOUT)
    cells = suites.four_rooms_cells()
    assert cells.shape == (104, 2)
    assert single("four_rooms", 0).P.shape == (104, 4, 104)
    for hallway in [(3, 6), (6, 2), (7, 9), (10, 6)]:
        assert tuple(cells[suites.four_rooms_state(*hallway)]) == hallway


def test_four_rooms_transitions():
    mdp = single("four_rooms", 0)
    P = np.asarray(mdp.P)
    np.testing.assert_allclose(P.sum(-1), 1.0, atol=1e-12)
    st = suites.four_rooms_state
    # interior cell (2, 2): up, right, down, left
    nbrs = [st(1, 2), st(2, 3), st(3, 2), st(2, 1)]
    for a in range(4):
        np.testing.assert_allclose(
            P[st(2, 2), a, nbrs], np.where(np.arange(4) == a, 2 / 3, 1 / 9)
        )
    # (1, 1): up and left are walls, their mass stays put.
    np.testing.assert_allclose(P[st(1, 1), 0, st(1, 1)], 2 / 3 + 1 / 9)
    np.testing.assert_allclose(P[st(1, 1), 2, st(1, 1)], 2 / 9)
    # start distribution and absorbing goal
    assert np.asarray(mdp.rho)[st(1, 1)] == 1.0
    goal = st(11, 11)
    np.testing.assert_array_equal(P[goal, :, goal], 1.0)
    np.testing.assert_allclose(float(mdp.gamma), 0.99)
    np.testing.assert_allclose(float(mdp.tau), 0.005)
    P_reset = np.asarray(single("four_rooms_reset", 0).P)
    np.testing.assert_array_equal(P_reset[goal, :, st(1, 1)], 1.0)
    np.testing.assert_array_equal(P_reset[:goal], P[:goal])


def test_four_rooms_problem_incentives():
    prob = single("four_rooms_problem", 0)
    S = 104
    assert prob.x0.shape == (S,) and np.isnan(prob.optimum)
    base = suites.four_rooms_reward()
    assert float(base.sum()) == 4.0 and base[suites.four_rooms_state(11, 11)].all()
    target = suites.four_rooms_state(3, 6)
    np.testing.assert_array_equal(np.flatnonzero(prob.data.target), [target])

    @jax.jit
    def loss(x):
        pol = bl.soft_value_iteration(
            prob.mdp, prob.reward(x), method="policy_iteration"
        ).policy
        return prob.objective(x, pol), pol

    f0, pol0 = loss(prob.x0)
    visits = objectives.target_visits(prob.bound_data(), pol0)
    d = bl.occupancy_measure(prob.mdp, pol0)
    np.testing.assert_allclose(visits, d[target].sum() / 0.01, rtol=1e-10)
    np.testing.assert_allclose(f0, -visits, rtol=1e-12)
    assert 0.0 < visits < 1.0
    x = prob.x0.at[target].set(0.03)
    np.testing.assert_allclose(prob.reward(x), base + x[:, None])
    f1, _ = loss(x)
    assert f1 < f0 - 0.1  # paying at the target pulls the follower there
    g = jax.grad(prob.upper, argnums=(1, 2))(prob.bound_data(), x, pol0)
    assert all(np.all(np.isfinite(gi)) for gi in g)
    np.testing.assert_allclose(g[0], 2 * 0.01 * x)


# ------------------------------------------------------------- SoBiRL synthetic


def test_sobirl_support_sizes_are_uniform():
    P = np.asarray(batched("sobirl_transitions"))
    assert P.shape == (200, 10, 5, 10)
    np.testing.assert_allclose(P.sum(-1), 1.0, atol=1e-12)
    sizes = (P > 0).sum(-1).ravel()
    assert sizes.min() >= 1 and sizes.max() <= 9
    counts = np.bincount(sizes, minlength=10)[1:]
    expected = sizes.size / 9
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 40.0, counts  # 8 dof: P(chi2 > 40) ~ 3e-6
    # the support is not biased toward any next state
    hits = (P > 0).sum(axis=(0, 1, 2))
    assert np.all(np.abs(hits / hits.mean() - 1) < 0.05), hits


def test_sobirl_synthetic_data():
    prob = single("sobirl", 0)
    M, c = np.asarray(prob.data.M), np.asarray(prob.data.c)
    # Stored as the symmetric part (M0 + M0^T) / 2 of an N(0, 1) matrix M0:
    # off-diagonal entries have standard deviation 1/sqrt(2), the diagonal 1.
    assert M.shape == (100, 100) and np.allclose(M, M.T, rtol=0, atol=1e-12)
    off = M[~np.eye(100, dtype=bool)]
    assert abs(M.mean()) < 0.05 and abs(off.std() - np.sqrt(0.5)) < 0.03
    assert abs(np.diag(M).std() - 1) < 0.25
    assert c.shape == (10, 5) and np.all((c > 0) & (c < 1))
    assert prob.x0.shape == (100,) and prob.data.w0.shape == (10,)
    assert float(prob.optimum) == 1.0
    assert float(prob.mdp.gamma) == 0.5 and float(prob.mdp.tau) == 1.0
    assert prob.reward_fn is rewards.quadratic_form_reward
    assert prob.upper is objectives.sobirl_quadratic


def test_sobirl_optimum_at_zero():
    prob = single("sobirl", 0)
    x = jnp.zeros(100)
    r = prob.reward(x)
    np.testing.assert_array_equal(r, 0.0)
    pol = bl.soft_value_iteration(prob.mdp, r).policy
    np.testing.assert_allclose(pol, 0.2, atol=1e-12)
    np.testing.assert_allclose(prob.objective(x, pol), 1.0, atol=1e-12)
    # any other policy is worse
    pol1 = bl.soft_value_iteration(prob.mdp, prob.reward(prob.x0)).policy
    assert prob.objective(prob.x0, pol1) > 1.0


def test_sobirl_from_arrays():
    rng = np.random.default_rng(0)
    S, A, d = 3, 2, 4
    P = rng.dirichlet(np.ones(S), size=(S, A))
    M = rng.normal(size=(d, d))
    c = rng.uniform(size=(S, A))
    x0 = rng.normal(size=d)
    prob = suites.sobirl_synthetic_from_arrays(P, M, c, x0, gamma=0.3, tau=2.0)
    assert_valid(prob.mdp)
    np.testing.assert_array_equal(prob.data.w0, 0.0)
    np.testing.assert_allclose(prob.reward(x0), c * (x0 @ M @ x0), rtol=1e-12)
    pol = np.full((S, A), 0.5)
    np.testing.assert_allclose(
        prob.objective(x0, pol), 0.5 * x0 @ x0 + 0.5 * S * A * 0.25, rtol=1e-12
    )
    np.testing.assert_allclose(float(prob.optimum), S / (2 * A))


# ------------------------------------------------------------------ AIHF bandit


def test_bandit_mdp_policy():
    r = jnp.array([[1.0, 0.0, -1.0]])
    mdp = suites.bandit_mdp(3, tau=0.5)
    assert_valid(mdp)
    assert mdp.P.shape == (1, 3, 1) and float(mdp.gamma) == 0.0
    pol = bl.soft_value_iteration(mdp, r).policy
    np.testing.assert_allclose(pol[0], jax.nn.softmax(r[0] / 0.5), rtol=1e-12)
    pi0 = jnp.array([0.2, 0.3, 0.5])
    mdp0 = jax.jit(lambda p: suites.bandit_mdp(3, ref_policy=p))(pi0)
    assert mdp0.ref_policy.shape == (1, 3)
    assert_valid(mdp0)
    pol0 = bl.soft_value_iteration(mdp0, r).policy
    expected = pi0 * jnp.exp(r[0])
    np.testing.assert_allclose(pol0[0], expected / expected.sum(), rtol=1e-12)


def test_aihf_gaussian_reward():
    r = np.asarray(suites.aihf_gaussian_reward())
    i = np.arange(1, 51)
    expected = np.exp(-((i / 50 - 0.5) ** 2) / (2 * 4.0)) / (2.0 * np.sqrt(2 * np.pi))
    assert r.shape == (50,)
    np.testing.assert_allclose(r, expected, rtol=1e-12)
    assert np.argmax(r) == 24  # i = 25, i / 50 = mu
