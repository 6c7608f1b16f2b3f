"""Bilevel algorithms, one module each, on one API (DESIGN.md).

Each module exposes ``make(...) -> Solver(init, step)``; :func:`run` scans ``step``
inside one ``jit`` and ``vmap``s (and shards) over a batch of problems and seeds.

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
    parl,
    pbrl,
    sobirl,
    stoc_sobirl,
)
from bilevel_rl.algorithms.base import Solver
from bilevel_rl.algorithms.runner import Progress, diverged_at, run

__all__ = [
    "Progress",
    "Solver",
    "aihf",
    "diverged_at",
    "drlhf",
    "exact",
    "hpgd",
    "m_sobirl",
    "parl",
    "pbrl",
    "run",
    "sobirl",
    "stoc_sobirl",
]
