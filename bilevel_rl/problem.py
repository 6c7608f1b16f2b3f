"""A bilevel problem instance as one batchable pytree.

The leader's reward model and upper objective are plain functions of explicit data,
``reward_fn(data, x) -> [S, A]`` and ``upper(data, x, policy) -> []``, so that a batch
of problems (a leading axis on ``mdp``, ``data`` and ``x0``) can be ``jax.vmap``-ed.
The functions themselves are static (``pytree_node=False``): they must be hashable
module-level functions (or ``functools.partial`` of them) so that ``jit`` caches.

For the single-instance API of :func:`bilevel_rl.hypergradient`, which takes
``reward_fn(x)`` and ``upper(x, policy)``, use :meth:`BilevelProblem.bind`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
from flax import struct

from bilevel_rl.mdp import TabularMDP
from bilevel_rl.types import Array, PyTree


@struct.dataclass
class BilevelProblem:
    """``min_x f(data, x, pi*_x)``, ``pi*_x`` soft-optimal for ``reward_fn(data, x)``.

    Attributes:
        mdp: the follower's MDP (``P: [S, A, S]``, or ``[B, S, A, S]`` for a batch).
        data: pytree of arrays the reward model and the upper objective read (e.g.
            features, the SoBiRL matrix ``M``); batched like ``mdp``. A function
            that needs the MDP reads ``data.mdp``: a ``data`` whose ``mdp`` field is
            ``None`` receives ``mdp`` there when the functions are called
            (:meth:`bound_data`), so the batch holds ``P`` once.
        x0: initial leader variable (any pytree of arrays).
        reward_fn: ``reward_fn(data, x) -> [S, A]`` (static).
        upper: ``upper(data, x, policy) -> []`` upper objective ``f`` (static).
        optimum: known optimal value of ``f`` (``nan`` if unknown); batched like
            ``mdp``.
        trajectory_loss: for the model-free algorithms (SoBiRL, Stoc-SoBiRL), the
            loss ``l(data, x, trajs) -> []`` of one tuple of ``num_trajectories``
            trajectories of ``horizon`` steps (``trajs`` fields ``[m, H]``), with
            ``upper(data, x, pi) = E_{xi ~ rho(pi)}[l(data, x, xi)]`` (docs/math.md §4);
            ``None`` when the problem has no trajectory form (static).
        horizon: ``H`` of the trajectory loss (static).
        num_trajectories: ``m`` trajectories per tuple (static).
    """

    mdp: TabularMDP
    data: PyTree
    x0: PyTree
    reward_fn: Callable[[Any, PyTree], Array] = struct.field(pytree_node=False)
    upper: Callable[[Any, PyTree, Array], Array] = struct.field(pytree_node=False)
    optimum: Array = struct.field(default_factory=lambda: jnp.asarray(jnp.nan))
    trajectory_loss: Callable[[Any, PyTree, Any], Array] | None = struct.field(
        pytree_node=False, default=None
    )
    horizon: int = struct.field(pytree_node=False, default=0)
    num_trajectories: int = struct.field(pytree_node=False, default=1)

    def bound_data(self) -> PyTree:
        """``data`` as the functions see it: a ``data`` with an ``mdp`` field left
        ``None`` receives this problem's MDP there (so a batch stores ``P`` once)."""
        if getattr(self.data, "mdp", False) is None:
            return self.data.replace(mdp=self.mdp)
        return self.data

    def reward(self, x: PyTree) -> Array:
        """``[S, A]`` reward of leader variable ``x``."""
        return self.reward_fn(self.bound_data(), x)

    def objective(self, x: PyTree, policy: Array) -> Array:
        """Upper objective ``f(x, policy)``; ``[]``."""
        return self.upper(self.bound_data(), x, policy)

    def bind(self):
        """Returns ``(reward_fn(x), upper(x, policy))`` closures for one instance."""
        return self.reward, self.objective

    def loss(self, x: PyTree, trajs) -> Array:
        """Trajectory loss ``l(xi; x)`` of one tuple (needs ``trajectory_loss``)."""
        return self.trajectory_loss(self.bound_data(), x, trajs)
