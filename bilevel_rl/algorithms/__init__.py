"""Bilevel algorithms, one module each, on one protocol (docs/algorithms.md).

Each module exports ``Params`` (a frozen dataclass of its options, with defaults,
one line of help and validation), ``NEEDS`` (what a problem must provide),
``estimator(params) -> Estimator`` and ``make(**options) -> Solver``, the one-call
entry: :func:`~bilevel_rl.algorithms.base.make_solver` composes the estimator with
the leader's optax update. :func:`bilevel_rl.experiment.run` runs a solver.

========================  =============================================  ==========
module                    algorithm                                      stochastic
========================  =============================================  ==========
:mod:`.exact`             hyper-gradient descent with the exact §2 grad  no
:mod:`.m_sobirl`          M-SoBiRL (SoBiRL paper, Algorithm 2)           no
:mod:`.sobirl`            SoBiRL (Algorithm 1), sampled outer tuples     yes
:mod:`.stoc_sobirl`       Stoc-SoBiRL (Algorithms 3-4), STORM momentum   yes
:mod:`.parl`              A-PARL (Chakraborty et al.), HVP + CG          optional
:mod:`.aihf`              AIHF (Li et al., Algorithm 1, Lemma 5.1)       optional
:mod:`.pbrl`              PBRL value penalty (Shen et al. 2024)          no
:mod:`.hpgd`              HPGD hyper-policy gradient (Thoma et al. 2024) yes
:mod:`.drlhf`             DRLHF alternating BT reward / policy steps     no
========================  =============================================  ==========
"""

from bilevel_rl.algorithms import (
    aihf,
    drlhf,
    exact,
    hpgd,
    m_sobirl,
    momentum,
    parl,
    pbrl,
    sobirl,
    stoc_sobirl,
)
from bilevel_rl.algorithms.base import (
    COMMON_METRICS,
    EXACT_METRICS,
    Solver,
    SolverState,
    make_solver,
)
from bilevel_rl.algorithms.params import Optimizer
from bilevel_rl.types import Estimator

__all__ = [
    "COMMON_METRICS",
    "EXACT_METRICS",
    "Estimator",
    "Optimizer",
    "Solver",
    "SolverState",
    "aihf",
    "drlhf",
    "exact",
    "hpgd",
    "m_sobirl",
    "make_solver",
    "momentum",
    "parl",
    "pbrl",
    "sobirl",
    "stoc_sobirl",
]


def __getattr__(name):
    # Deprecated: the runner moved to the experiment layer.
    if name in ("run", "diverged_at", "Progress"):
        import warnings

        from bilevel_rl import experiment

        warnings.warn(
            f"bilevel_rl.algorithms.{name} moved to bilevel_rl.experiment.{name}",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(experiment, name)
    raise AttributeError(f"module 'bilevel_rl.algorithms' has no attribute {name!r}")
