"""Type aliases used across the package."""

from typing import Any

import jax

Array = jax.Array
PRNGKey = jax.Array
PyTree = Any

__all__ = ["Array", "PRNGKey", "PyTree"]
