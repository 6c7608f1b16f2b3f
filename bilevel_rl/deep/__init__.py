"""The deep track: bilevel RL on gymnax environments with flax reward models.

* :mod:`~bilevel_rl.deep.envs`: gymnax environments by name; a tabular MDP as a
  gymnax environment (for exact cross-checks).
* :mod:`~bilevel_rl.deep.reward`: reward models ``r_x(obs) -> [A]``.
* :mod:`~bilevel_rl.deep.estimators`: Prop. 5.2 hyper-gradients of preference
  losses from fragments of gymnax rollouts (``branch`` / ``one_step``).

Needs the ``envs`` extra (``pip install "bilevel_rl[envs]"``: gymnax).
"""

from bilevel_rl.deep import envs, estimators, reward

__all__ = ["envs", "estimators", "reward"]
