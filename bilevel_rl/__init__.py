"""bilevel_rl: batched, jitted soft MDP solvers and hyper-gradients for bilevel RL."""

from bilevel_rl import (
    algorithms,
    alignment,
    estimators,
    objectives,
    rewards,
    sampling,
    suites,
)
from bilevel_rl.batched import solve_batch
from bilevel_rl.hypergrad import (
    HYPERGRADIENT_METHODS,
    hypergradient,
    q_value_jacobian,
    value_and_hypergradient,
    value_jacobian,
)
from bilevel_rl.implicit import (
    adjoint_weights,
    soft_optimal_policy,
    soft_optimal_solution,
)
from bilevel_rl.mdp import TabularMDP, broadcast, stack, unstack
from bilevel_rl.problem import BilevelProblem
from bilevel_rl.sampling import rollout
from bilevel_rl.soft import (
    SoftSolution,
    occupancy_measure,
    policy_mirror_descent_step,
    soft_bellman_operator,
    soft_max,
    soft_policy,
    soft_policy_evaluation,
    soft_q,
    soft_value_iteration,
    soft_value_iteration_unrolled,
)

__version__ = "0.1.0"

__all__ = [
    "HYPERGRADIENT_METHODS",
    "adjoint_weights",
    "hypergradient",
    "q_value_jacobian",
    "soft_optimal_policy",
    "soft_optimal_solution",
    "value_and_hypergradient",
    "value_jacobian",
    "BilevelProblem",
    "SoftSolution",
    "TabularMDP",
    "__version__",
    "algorithms",
    "alignment",
    "broadcast",
    "estimators",
    "experiment",
    "objectives",
    "occupancy_measure",
    "policy_mirror_descent_step",
    "rewards",
    "rollout",
    "sampling",
    "soft_bellman_operator",
    "soft_max",
    "soft_policy",
    "soft_policy_evaluation",
    "soft_q",
    "soft_value_iteration",
    "soft_value_iteration_unrolled",
    "solve_batch",
    "stack",
    "suites",
    "unstack",
]


def __getattr__(name):
    # The experiment layer (runner, configuration, checkpoints) loads on first use,
    # so that importing the algorithms does not import checkpoint or CLI code.
    if name == "experiment":
        import importlib

        return importlib.import_module("bilevel_rl.experiment")
    raise AttributeError(f"module 'bilevel_rl' has no attribute {name!r}")
