"""Shared test configuration: float64 everywhere (gradient checks need it), and
derandomized hypothesis under ``CI``.

float32 behaviour is tested by passing explicit ``float32`` arrays; with x64 enabled
they stay float32.
"""

import os

import jax
import numpy as np
import pytest
from hypothesis import settings

jax.config.update("jax_enable_x64", True)

# The tests are compile-bound (tiny sizes, hundreds of distinct programs): XLA's CPU
# backend at optimization level 0 compiles them about twice as fast. Set before any
# backend starts, and inherited by the command-line and notebook subprocesses; the
# benchmark scripts (timed) run without it. A level given in XLA_FLAGS wins.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = " ".join(
        [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]
    ).strip()

# CI runs the property tests derandomized (a fixed seed): a red CI then means the
# code changed, not the draw. Locally they explore new examples on every run.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def random_P(rng: np.random.Generator, S: int, A: int, concentration=1.0):
    """``[S, A, S]`` Dirichlet transition tensor (numpy, float64)."""
    return rng.dirichlet(np.full(S, concentration), size=(S, A))


@pytest.fixture
def rng():
    return np.random.default_rng(0)
