"""The PPO follower (bilevel_rl.deep.ppo): soft GAE against NumPy, the entropy term
inside the return, stored states that replay their steps, a short CartPole training
of two vmapped seeds, and the validation errors."""

import dataclasses

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilevel_rl.deep import ppo

TAU = 0.5


def numpy_gae(reward, value, next_value, terminated, truncated, gamma, lam):
    """``A_t = sum_k (gamma lam)^k delta_{t+k}`` up to the end of ``t``'s episode
    (or of the rollout), written as explicit sums rather than a recursion."""
    reward, value, next_value = (
        np.asarray(x, np.float64) for x in (reward, value, next_value)
    )
    terminated, truncated = np.asarray(terminated), np.asarray(truncated)
    T, N = reward.shape
    delta = reward + gamma * (1.0 - terminated) * next_value - value
    adv = np.zeros((T, N))
    for i in range(N):
        for t in range(T):
            for k in range(T - t):
                adv[t, i] += (gamma * lam) ** k * delta[t + k, i]
                if terminated[t + k, i] or truncated[t + k, i]:
                    break
    return adv, adv + value


@pytest.fixture(scope="module")
def cartpole():
    return gymnax.make("CartPole-v1")


@pytest.fixture(scope="module")
def short_episodes(cartpole):
    """A jitted rollout of 4 CartPoles truncated at 15 steps (so episodes end by
    termination and by truncation), optimizing ``obs[:, 0] + action``."""
    env, env_params = cartpole
    env_params = env_params.replace(max_steps_in_episode=15)
    params = ppo.Params(
        num_envs=4, num_steps=32, num_minibatches=2, tau=TAU, anneal_lr=False
    )

    def reward_fn(obs, action):
        return obs[:, 0] + action

    state = ppo.init(jax.random.key(1), env, env_params, params)
    roll = jax.jit(lambda s: ppo.rollout(s, env, env_params, params, reward_fn))
    after, ro = roll(state)
    return env, env_params, params, state, after, ro


