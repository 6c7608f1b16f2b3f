"""The deep RLHF loop: queries from rollouts, labels, buffer, every method
(tiny CartPole runs), bad input and non-finite flags."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("gymnax")

from bilevel_rl.deep import envs, ppo, rlhf  # noqa: E402

T, N, F = 6, 2, 3
ENV = envs.make("CartPole-v1")
PPO = ppo.Params(num_envs=4, num_steps=16, num_minibatches=2, update_epochs=1)
SMALL = dict(
    fragment_length=5, buffer_size=16, reward_batch=8, queries_per_iteration=4,
    branch_length=3, stage_iterations=2,
)  # fmt: skip
ITERS = 4


def hand_rollout():
    """A ``[T, N]`` rollout whose env 0 terminates at t = 2, env 1 truncates at 4."""
    done = np.zeros((T, N), bool)
    terminated, truncated = done.copy(), done.copy()
    terminated[2, 0], truncated[4, 1] = True, True
    t = np.arange(T)[:, None] + 10 * np.arange(N)[None]  # reward = t + 10 n
    return ppo.Rollout(
        obs=jnp.asarray(t[..., None], jnp.float32),
        action=jnp.asarray(t % 2, jnp.int32),
        log_prob=jnp.zeros((T, N)),
        value=jnp.zeros((T, N)),
        next_value=jnp.zeros((T, N)),
        reward=jnp.zeros((T, N)),
        true_reward=jnp.asarray(t, jnp.float32),
        terminated=jnp.asarray(terminated),
        truncated=jnp.asarray(truncated),
        episode_return=jnp.zeros((T, N)),
        env_state={"t": jnp.asarray(t)},
        step_key=jax.random.split(jax.random.key(0), (T, N)),
    )


def test_fragments_are_cut_at_episode_ends():
    ro = hand_rollout()
    q = rlhf.sample_queries(jax.random.key(3), ro, 200, F)
    start = np.asarray(q.obs[..., 0, 0]) % 10  # first step's t
    env = np.asarray(q.obs[..., 0, 0]) // 10
    assert q.obs.shape == (200, 2, F, 1) and set(np.unique(env)) == {0, 1}
    assert start.max() == T - F and start.min() == 0  # every start drawn
    for i, j in np.ndindex(200, 2):
        t = start[i, j] + np.arange(F)
        end = 2 if env[i, j] == 0 else 4
        # Valid to the first end in the fragment (inclusive); a fragment that
        # starts after an end lies in the next episode.
        mask = (t <= end) | (start[i, j] > end)
        np.testing.assert_array_equal(q.mask[i, j], mask)
        reward = np.where(mask, t + 10 * env[i, j], 0)
        np.testing.assert_array_equal(q.true_rewards[i, j], reward)
        np.testing.assert_array_equal(q.env_states["t"][i, j], t + 10 * env[i, j])
        np.testing.assert_array_equal(q.actions[i, j], t % 2)


def test_labels_deterministic_with_ties_and_bradley_terry():
    rewards = jnp.asarray([[[1.0, 2.0], [3.0, 1.0]], [[1.0, 1.0], [0.0, 2.0]],
                           [[0.0, 0.0], [1.0, 0.0]]])  # fmt: skip
    q = rlhf.sample_queries(jax.random.key(0), hand_rollout(), 3, 2)
    q = q._replace(true_rewards=rewards)
    det = rlhf.label_queries(jax.random.key(0), q, rlhf.Params())
    np.testing.assert_array_equal(det, [0.0, 0.5, 0.0])
    params = rlhf.Params(labels="bradley_terry", temperature=2.0)
    draws = jax.vmap(lambda k: rlhf.label_queries(k, q, params))(
        jax.random.split(jax.random.key(1), 20000)
    )
    expected = jax.nn.sigmoid(jnp.asarray([-1.0, 0.0, -1.0]) / 2.0)
    se = np.sqrt(expected * (1 - expected) / 20000)
    assert np.all(np.abs(draws.mean(0) - expected) < 5 * se)


@pytest.fixture(scope="module")
def runs():
    """Every method, 2 seeds, one call each (sobirl with the one_step estimator;
    the branch estimator runs in test_cli_deep.py)."""
    out = {}
    for method in ("sobirl", "drlhf", "two_stage", "oracle"):
        params = rlhf.Params(method=method, **SMALL)
        fn = jax.jit(jax.vmap(lambda k: rlhf.train(k, *ENV, params, PPO, ITERS)))  # noqa: B023
        out[method] = fn(jax.random.split(jax.random.key(0), 2))
    return out


def test_every_method_runs_and_counts_queries_and_steps(runs):
    Q = SMALL["queries_per_iteration"]
    expected_queries = {
        "sobirl": Q * np.arange(1, ITERS + 1),
        "drlhf": Q * np.arange(1, ITERS + 1),
        "two_stage": Q * np.minimum(np.arange(1, ITERS + 1), SMALL["stage_iterations"]),
        "oracle": np.zeros(ITERS),
    }
    for method, (state, metrics) in runs.items():
        assert np.all(metrics["finite"]), method
        np.testing.assert_array_equal(
            metrics["queries"], np.broadcast_to(expected_queries[method], (2, ITERS))
        )
        steps = PPO.batch_size * np.arange(1, ITERS + 1)
        np.testing.assert_array_equal(metrics["env_steps"][0], steps)
        assert np.all(
            (metrics["fresh_accuracy"] >= 0) & (metrics["fresh_accuracy"] <= 1)
        )
        assert int(state.buffer.count[0]) == expected_queries[method][-1]
    # Only SoBiRL has a score term; the seeds differ.
    assert np.all(runs["sobirl"][1]["score_norm"] > 0)
    assert np.all(runs["drlhf"][1]["score_norm"] == 0)
    rewards = runs["sobirl"][0].x
    leaf = jax.tree.leaves(rewards)[0]
    assert not np.allclose(leaf[0], leaf[1])


def test_storm_with_weight_one_is_plain_sobirl(runs):
    """eta = 1 drops STORM's correction: the run equals sobirl's (the fixture's)
    to float32 rounding — the two programs differ, so XLA may order a sum
    differently; a correction that leaked in would be O(1). STORM at eta < 1 runs
    in test_cli_deep.py."""
    params = rlhf.Params(method="sobirl", momentum="storm", momentum_weight=1.0,
                         **SMALL)  # fmt: skip
    fn = jax.jit(jax.vmap(lambda k: rlhf.train(k, *ENV, params, PPO, ITERS)))
    state, metrics = fn(jax.random.split(jax.random.key(0), 2))
    close = dict(rtol=1e-5, atol=1e-6)
    for name, value in runs["sobirl"][1].items():
        np.testing.assert_allclose(metrics[name], value, err_msg=name, **close)
    for a, b in zip(jax.tree.leaves(state.x), jax.tree.leaves(runs["sobirl"][0].x)):
        np.testing.assert_allclose(a, b, **close)


def test_two_stage_freezes_follower_then_reward(runs):
    state, metrics = runs["two_stage"]
    assert np.all(metrics["approx_kl"][:, : SMALL["stage_iterations"]] == 0)
    assert np.all(metrics["approx_kl"][:, SMALL["stage_iterations"] :] != 0)


def test_bad_input_is_named_before_compiling():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="fragment_length: 17 is longer"):
        rlhf.init(key, *ENV, rlhf.Params(fragment_length=17), PPO, 2)
    with pytest.raises(ValueError, match="queries_per_iteration"):
        rlhf.Params(queries_per_iteration=0)
    with pytest.raises(ValueError, match="Box action space"):
        rlhf.init(key, *envs.make("Pendulum-v1"), rlhf.Params(), PPO, 2)
    with pytest.raises(ValueError, match="stage_iterations"):
        rlhf.init(key, *ENV, rlhf.Params(method="two_stage", fragment_length=5), PPO, 2)
    with pytest.raises(ValueError, match="method: must be one of"):
        rlhf.Params(method="rlhf")
    with pytest.raises(ValueError, match="momentum: only method 'sobirl'"):
        rlhf.Params(method="drlhf", momentum="storm")


def test_a_nan_reward_model_is_flagged():
    params = rlhf.Params(method="drlhf", **SMALL)
    state = rlhf.init(jax.random.key(0), *ENV, params, PPO, 2)
    state = state._replace(x=jax.tree.map(lambda a: a * jnp.nan, state.x))
    step = jax.jit(lambda s: rlhf.step(s, jnp.asarray(0), *ENV, params, PPO))
    _, metrics = step(state)
    assert not bool(metrics["finite"])
