"""The deep track: bilevel RL on gymnax environments with flax reward models.

* :mod:`~bilevel_rl.deep.envs`: gymnax environments by name; a tabular MDP as a
  gymnax environment (for exact cross-checks).
* :mod:`~bilevel_rl.deep.reward`: reward models ``r_x(obs) -> [A]``.
* :mod:`~bilevel_rl.deep.estimators`: Prop. 5.2 hyper-gradients of preference
  losses from fragments of gymnax rollouts (``branch`` / ``one_step``).
* :mod:`~bilevel_rl.deep.ppo`: the follower, soft (or entropy-bonus) PPO, jitted
  end to end, seeds vmapped.
* :mod:`~bilevel_rl.deep.rlhf`: the online preference loop (deep SoBiRL, DRLHF,
  two-stage RLHF, the oracle) on one jitted state.

Needs the ``envs`` extra (``pip install "bilevel_rl[envs]"``: gymnax).
"""

from bilevel_rl.deep import envs, estimators, ppo, reward, rlhf

__all__ = ["envs", "estimators", "ppo", "reward", "rlhf"]