def test_gae_matches_numpy_on_a_hand_made_rollout():
    rng = np.random.default_rng(0)
    T, N = 7, 3
    reward, value, next_value = rng.normal(size=(3, T, N)).astype(np.float32)
    terminated = np.zeros((T, N), bool)
    truncated = np.zeros((T, N), bool)
    terminated[2, 0] = terminated[5, 1] = True
    truncated[3, 1] = truncated[6, 2] = truncated[1, 0] = True
    log_prob = np.log(rng.uniform(0.1, 1.0, size=(T, N))).astype(np.float32)
    ro = ppo.Rollout(
        obs=None, action=None, log_prob=jnp.asarray(log_prob), value=jnp.asarray(value),
        next_value=jnp.asarray(next_value), reward=jnp.asarray(reward),
        true_reward=None, terminated=jnp.asarray(terminated),
        truncated=jnp.asarray(truncated), episode_return=None, env_state=None,
        step_key=None,
    )  # fmt: skip
    params = ppo.Params(gamma=0.9, gae_lambda=0.8, tau=TAU, soft=True)
    adv, target = ppo.advantages(ro, params)
    want_adv, want_target = numpy_gae(
        reward - TAU * log_prob, value, next_value, terminated, truncated, 0.9, 0.8
    )
    np.testing.assert_allclose(adv, want_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(target, want_target, rtol=1e-5, atol=1e-5)
    assert adv.dtype == jnp.float32
    # plain PPO: the reward alone
    adv, _ = ppo.advantages(ro, dataclasses.replace(params, soft=False))
    want_adv, _ = numpy_gae(reward, value, next_value, terminated, truncated, 0.9, 0.8)
    np.testing.assert_allclose(adv, want_adv, rtol=1e-5, atol=1e-5)


def test_soft_return_adds_minus_tau_log_pi_of_the_acting_policy(short_episodes):
    env, env_params, params, state, _, ro = short_episodes
    T, N = params.num_steps, params.num_envs
    # log_prob is log pi(a_t | obs_t) of the policy that acted
    log_pi = jax.vmap(lambda o: ppo.policy(state, o))(ro.obs)
    assert log_pi.shape == (T, N, 2)
    np.testing.assert_allclose(jnp.exp(log_pi).sum(-1), 1.0, rtol=1e-5)
    taken = jnp.take_along_axis(log_pi, ro.action[..., None], -1)[..., 0]
    np.testing.assert_allclose(ro.log_prob, taken, rtol=1e-5, atol=1e-6)
    # the reward is reward_fn(obs_t, a_t); the true reward CartPole's 1 per step
    np.testing.assert_allclose(ro.reward, ro.obs[..., 0] + ro.action, rtol=1e-6)
    np.testing.assert_array_equal(ro.true_reward, 1.0)
    # the return's reward is r - tau log pi, exactly
    soft = ppo.soft_rewards(ro, params)
    np.testing.assert_array_equal(soft, ro.reward - TAU * ro.log_prob)
    plain = dataclasses.replace(params, soft=False)
    np.testing.assert_array_equal(ppo.soft_rewards(ro, plain), ro.reward)
    args = (ro.value, ro.next_value, ro.terminated, ro.truncated, 0.99, 0.95)
    for p, r in ((params, soft), (plain, ro.reward)):
        adv, _ = ppo.advantages(ro, p)
        np.testing.assert_allclose(adv, numpy_gae(r, *args)[0], rtol=1e-4, atol=1e-4)


def test_stored_states_and_keys_replay_every_step(short_episodes):
    env, env_params, params, state, after, ro = short_episodes
    assert ro.terminated.any() and ro.truncated.any()  # both kinds of episode end
    step = jax.vmap(jax.vmap(env.step, in_axes=(0, 0, 0, None)), (0, 0, 0, None))
    obs, _, reward, terminated, truncated, info = step(
        ro.step_key, ro.env_state, ro.action, env_params
    )
    # the same computation compiled elsewhere: equal up to the last bits
    np.testing.assert_allclose(obs[:-1], ro.obs[1:], rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(obs[-1], after.obs, rtol=1e-6, atol=1e-12)
    np.testing.assert_array_equal(reward, ro.true_reward)
    np.testing.assert_array_equal(terminated, ro.terminated)
    np.testing.assert_array_equal(truncated, ro.truncated)
    np.testing.assert_array_equal(ro.env_state.time[0], state.env_state.time)
    # next_value is the critic at the REAL next observation: the episode's last
    # one where it ended (not the reset observation), else obs_{t+1}
    final = info["final_observation"]
    apply = state.train_state.apply_fn
    _, value = jax.vmap(lambda o: apply(state.train_state.params, o))(final)
    np.testing.assert_allclose(ro.next_value, value, rtol=1e-5, atol=1e-6)
    done = np.asarray(ro.terminated | ro.truncated)
    assert not np.allclose(np.asarray(final)[done], np.asarray(obs)[done])
    live = ~done[:-1]
    np.testing.assert_allclose(ro.next_value[:-1][live], ro.value[1:][live], rtol=1e-5)
    # the running true returns: CartPole pays 1 per step, so a return is a length
    ended = np.asarray(ro.episode_return)[done]
    assert (ended >= 1).all() and (ended <= 15).all()
    np.testing.assert_array_equal(after.episodes, done.sum(0))


@pytest.fixture(scope="module")
def cartpole_training(cartpole):
    """Two seeds of 60 updates of 16 x 32 steps (30,720 steps each), vmapped."""
    env, env_params = cartpole
    params = ppo.Params(
        num_envs=16,
        num_steps=32,
        num_minibatches=4,
        learning_rate=2.5e-3,
        activation="tanh",
    )
    run = jax.jit(jax.vmap(lambda k: ppo.train(k, env, env_params, params, 60)))
    return params, run(jax.random.split(jax.random.key(0), 2))


def test_cartpole_training_beats_the_random_policy_on_both_seeds(cartpole_training):
    params, (state, metrics) = cartpole_training
    assert metrics["entropy"].shape == (2, 60)
    assert metrics["entropy"].dtype == jnp.float32  # float32 under x64 too
    np.testing.assert_array_equal(metrics["env_steps"][:, -1], 60 * 16 * 32)
    assert np.isfinite(np.asarray(metrics["loss"])).all()
    count = np.asarray(metrics["episode_count"], np.float64)
    total = np.asarray(metrics["episode_return_sum"], np.float64)
    first = total[:, :3].sum(1) / count[:, :3].sum(1)  # about the random policy
    last = total[:, -10:].sum(1) / np.maximum(count[:, -10:].sum(1), 1)
    assert (first < 40).all(), first  # random CartPole: about 22 steps
    assert (last > 100).all(), (first, last)
    assert (np.asarray(metrics["mean_return"])[:, -1] > 75).all()
    # the policy sharpened; the step size annealed to lr / num_updates
    assert (metrics["entropy"][:, -1] < metrics["entropy"][:, 0]).all()
    np.testing.assert_allclose(metrics["learning_rate"][:, -1], 2.5e-3 / 60, rtol=1e-5)
    assert state.update.tolist() == [60, 60]


def test_invalid_options_and_environments_raise_naming_them(cartpole):
    with pytest.raises(ValueError, match="num_envs \\* num_steps.*num_minibatches"):
        ppo.Params(num_envs=3, num_steps=5, num_minibatches=4)
    with pytest.raises(ValueError, match="gamma"):
        ppo.Params(gamma=1.5)
    with pytest.raises(ValueError, match="gae_lambda"):
        ppo.Params(gae_lambda=-0.1)
    with pytest.raises(ValueError, match="hidden"):
        ppo.Params(hidden=())
    with pytest.raises(ValueError, match="tau"):
        ppo.Params(tau=-1.0)
    with pytest.raises(TypeError, match="soft"):
        ppo.Params(soft=1)
    env, env_params = gymnax.make("Pendulum-v1")  # a Box (continuous) action space
    params = ppo.Params(num_envs=2, num_steps=2, num_minibatches=1)
    with pytest.raises(ValueError, match="Pendulum-v1.*Box.*Discrete"):
        ppo.init(jax.random.key(0), env, env_params, params, num_updates=1)
    with pytest.raises(ValueError, match="Pendulum-v1"):
        ppo.train(jax.random.key(0), env, env_params, params, 1)
    env, env_params = cartpole
    with pytest.raises(ValueError, match="num_updates"):
        ppo.init(jax.random.key(0), env, env_params, params)
    with pytest.raises(ValueError, match="num_updates"):
        ppo.train(jax.random.key(0), env, env_params, params, 0)


def test_update_improves_the_clipped_objective_on_its_batch(short_episodes):
    """One update on a fixed rollout moves the policy (finite, non-zero steps) and
    keeps the environments and counters where the rollout left them."""
    env, env_params, params, _, after, ro = short_episodes
    new, metrics = jax.jit(lambda s, r: ppo.update(s, r, params))(after, ro)
    assert new.update == after.update + 1
    assert new.train_state.step == params.update_epochs * params.num_minibatches
    np.testing.assert_array_equal(new.obs, after.obs)
    assert all(np.isfinite(v) for v in metrics.values())
    assert metrics["approx_kl"] > 0
    moved = jax.tree.map(
        lambda a, b: jnp.abs(a - b).max(),
        new.train_state.params,
        after.train_state.params,
    )
    assert max(jax.tree.leaves(moved)) > 0


def test_orthogonal_init_is_orthonormal_under_jit_and_vmap():
    """The LAPACK-free orthogonal initializer (jaxlib's batched QR can deadlock a
    vmapped init on CPU): scaled orthonormal columns (rows when wide), new per key."""
    keys = jax.random.split(jax.random.key(0), 3)
    for shape, gain in (((400, 64), 2**0.5), ((64, 6), 0.01), ((4, 64), 1.0)):
        w = jax.jit(jax.vmap(lambda k: ppo.orthogonal(gain)(k, shape)))(keys)
        assert w.shape == (3, *shape) and w.dtype == jnp.float32
        gram = w.mT @ w if shape[0] >= shape[1] else w @ w.mT
        eye = np.broadcast_to(np.eye(min(shape)), gram.shape)
        np.testing.assert_allclose(gram / gain**2, eye, atol=1e-5)
        assert not np.allclose(w[0], w[1])
