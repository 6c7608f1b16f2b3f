"""Problem generators (docs/math.md §9).

Every stochastic generator takes a ``jax.Array`` PRNG key as its first argument, is
pure JAX with static sizes, jits, and ``jax.vmap``-s over a batch of keys::

    keys = jax.random.split(jax.random.key(0), 1000)
    mdps = jax.vmap(lambda k: garnet_mdp(k, 20, 4, 3))(keys)   # P: [1000, 20, 4, 20]
    problems = jax.vmap(sobirl_synthetic)(keys)                 # a batched problem

The deterministic generators (:func:`chain_mdp`, :func:`gridworld_mdp`,
:func:`four_rooms`, :func:`four_rooms_problem`) accept and ignore a key for the same
signature. Generators build ``TabularMDP`` with the plain constructor (valid by
construction, no validation inside ``jit``).
"""

from bilevel_rl.suites.bandit import aihf_gaussian_reward, bandit_mdp
from bilevel_rl.suites.gridworlds import (
    FOUR_ROOMS_LAYOUT,
    chain_mdp,
    four_rooms,
    four_rooms_cells,
    four_rooms_problem,
    four_rooms_reward,
    four_rooms_state,
    gridworld_mdp,
)
from bilevel_rl.suites.random_mdps import (
    RewardFeatures,
    dirichlet_mdp,
    garnet_mdp,
    random_mdp,
    random_reward_features,
)
from bilevel_rl.suites.rlhf import (
    RLHFSuiteData,
    alignment_problem,
    held_out_pairs,
    preference_accuracy,
    rlhf_alignment_data,
    tabular_rlhf_problem,
)
from bilevel_rl.suites.shaping import ShapingSuiteData, shaping_problem
from bilevel_rl.suites.sobirl import (
    SoBiRLData,
    sobirl_synthetic,
    sobirl_synthetic_from_arrays,
    sobirl_transitions,
)

__all__ = [
    "FOUR_ROOMS_LAYOUT",
    "RLHFSuiteData",
    "RewardFeatures",
    "ShapingSuiteData",
    "SoBiRLData",
    "aihf_gaussian_reward",
    "alignment_problem",
    "bandit_mdp",
    "chain_mdp",
    "dirichlet_mdp",
    "four_rooms",
    "four_rooms_cells",
    "four_rooms_problem",
    "four_rooms_reward",
    "four_rooms_state",
    "garnet_mdp",
    "gridworld_mdp",
    "held_out_pairs",
    "preference_accuracy",
    "random_mdp",
    "random_reward_features",
    "rlhf_alignment_data",
    "shaping_problem",
    "sobirl_synthetic",
    "sobirl_synthetic_from_arrays",
    "sobirl_transitions",
    "tabular_rlhf_problem",
]
