"""Model-free hyper-gradients (MATH.md §4–5): Prop. 5.2 by exact enumeration, the
SoBiRL and Stoc-SoBiRL (Algorithm 3) estimators, and the trajectory upper losses.

* enumeration of (12)+(13) == closed-form hyper-gradient of ``phi(x) = E[l]``;
* sampled estimators are unbiased (mean over many vmapped keys within 5 standard
  errors, per coordinate); the fully sampled one has the exact truncated mean;
* truncation bias of Algorithm 3 decays like ``gamma^L`` (non-mixing MDP) and like
  ``(gamma |lambda_2(P Pi)|)^L`` on a mixing one (faster; the paper's bound is
  ``O(gamma^L)``);
* jit / vmap over keys and over a batch of MDPs; argument validation.

Compile budget: all sampled estimates go through the module-level jitted
``estimate`` (static: kind, method and sizes); tiny sizes, float64.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from bilevel_rl.estimators import (
    MAX_ENUMERATED_TUPLES,
    enumerate_tuples,
    exact_trajectory_hypergradient,
    expected_trajectory_loss,
    sampled_hypergradient,
    sampled_outer_hypergradient,
)
from bilevel_rl.hypergrad import hypergradient
from bilevel_rl.mdp import TabularMDP, stack
from bilevel_rl.objectives import (
    PreferenceData,
    ShapingData,
    bradley_terry_bce,
    reward_shaping_loss,
    rlhf_bce_loss,
)
from bilevel_rl.sampling import rollout
from bilevel_rl.soft import soft_value_iteration

S, A, NF = 3, 2, 3
GAMMA, TAU = 0.5, 0.7
SIZES = {"shaping": (3, 1), "rlhf": (2, 2)}  # kind -> (horizon H, tuple size m)
NUM_KEYS = 10_000
L_LONG = 24  # gamma^L ~ 6e-8: negligible against the Monte-Carlo standard error


class Data(NamedTuple):
    feats: jax.Array  # [S, A, NF]
    upper_reward: jax.Array  # [S, A]  r_u of reward shaping
    true_reward: jax.Array  # [S, A]  r* of the RLHF labeller


def reward_model(feats, x):
    """Nonlinear reward ``r_x = x.s * tanh(phi x.w)``; ``x`` is a dict pytree."""
    return x["s"] * jnp.tanh(feats @ x["w"])


def bind(kind: str, data: Data):
    """``(loss(x, trajs), reward_fn(x), H, m)`` of one problem kind."""
    reward_fn = functools.partial(reward_model, data.feats)
    if kind == "shaping":
        shaping = ShapingData(data.upper_reward, jnp.asarray(0.9))
        loss = functools.partial(reward_shaping_loss, shaping)
    else:
        prefs = PreferenceData(data.feats, data.true_reward, reward_fn=reward_model)
        loss = functools.partial(rlhf_bce_loss, prefs)
    return (loss, reward_fn, *SIZES[kind])


@functools.partial(
    jax.jit,
    static_argnames=("kind", "method", "D", "E", "L", "crn", "truncate", "baseline"),
)
def estimate(
    key,
    x,
    mdp,
    umdp,
    policy,
    data,
    *,
    kind,
    method,
    D=1,
    E=1,
    L=1,
    crn=True,
    truncate=False,
    baseline="none",
):
    loss, reward_fn, H, m = bind(kind, data)
    common = dict(horizon=H, num_trajectories=m, upper_mdp=umdp)
    if method == "exact":
        return exact_trajectory_hypergradient(
            loss,
            reward_fn,
            x,
            mdp,
            policy=policy,
            **common,
            rollout_length=L if truncate else None,
        )
    if method == "outer":
        return sampled_outer_hypergradient(
            key, loss, reward_fn, x, mdp, policy, num_samples=D, baseline=baseline,
            **common,
        )  # fmt: skip
    return sampled_hypergradient(
        key,
        loss,
        reward_fn,
        x,
        mdp,
        policy,
        num_samples=D,
        num_rollouts=E,
        rollout_length=L,
        common_random_numbers=crn,
        baseline=baseline,
        **common,
    )


def flat(tree) -> np.ndarray:
    return np.asarray(ravel_pytree(tree)[0])


def make_mdp(rng, S=S, A=A, gamma=GAMMA, tau=TAU, **kw) -> TabularMDP:
    P = rng.dirichlet(np.ones(S), size=(S, A))
    rho = rng.dirichlet(np.ones(S))
    return TabularMDP.create(P, gamma=gamma, tau=tau, rho=rho, **kw)


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(7)
    mdp, umdp = make_mdp(rng), make_mdp(rng)
    data = Data(
        jnp.asarray(rng.normal(size=(S, A, NF))),
        jnp.asarray(rng.normal(size=(S, A))),
        jnp.asarray(2.0 * rng.normal(size=(S, A))),
    )
    x = {"w": jnp.asarray(rng.normal(size=NF)), "s": jnp.asarray(1.3)}
    pi_star = soft_value_iteration(mdp, reward_model(data.feats, x), tol=1e-13).policy
    noise = jnp.asarray(rng.uniform(0.2, 3.0, size=(S, A)))
    pi_k = (pi_star * noise) / (pi_star * noise).sum(-1, keepdims=True)
    return dict(mdp=mdp, umdp=umdp, data=data, x=x, pi_star=pi_star, pi_k=pi_k)


# --------------------------------------------------------- objectives (§4 losses)


def test_trajectory_losses(setup):
    data, x = setup["data"], setup["x"]
    key = jax.random.key(0)
    trajs = rollout(key, setup["mdp"], setup["pi_star"], horizon=3, num_trajectories=2)
    loss, *_ = bind("shaping", data)
    manual = -sum(
        0.9**t * data.upper_reward[trajs.states[i, t], trajs.actions[i, t]]
        for i in range(2)
        for t in range(3)
    )
    np.testing.assert_allclose(loss(x, trajs), manual, rtol=1e-12)
    # soft-label BCE == expectation of the hard-label BCE over y ~ BT(r*)
    loss, reward_fn, *_ = bind("rlhf", data)
    ret = data.true_reward[trajs.states, trajs.actions].sum(-1)
    p = jax.nn.sigmoid(ret[0] - ret[1])
    r = reward_fn(x)
    hard = p * bradley_terry_bce(r, trajs, 1.0) + (1 - p) * bradley_terry_bce(
        r, trajs, 0.0
    )
    np.testing.assert_allclose(loss(x, trajs), hard, rtol=1e-12)
    z = r[trajs.states, trajs.actions].sum(-1) @ jnp.array([1.0, -1.0])
    np.testing.assert_allclose(
        bradley_terry_bce(r, trajs, 1.0), -jnp.log(jax.nn.sigmoid(z)), rtol=1e-12
    )


def test_enumeration_is_a_distribution(setup):
    tuples, probs = enumerate_tuples(
        setup["umdp"], setup["pi_k"], horizon=2, num_trajectories=2
    )
    assert tuples.states.shape == ((S * A) ** 4, 2, 2) and probs.shape == (6**4,)
    np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-13)
    assert np.all(np.asarray(probs) >= 0)


# ------------------------------------------- Prop. 5.2 == closed form (exact, 1e-8)


@pytest.mark.parametrize(
    "kind, upper, kl",
    [
        ("shaping", False, False),
        ("shaping", True, False),
        ("shaping", True, True),
        ("rlhf", False, False),
        ("rlhf", True, False),
    ],
)
def test_prop_5_2_enumeration_matches_closed_form(setup, kind, upper, kl):
    mdp, data, x = setup["mdp"], setup["data"], setup["x"]
    if kl:  # KL-regularized lower level (reference policy pi0)
        pi0 = np.random.default_rng(3).dirichlet(np.ones(A), size=S)
        mdp = TabularMDP.create(
            mdp.P, gamma=GAMMA, tau=TAU, rho=mdp.rho, ref_policy=pi0
        )
    umdp = setup["umdp"] if upper else None
    loss, reward_fn, H, m = bind(kind, data)
    got = exact_trajectory_hypergradient(
        loss,
        reward_fn,
        x,
        mdp,
        horizon=H,
        num_trajectories=m,
        upper_mdp=umdp,
        tol=1e-13,
    )

    def phi_upper(x, policy):  # f(x, pi) = E_pi[l], a polynomial in pi
        return expected_trajectory_loss(
            loss, x, policy, umdp or mdp, horizon=H, num_trajectories=m
        )

    ref = hypergradient(phi_upper, reward_fn, x, mdp, tol=1e-13)
    g, r = flat(got), flat(ref)
    rel = np.max(np.abs(g - r)) / np.max(np.abs(r))
    print(f"Prop 5.2 {kind} upper={upper} kl={kl}: max rel diff {rel:.2e}")
    assert rel < 1e-8
    assert np.max(np.abs(r)) > 1e-3  # a non-trivial gradient


# ------------------------------------------------------------------ unbiasedness


def _z_scores(samples, exact):
    s, e = flat_batch(samples), flat(exact)
    se = s.std(0, ddof=1) / np.sqrt(s.shape[0])
    return (s.mean(0) - e) / se


def flat_batch(tree) -> np.ndarray:
    return np.asarray(jax.vmap(lambda t: ravel_pytree(t)[0])(tree))


LOO = "leave_one_out"
UNBIASED_CASES = [
    # (kind, policy, method, D, E, L, crn, truncated mean, baseline)
    ("shaping", "pi_star", "outer", 2, 1, 1, True, False, "none"),
    ("shaping", "pi_star", "full", 1, 2, L_LONG, True, False, "none"),
    ("rlhf", "pi_k", "outer", 1, 1, 1, True, False, "none"),
    ("rlhf", "pi_k", "full", 1, 1, L_LONG, True, False, "none"),
    ("rlhf", "pi_star", "full", 2, 1, 1, False, True, "none"),
    ("shaping", "pi_k", "outer", 3, 1, 1, True, False, LOO),
    ("rlhf", "pi_k", "full", 2, 1, L_LONG, True, False, LOO),
    ("shaping", "pi_star", "full", 3, 1, 2, False, True, LOO),
]


@pytest.mark.parametrize(
    "kind, pol, method, D, E, L, crn, trunc, baseline", UNBIASED_CASES
)
def test_sampled_estimators_are_unbiased(
    setup, kind, pol, method, D, E, L, crn, trunc, baseline
):
    """Mean over NUM_KEYS keys within 5 SE of the exact mean, per coordinate.

    At ``pi_k != pi*`` the target is Prop. 5.2 evaluated at ``pi_k`` (the policy
    argument is used in place of ``pi*``); ``trunc``: the exact mean of the
    ``L``-step truncated estimator (not the hyper-gradient); ``baseline``: the
    score term's (the leave-one-out mean leaves the mean unchanged).
    """
    policy = setup[pol]
    args = (setup["x"], setup["mdp"], setup["umdp"], policy, setup["data"])
    exact = estimate(None, *args, kind=kind, method="exact", L=L, truncate=trunc)
    keys = jax.random.split(jax.random.key(11), NUM_KEYS)
    kw = dict(kind=kind, method=method, D=D, E=E, L=L, crn=crn, baseline=baseline)
    samples = jax.vmap(lambda k: estimate(k, *args, **kw))(keys)
    z = _z_scores(samples, exact)
    print(f"{kind} {pol} {method} D={D} E={E} L={L} crn={crn}: z = {np.round(z, 2)}")
    assert np.all(np.abs(z) < 5.0)
    if pol == "pi_k" and not trunc:  # pi_k matters: far from the pi* value
        at_star = estimate(
            None, *args[:3], setup["pi_star"], args[4], kind=kind, method="exact"
        )
        z_star = np.max(np.abs(_z_scores(samples, at_star)))
        print(f"  max |z| against the pi* value instead: {z_star:.1f}")
        assert z_star > 10.0


@pytest.mark.parametrize("method", ["outer", "full"])
def test_leave_one_out_estimate_ignores_a_constant_added_to_the_loss(setup, method):
    """``l -> l + c`` leaves ``l_j - b_j`` and ``grad_x l_j`` unchanged, so the
    leave-one-out estimate is the same; without a baseline it moves by ``(c/tau)``
    times the mean score, which is not zero for one draw."""
    loss, reward_fn, H, m = bind("rlhf", setup["data"])
    x, mdp, pi = setup["x"], setup["mdp"], setup["pi_k"]
    common = dict(horizon=H, num_trajectories=m, upper_mdp=setup["umdp"])
    if method == "full":
        common.update(num_rollouts=2, rollout_length=3)
    fn = sampled_outer_hypergradient if method == "outer" else sampled_hypergradient

    def grads(shift, baseline):
        def shifted(x, trajs):
            return loss(x, trajs) + shift

        key = jax.random.key(5)
        out = fn(key, shifted, reward_fn, x, mdp, pi, num_samples=4, baseline=baseline,
                 **common)  # fmt: skip
        return flat(out)

    np.testing.assert_allclose(
        grads(100.0, "leave_one_out"), grads(0.0, "leave_one_out"), atol=1e-9
    )
    moved = np.max(np.abs(grads(100.0, "none") - grads(0.0, "none")))
    assert moved > 1.0


@pytest.mark.parametrize(
    "baseline, D, match",
    [("mean", 4, "baseline: must be one of"), ("leave_one_out", 1, "D >= 2")],
)
def test_invalid_baseline_raises(setup, baseline, D, match):
    loss, reward_fn, H, m = bind("shaping", setup["data"])
    args = (jax.random.key(0), loss, reward_fn, setup["x"], setup["mdp"])
    args += (setup["pi_star"],)
    kw = dict(horizon=H, num_trajectories=m, num_samples=D, baseline=baseline)
    with pytest.raises(ValueError, match=match):
        sampled_outer_hypergradient(*args, **kw)
    with pytest.raises(ValueError, match=match):
        sampled_hypergradient(*args, num_rollouts=1, rollout_length=2, **kw)


# -------------------------------------------------------------- truncation bias


def test_truncated_mean_is_the_neumann_sum(setup):
    """``exact_trajectory_hypergradient(rollout_length=L)`` == (13) with
    ``dQ_L = sum_{t<L} (gamma P Pi)^t J`` built here from matrix powers."""
    x, mdp, umdp, pi = setup["x"], setup["mdp"], setup["umdp"], setup["pi_k"]
    loss, reward_fn, H, m = bind("shaping", setup["data"])  # grad_x l = 0
    L = 3
    tuples, probs = enumerate_tuples(umdp, pi, horizon=H, num_trajectories=m)
    weights = probs * jax.vmap(loss, in_axes=(None, 0))(x, tuples)
    visits = np.zeros((S, A))
    np.add.at(
        visits,
        (np.asarray(tuples.states), np.asarray(tuples.actions)),
        np.broadcast_to(np.asarray(weights)[:, None, None], tuples.states.shape),
    )
    flat_x, unravel = ravel_pytree(x)
    J = np.asarray(jax.jacfwd(lambda f: reward_fn(unravel(f)))(flat_x))
    M = GAMMA * np.einsum("sat,tb->satb", mdp.P, pi).reshape(S * A, S * A)
    dq = sum(np.linalg.matrix_power(M, t) for t in range(L)) @ J.reshape(S * A, -1)
    centred = visits - np.asarray(pi) * visits.sum(-1, keepdims=True)
    expected = centred.ravel() @ dq / TAU
    got = flat(
        exact_trajectory_hypergradient(
            loss,
            reward_fn,
            x,
            mdp,
            horizon=H,
            upper_mdp=umdp,
            policy=pi,
            rollout_length=L,
        )
    )
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)


def _bias_curve(mdp, lengths, data, x):
    loss, reward_fn, H, m = bind("shaping", data)
    pi = soft_value_iteration(mdp, reward_model(data.feats, x), tol=1e-13).policy

    def mean_estimate(length):  # exact mean of Algorithm 3 (None: L = infinity)
        return flat(
            exact_trajectory_hypergradient(
                loss, reward_fn, x, mdp, horizon=2, policy=pi, rollout_length=length
            )
        )

    exact = mean_estimate(None)
    bias = [np.max(np.abs(mean_estimate(int(n)) - exact)) for n in lengths]
    num_pairs = pi.size
    P_pi = np.einsum("sat,tb->satb", mdp.P, pi).reshape(num_pairs, num_pairs)
    lam2 = np.sort(np.abs(np.linalg.eigvals(P_pi)))[-2]
    return np.asarray(bias), lam2


def test_truncation_bias_decays_like_gamma_power_L():
    """Noise-free: bias(L) = exact mean of Algorithm 3 with length L − exact.

    Non-mixing MDP (the first action picks one of two closed classes forever):
    ``bias(L) ~ c gamma^L``, log-slope ``log gamma``. Mixing MDP: the per-state
    centring of ``dQ - dV`` cancels the stationary part, so the bias decays like
    ``(gamma |lambda_2(P Pi)|)^L``, faster than the ``O(gamma^L)`` bound.
    """
    rng = np.random.default_rng(5)
    S4, gamma = 4, 0.8
    data = Data(
        jnp.asarray(rng.normal(size=(S4, A, NF))),
        jnp.asarray(rng.normal(size=(S4, A))),
        jnp.zeros((S4, A)),
    )
    x = {"w": jnp.asarray(rng.normal(size=NF)), "s": jnp.asarray(1.0)}
    P = np.zeros((S4, A, S4))
    P[0, 0], P[0, 1] = [0.2, 0.8, 0, 0], [0.2, 0, 0.4, 0.4]
    P[1, :, 1] = 1.0  # absorbing
    P[2] = [[0, 0, 0.3, 0.7], [0, 0, 0.9, 0.1]]  # closed, mixing class {2, 3}
    P[3] = [[0, 0, 0.6, 0.4], [0, 0, 0.2, 0.8]]
    lengths = np.arange(4, 41, 4)
    bias, lam2 = _bias_curve(
        TabularMDP.create(P, gamma=gamma, tau=0.5), lengths, data, x
    )
    slope = np.polyfit(lengths, np.log(bias), 1)[0]
    print(f"non-mixing: slope {slope:.5f}, log gamma {np.log(gamma):.5f}")
    assert lam2 == pytest.approx(1.0)
    assert slope == pytest.approx(np.log(gamma), abs=0.01)
    assert np.all(bias < 0.1 * gamma**lengths)  # |bias(L)| <= C gamma^L

    mixing = TabularMDP.create(
        rng.dirichlet(np.full(S4, 0.3), size=(S4, A)), gamma=gamma, tau=0.5
    )
    lengths = np.arange(2, 21, 2)
    bias, lam2 = _bias_curve(mixing, lengths, data, x)
    keep = bias > 1e-12  # above round-off
    slope = np.polyfit(lengths[keep], np.log(bias[keep]), 1)[0]
    target = np.log(gamma * lam2)
    print(f"mixing: slope {slope:.3f}, log(gamma |lambda_2|) {target:.3f}")
    assert keep.sum() >= 5
    assert slope < np.log(gamma) - 0.2
    assert slope == pytest.approx(target, abs=0.2)


# ------------------------------------------------------------------- jit / vmap


@pytest.mark.parametrize("method", ["outer", "full", "exact"])
def test_jit_and_vmap_agree_with_unbatched(setup, method):
    kind = "rlhf"
    loss, reward_fn, H, m = bind(kind, setup["data"])
    x, data, umdp = setup["x"], setup["data"], setup["umdp"]
    kw = dict(kind=kind, method=method, D=2, E=2, L=5)
    rng = np.random.default_rng(1)
    mdps = [setup["mdp"]] + [make_mdp(rng) for _ in range(2)]
    pis = [setup["pi_k"], setup["pi_star"], setup["pi_k"]]
    keys = jax.random.split(jax.random.key(3), 3)

    def eager(key, mdp, pi):
        common = dict(horizon=H, num_trajectories=m, upper_mdp=umdp)
        if method == "exact":
            return exact_trajectory_hypergradient(
                loss, reward_fn, x, mdp, policy=pi, **common
            )
        if method == "outer":
            return sampled_outer_hypergradient(
                key, loss, reward_fn, x, mdp, pi, num_samples=2, **common
            )
        return sampled_hypergradient(
            key,
            loss,
            reward_fn,
            x,
            mdp,
            pi,
            num_samples=2,
            num_rollouts=2,
            rollout_length=5,
            **common,
        )

    def jitted(k, md, p):  # unbatched, under jax.jit
        return estimate(k, x, md, umdp, p, data, **kw)

    close = functools.partial(np.testing.assert_allclose, rtol=1e-10, atol=1e-12)
    close(flat(jitted(keys[0], mdps[0], pis[0])), flat(eager(keys[0], mdps[0], pis[0])))
    # vmap over a batch of MDPs and policies (and keys)
    ref = [flat(jitted(k, md, p)) for k, md, p in zip(keys, mdps, pis)]
    close(flat_batch(jax.vmap(jitted)(keys, stack(mdps), jnp.stack(pis))), ref)
    if method != "exact":  # vmap over keys alone
        ref = [flat(jitted(k, mdps[0], pis[0])) for k in keys]
        close(flat_batch(jax.vmap(jitted, (0, None, None))(keys, mdps[0], pis[0])), ref)


def test_samples_are_a_function_of_the_key(setup):
    """Same key: same samples, so re-evaluating at a nearby x (Stoc-SoBiRL's
    momentum correction) changes the estimate smoothly; another key does not."""
    args = (setup["mdp"], setup["umdp"], setup["pi_k"], setup["data"])
    kw = dict(kind="rlhf", method="full", D=2, E=2, L=5)
    key, other = jax.random.split(jax.random.key(5))
    x = setup["x"]
    x2 = jax.tree.map(lambda a: a + 1e-7, x)
    g = flat(estimate(key, x, *args, **kw))
    assert np.array_equal(g, flat(estimate(key, x, *args, **kw)))
    assert np.max(np.abs(flat(estimate(key, x2, *args, **kw)) - g)) < 1e-5
    assert np.max(np.abs(flat(estimate(other, x, *args, **kw)) - g)) > 1e-3


def test_with_value_returns_the_mean_loss(setup):
    loss, reward_fn, H, m = bind("rlhf", setup["data"])
    x, mdp, pi = setup["x"], setup["mdp"], setup["pi_k"]
    key = jax.random.key(2)
    kw = dict(horizon=H, num_trajectories=m, num_samples=2)
    value, grad = sampled_outer_hypergradient(
        key, loss, reward_fn, x, mdp, pi, with_value=True, **kw
    )
    np.testing.assert_array_equal(
        flat(grad),
        flat(sampled_outer_hypergradient(key, loss, reward_fn, x, mdp, pi, **kw)),
    )
    tuples = rollout(jax.random.split(key)[0], mdp, pi, horizon=H, num_trajectories=4)
    tuples = jax.tree.map(lambda a: a.reshape((2, m) + a.shape[1:]), tuples)
    manual = jnp.mean(jax.vmap(loss, in_axes=(None, 0))(x, tuples))
    np.testing.assert_allclose(value, manual, rtol=1e-12)
    value2, _ = sampled_hypergradient(
        key,
        loss,
        reward_fn,
        x,
        mdp,
        pi,
        num_rollouts=2,
        rollout_length=5,
        with_value=True,
        **kw,
    )
    np.testing.assert_allclose(value2, value, rtol=1e-12)


# ------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "name, value",
    [
        ("horizon", 0),
        ("num_trajectories", 0),
        ("num_samples", 0),
        ("num_rollouts", 0),
        ("rollout_length", 0),
        ("num_samples", 1.5),
        ("num_rollouts", True),
        ("rollout_length", -3),
    ],
)
def test_invalid_sizes_raise(setup, name, value):
    loss, reward_fn, H, m = bind("shaping", setup["data"])
    args = (jax.random.key(0), loss, reward_fn, setup["x"], setup["mdp"])
    kw = dict(
        horizon=H, num_trajectories=m, num_samples=2, num_rollouts=2, rollout_length=3
    )
    kw[name] = value
    with pytest.raises(ValueError, match=name):
        sampled_hypergradient(*args, setup["pi_star"], **kw)
    if name not in ("num_rollouts", "rollout_length"):
        kw.pop("num_rollouts"), kw.pop("rollout_length")
        with pytest.raises(ValueError, match=name):
            sampled_outer_hypergradient(*args, setup["pi_star"], **kw)
    if name in ("horizon", "num_trajectories", "rollout_length"):
        kw = {
            k: v
            for k, v in kw.items()
            if k in ("horizon", "num_trajectories", "rollout_length")
        }
        with pytest.raises(ValueError, match=name):
            exact_trajectory_hypergradient(*args[1:], **kw)


def test_invalid_shapes_raise(setup):
    loss, reward_fn, H, m = bind("shaping", setup["data"])
    x, mdp = setup["x"], setup["mdp"]
    kw = dict(horizon=H, num_samples=2)
    with pytest.raises(ValueError, match="policy"):
        sampled_outer_hypergradient(
            jax.random.key(0), loss, reward_fn, x, mdp, jnp.ones((S, A + 1)), **kw
        )
    bigger = make_mdp(np.random.default_rng(0), S=S + 1)
    with pytest.raises(ValueError, match="upper_mdp"):
        sampled_hypergradient(
            jax.random.key(0),
            loss,
            reward_fn,
            x,
            mdp,
            setup["pi_star"],
            num_rollouts=1,
            rollout_length=2,
            upper_mdp=bigger,
            **kw,
        )
    with pytest.raises(ValueError, match="MAX_ENUMERATED_TUPLES"):
        enumerate_tuples(mdp, setup["pi_star"], horizon=9)
    assert (S * A) ** 9 > MAX_ENUMERATED_TUPLES
