"""Deep-track hyper-gradient estimators against the exact tabular answers.

A tabular MDP wrapped as a gymnax environment (one-hot observations) with the
tabular reward model ``r_x(s, a) = x[s, a]``: the ``branch(H)`` estimator's mean
must be :func:`exact_trajectory_hypergradient` truncated at ``H`` (whose distance
to the untruncated value is the estimator's bias), ``one_step``'s the ``H = 1``
truncation.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("gymnax")

from bilevel_rl.deep import envs, reward  # noqa: E402
from bilevel_rl.deep import estimators as deep  # noqa: E402
from bilevel_rl.estimators import exact_trajectory_hypergradient  # noqa: E402
from bilevel_rl.mdp import TabularMDP  # noqa: E402
from bilevel_rl.objectives import PreferenceData, rlhf_bce_loss  # noqa: E402

S, A, F, GAMMA, TAU = 3, 2, 2, 0.6, 0.7
D, E, KEYS = 8, 2, 3000


class Setup:
    def __init__(self):
        rng = np.random.default_rng(3)
        self.P = rng.dirichlet(np.ones(S), size=(S, A))
        self.mdp = TabularMDP.create(self.P, gamma=GAMMA, tau=TAU)
        self.true_reward = jnp.asarray(rng.normal(size=(S, A)))
        self.table = jnp.asarray(rng.normal(size=(S, A)))
        self.pi = jnp.asarray(rng.dirichlet(np.ones(A), size=S))
        self.env, self.env_params = envs.tabular_env(self.mdp, self.true_reward)
        self.model = reward.TabularReward(S, A)
        self.x = {"params": {"table": self.table}}
        log_pi = jnp.log(self.pi)
        self.policy_fn = lambda obs: obs @ log_pi

    def exact(self, H=None):
        """Prop. 5.2 by enumeration at ``pi`` (Jacobians truncated at ``H``)."""
        data = PreferenceData(None, self.true_reward, lambda _, x: x)
        return exact_trajectory_hypergradient(
            functools.partial(rlhf_bce_loss, data), lambda x: x, self.table,
            self.mdp, horizon=F, num_trajectories=2, policy=self.pi,
            rollout_length=H,
        )  # fmt: skip

    def queries(self, key, num=D):
        """``num`` pairs of fragments from the reset distribution, soft labels
        from the true reward (as ``rlhf_bce_loss``)."""

        def fragment(k):
            k_reset, k_roll = jax.random.split(k)
            obs, state = self.env.reset(k_reset, self.env_params)
            return deep.rollout(
                k_roll, self.env, self.env_params, self.policy_fn, state, obs, F
            )

        frags = jax.vmap(fragment)(jax.random.split(key, 2 * num))
        frags = jax.tree.map(lambda a: a.reshape((num, 2) + a.shape[1:]), frags)
        returns = frags.true_rewards.sum(-1)
        return frags, jax.nn.sigmoid(returns[:, 0] - returns[:, 1])

    def estimate(self, key, estimator, H=1, **kwargs):
        k_frag, k_branch = jax.random.split(key)
        queries, labels = self.queries(k_frag)
        branches = None
        if estimator == "branch":
            branches = deep.branch(
                k_branch, self.env, self.env_params, self.policy_fn, queries,
                num_rollouts=E, length=H,
            )  # fmt: skip
        grad, metrics = deep.hypergradient(
            self.model.apply, self.x, queries, labels, gamma=GAMMA, tau=TAU,
            estimator=estimator, branches=branches, policy_fn=self.policy_fn,
            **kwargs,
        )  # fmt: skip
        return grad["params"]["table"], metrics


@pytest.fixture(scope="module")
def setup():
    return Setup()


@pytest.mark.parametrize(
    "estimator, H, baseline",
    [("one_step", 1, "leave_one_out"), ("branch", 1, "none"),
     ("branch", 3, "leave_one_out")],
)  # fmt: skip
def test_estimator_mean_is_the_truncated_exact_hypergradient(
    setup, estimator, H, baseline
):
    draws = jax.jit(
        jax.vmap(lambda k: setup.estimate(k, estimator, H, baseline=baseline)[0])
    )(jax.random.split(jax.random.key(0), KEYS))
    draws = np.asarray(draws)
    mean = draws.mean(0)
    se = draws.std(0, ddof=1) / np.sqrt(KEYS)
    z = np.abs(mean - np.asarray(setup.exact(H))) / se
    assert z.max() < 5, (z, se)
    # The estimate is not trivially exact: it has variance.
    assert se.min() > 1e-4


def test_truncation_bias_decays_like_gamma_times_lambda2(setup):
    # Bias of branch(H) = ||exact_H - exact||: fitted rate (gamma |lambda_2(P_pi)|)^H,
    # at least as fast as gamma^H; one_step's (H = 1) bias is not small.
    full = np.asarray(setup.exact())
    H = np.arange(1, 9)
    bias = np.array([np.linalg.norm(np.asarray(setup.exact(h)) - full) for h in H])
    slope = np.polyfit(H, np.log(bias), 1)[0]
    P_pi = np.einsum("sa,sat->st", np.asarray(setup.pi), setup.P)
    lambda2 = np.sort(np.abs(np.linalg.eigvals(P_pi)))[-2]
    assert slope <= np.log(GAMMA)
    assert abs(slope - np.log(GAMMA * lambda2)) < 0.05, (slope, lambda2)
    assert bias[0] / np.linalg.norm(full) > 0.01  # one_step: > 1% off


def test_terms_scale_with_coef_and_normalization(setup):
    key = jax.random.key(1)
    estimate = jax.jit(
        lambda c, n: setup.estimate(key, "branch", 2, coef=c, normalize=n)[0],
        static_argnums=1,
    )
    grads = {(c, n): estimate(c, n) for c in (0.0, 1.0, 2.0) for n in (False, True)}
    # coef 0: only (12), the gradient of the mean loss.
    queries, labels = setup.queries(jax.random.split(key)[0])

    def mean_loss(table):
        x = {"params": {"table": table}}
        losses = jax.vmap(deep.preference_loss, (None, None, 0, 0))(
            setup.model.apply, x, queries, labels
        )
        return losses.mean()

    exploit = jax.grad(mean_loss)(setup.table)
    np.testing.assert_allclose(grads[0.0, False], exploit, rtol=1e-12, atol=1e-15)
    explore = grads[1.0, False] - exploit
    assert np.linalg.norm(explore) > 1e-3
    np.testing.assert_allclose(grads[2.0, False] - exploit, 2 * explore, rtol=1e-12)
    # Every step valid: normalization divides each query's score by 2F.
    np.testing.assert_allclose(
        grads[1.0, True] - exploit, explore / (2 * F), rtol=1e-12, atol=1e-15
    )


def test_rollout_stops_at_the_episode_end(setup):
    env, params = envs.tabular_env(setup.mdp, setup.true_reward, max_steps_in_episode=2)
    obs, state = env.reset(jax.random.key(0), params)
    frag = deep.rollout(
        jax.random.key(1), env, params, setup.policy_fn, state, obs, 4, first_action=1
    )
    assert frag.mask.tolist() == [True, True, False, False]
    assert int(frag.actions[0]) == 1
    np.testing.assert_array_equal(frag.true_rewards[2:], 0.0)
    s = frag.env_states.state
    np.testing.assert_array_equal(frag.obs, jax.nn.one_hot(s, S))
    reward_taken = setup.true_reward[s[:2], frag.actions[:2]]
    np.testing.assert_array_equal(frag.true_rewards[:2], reward_taken)


def test_bad_input_is_named(setup):
    with pytest.raises(ValueError, match="env: unknown environment 'Breakout'"):
        envs.make("Breakout")
    with pytest.raises(ValueError, match="env_params: .* no parameter"):
        envs.make("CartPole-v1", bogus=1)
    env, params = envs.make("Pendulum-v1")
    with pytest.raises(ValueError, match="Pendulum.* Box action space"):
        envs.num_discrete_actions(env, params)
    assert envs.num_discrete_actions(*envs.make("Breakout-MinAtar")) == 3
    with pytest.raises(ValueError, match=r"reward: expected \[S, A\]"):
        envs.tabular_env(setup.mdp, jnp.zeros((S, A + 1)))
    queries, labels = setup.queries(jax.random.key(0), num=2)
    common = dict(gamma=GAMMA, tau=TAU, policy_fn=setup.policy_fn)
    apply, x = setup.model.apply, setup.x
    cases = [
        (dict(estimator="two_step"), "estimator: must be one of"),
        (dict(baseline="mean"), "baseline: must be"),
        (dict(estimator="branch"), "branches: the 'branch' estimator needs"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            deep.hypergradient(apply, x, queries, labels, **common, **kwargs)
    with pytest.raises(ValueError, match=r"labels: expected shape \[D\]"):
        deep.hypergradient(apply, x, queries, labels[:1], **common)
    one = jax.tree.map(lambda a: a[:1], queries)
    with pytest.raises(ValueError, match="needs D >= 2"):
        deep.hypergradient(apply, x, one, labels[:1], **common)
    with pytest.raises(ValueError, match=r"queries: expected fields \[D, 2, F\]"):
        bad = jax.tree.map(lambda a: a[:, :1], queries)
        deep.hypergradient(apply, x, bad, labels, **common)
