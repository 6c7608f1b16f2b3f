"""Shared test configuration: float64 everywhere (gradient checks need it).

float32 behaviour is tested by passing explicit ``float32`` arrays; with x64 enabled
they stay float32.
"""

import jax
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)


def random_P(rng: np.random.Generator, S: int, A: int, concentration=1.0):
    """``[S, A, S]`` Dirichlet transition tensor (numpy, float64)."""
    return rng.dirichlet(np.full(S, concentration), size=(S, A))


@pytest.fixture
def rng():
    return np.random.default_rng(0)
