"""Stoc-SoBiRL's STORM momentum re-uses the SAME samples (docs/math.md §5, corrected).

(a) The correction ``ĝ(x_k; Xi) - ĝ(x_{k-1}; Xi)`` is Lipschitz in the step: with
the samples held fixed (and with likelihood-ratio weights) ``E‖Δĝ‖² / δ²`` does not
grow as ``δ`` shrinks (a key re-draw at the previous point made it grow like
``1/δ``). (b) At matched samples per iteration, STORM's direction error
``E‖d_k - ∇φ(x_k)‖²`` is below the no-momentum estimator's after a burn-in.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilevel_rl import hypergradient, suites
from bilevel_rl.algorithms import stoc_sobirl
from bilevel_rl.algorithms.follower import PolicyFollower, best_response

TINY = dict(num_states=4, num_actions=2, dim=3, horizon=3, gamma=0.8, tau=0.7)
SIZES = dict(num_samples=2, num_rollouts=1, inner_steps=3)


@functools.cache
def problem():
    return suites.shaping_problem(jax.random.key(5), **TINY, dtype=jnp.float64)


@functools.cache
def sq_change_fn(reuse):
    """Jitted ``(keys, δ) -> ‖ĝ(x; Xi) - ĝ(x - δu; Xi)‖² / δ²`` per key, for random
    unit directions ``u`` and ``Xi`` drawn at ``(x, pi*_x)``; with
    ``reuse="likelihood_ratio"`` the previous point's term is weighted by
    ``pi*_{x-δu} / pi*_x``."""
    prob = problem()
    split = stoc_sobirl.split_estimator(stoc_sobirl.Params(rollout_length=4, **SIZES))

    def one(key, delta):
        k_u, k_xi = jax.random.split(key)
        u = jax.random.normal(k_u, prob.x0.shape)
        x, x_prev = prob.x0, prob.x0 - delta * u / jnp.linalg.norm(u)
        now, prev = (
            PolicyFollower(best_response(prob.mdp, prob.reward(z)).policy)
            for z in (x, x_prev)
        )
        samples = split.draw(now, prob, x, k_xi)
        _, g = split.evaluate(samples, prob, x, None)
        reweight = (prev, now) if reuse == "likelihood_ratio" else None
        _, g_prev = split.evaluate(samples, prob, x_prev, reweight)
        return jnp.sum((g - g_prev) ** 2) / delta**2

    return jax.jit(jax.vmap(one, in_axes=(0, None)))


def mean_sq_change(delta, reuse, num_keys=256):
    keys = jax.random.split(jax.random.key(0), num_keys)
    return float(np.mean(sq_change_fn(reuse)(keys, jnp.float64(delta))))


@pytest.mark.parametrize("reuse", ["fixed", "likelihood_ratio"])
def test_storm_correction_is_lipschitz(reuse):
    coarse = mean_sq_change(1e-2, reuse)
    fine = mean_sq_change(1e-4, reuse)
    assert 0.5 < fine / coarse < 2.0, (coarse, fine)
    assert 0 < coarse < 1e3  # bounded, not a ~1/δ blow-up


@functools.cache
def direction_errors(momentum, iters=200, seeds=32):
    """``‖d_k - ∇φ(x_k)‖²`` ``[seeds, iters]`` on one fixed instance, with ``d_k``
    read off the update ``x_{k+1} = x_k - lr_k d_k``."""
    prob = problem()
    optimizer = {"learning_rate": 0.5, "schedule": "inverse_cube_root", "offset": 10.0}
    params = dict(
        optimizer=optimizer, momentum_scale=20.0, rollout_length=15,
        track_exact=False, momentum=momentum, **SIZES,
    )  # fmt: skip
    solver = stoc_sobirl.make(**params)
    lr = stoc_sobirl.Params(**params).optimizer.step_size
    reward_fn, upper = prob.bind()

    def one(key):
        def body(carry, k):
            state = carry
            new, _ = solver.step(state, prob)
            d = (state.x - new.x) / lr(k)
            g = hypergradient(upper, reward_fn, state.x, prob.mdp)
            return new, jnp.sum((d - g) ** 2)

        steps = jnp.arange(iters, dtype=jnp.int32)
        return jax.lax.scan(body, solver.init(prob, key), steps)[1]

    keys = jax.random.split(jax.random.key(1), seeds)
    return np.asarray(jax.jit(jax.vmap(one))(keys))


def test_storm_direction_error_is_below_no_momentum_after_burn_in():
    storm = direction_errors("storm")[:, 100:].mean(axis=1)  # per seed
    plain = direction_errors("none")[:, 100:].mean(axis=1)
    se = np.hypot(storm.std(), plain.std()) / np.sqrt(len(storm))
    assert storm.mean() + 3 * se < plain.mean(), (storm.mean(), plain.mean(), se)


def test_transitions_count_every_drawn_step():
    # D tuples of m trajectories of H steps, and 2 E rollouts of L steps per visit.
    D, E, L = 2, 3, 4
    m, H = 1, TINY["horizon"]
    solver = stoc_sobirl.make(
        num_samples=D, num_rollouts=E, rollout_length=L, inner_steps=1,
        momentum="none", track_exact=False,
    )  # fmt: skip
    prob = problem()
    _, metrics = solver.step(solver.init(prob, jax.random.key(0)), prob)
    assert float(metrics["transitions"]) == D * m * H * (1 + 2 * E * L)
