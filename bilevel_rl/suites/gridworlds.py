"""Chains, gridworlds and the Four-Rooms incentive-design problem (docs/math.md §9).

All three share one slip model: the intended move happens with probability
``1 - slip`` and each of the other ``A - 1`` moves with probability
``slip / (A - 1)``; a move into a wall or off the grid leaves the agent in place.
The layouts are static (built with numpy at trace time); ``slip``, ``gamma`` and
``tau`` may be traced, so the generators jit and ``jax.vmap`` (over keys, or over
these parameters). Their key argument is accepted for the uniform generator
signature and is not used: the MDPs are deterministic functions of the arguments.

Grid actions: ``0 = up, 1 = right, 2 = down, 3 = left`` (row index grows downward).
States are the free cells in row-major order.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from bilevel_rl.mdp import TabularMDP
from bilevel_rl.objectives import IncentiveData, incentive_design
from bilevel_rl.problem import BilevelProblem
from bilevel_rl.rewards import state_incentive_reward
from bilevel_rl.suites.checks import check_number, check_size, check_transition_size
from bilevel_rl.suites.random_mdps import float_dtype, make_mdp
from bilevel_rl.types import Array, PRNGKey

__all__ = [
    "FOUR_ROOMS_LAYOUT",
    "chain_mdp",
    "four_rooms",
    "four_rooms_cells",
    "four_rooms_problem",
    "four_rooms_reward",
    "four_rooms_state",
    "gridworld_mdp",
]

GRID_MOVES = ((-1, 0), (0, 1), (1, 0), (0, -1))
"""``(d_row, d_col)`` of the grid actions up, right, down, left."""

FOUR_ROOMS_LAYOUT = (
    "#############",
    "#     #     #",
    "#     #     #",
    "#           #",
    "#     #     #",
    "#     #     #",
    "## ####     #",
    "#     ### ###",
    "#     #     #",
    "#     #     #",
    "#           #",
    "#     #     #",
    "#############",
)
"""The classic 13x13 Four-Rooms map (Sutton, Precup, Singh 1999): ``#`` is a wall.

104 free cells; hallways at ``(3, 6)``, ``(6, 2)``, ``(7, 9)`` and ``(10, 6)``.
"""


def _slippery(moves: np.ndarray, slip) -> Array:
    """``P[s, a] = (1 - slip) T_a[s] + slip / (A - 1) sum_{b != a} T_b[s]``.

    Args:
        moves: ``[S, A, S]`` numpy one-hot deterministic transitions ``T``.
        slip: probability of not taking the intended move (may be traced).

    Returns:
        ``[S, A, S]`` transition probabilities (``moves`` itself when ``A = 1``).
    """
    A = moves.shape[1]
    if A == 1:
        return jnp.asarray(moves)
    others = moves.sum(axis=1, keepdims=True) - moves  # sum over b != a
    return (1.0 - slip) * moves + (slip / (A - 1)) * others


def _grid_moves(free: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic moves on a grid with walls.

    Args:
        free: ``[H, W]`` bool, ``True`` for free cells.

    Returns:
        ``(moves, cells)``: ``moves`` ``[S, 4, S]`` one-hot numpy transitions over
        the ``S`` free cells (row-major), ``cells`` ``[S, 2]`` their ``(row, col)``.
    """
    cells = np.argwhere(free)
    index = -np.ones(free.shape, dtype=int)
    index[tuple(cells.T)] = np.arange(len(cells))
    H, W = free.shape
    moves = np.zeros((len(cells), len(GRID_MOVES), len(cells)))
    for s, (r, c) in enumerate(cells):
        for a, (dr, dc) in enumerate(GRID_MOVES):
            r2, c2 = r + dr, c + dc
            inside = 0 <= r2 < H and 0 <= c2 < W
            moves[s, a, index[r2, c2] if inside and free[r2, c2] else s] = 1.0
    return moves, cells


def chain_mdp(
    key: PRNGKey | None,
    num_states: int,
    *,
    slip: float = 0.1,
    gamma: float = 0.9,
    tau: float = 1.0,
    dtype=None,
) -> TabularMDP:
    """A chain of ``S`` states with actions ``0 = left``, ``1 = right``.

    The intended move happens with probability ``1 - slip``, the opposite one with
    probability ``slip``; moving past either end stays in place. ``rho`` is
    uniform.

    Args:
        key: unused (uniform generator signature); may be ``None``.
        num_states: ``S >= 1``.
        slip: probability of moving the other way.
        gamma: discount factor.
        tau: temperature.
        dtype: floating dtype (default: JAX's default float).

    Returns:
        ``TabularMDP`` with ``P: [S, 2, S]``.
    """
    del key
    num_states = check_size("num_states", num_states)
    check_number("slip", slip, 0.0, 1.0)
    check_transition_size(num_states, 2, float_dtype(dtype))
    s = np.arange(num_states)
    moves = np.zeros((num_states, 2, num_states))
    moves[s, 0, np.maximum(s - 1, 0)] = 1.0
    moves[s, 1, np.minimum(s + 1, num_states - 1)] = 1.0
    dtype = float_dtype(dtype)
    return make_mdp(_slippery(moves, jnp.asarray(slip, dtype)), gamma, tau, dtype)


def gridworld_mdp(
    key: PRNGKey | None,
    height: int,
    width: int,
    *,
    slip: float = 0.1,
    gamma: float = 0.9,
    tau: float = 1.0,
    dtype=None,
) -> TabularMDP:
    """An open ``height x width`` grid, 4 actions, walls at the borders.

    State ``s = row * width + col``. The intended move happens with probability
    ``1 - slip`` and each other move with ``slip / 3``; moves off the grid stay.
    ``rho`` is uniform.

    Args:
        key: unused (uniform generator signature); may be ``None``.
        height: number of rows ``H``.
        width: number of columns ``W``.
        slip: probability of a random other move.
        gamma: discount factor.
        tau: temperature.
        dtype: floating dtype (default: JAX's default float).

    Returns:
        ``TabularMDP`` with ``P: [H * W, 4, H * W]``.
    """
    del key
    S = check_size("height", height) * check_size("width", width)
    check_number("slip", slip, 0.0, 1.0)
    check_transition_size(S, 4, float_dtype(dtype))
    moves, _ = _grid_moves(np.ones((height, width), dtype=bool))
    dtype = float_dtype(dtype)
    return make_mdp(_slippery(moves, jnp.asarray(slip, dtype)), gamma, tau, dtype)


# ----------------------------------------------------------------------- Four-Rooms


def four_rooms_cells() -> np.ndarray:
    """``[104, 2]`` ``(row, col)`` of the Four-Rooms free cells; row ``s`` is state
    ``s``."""
    free = np.array([[ch != "#" for ch in row] for row in FOUR_ROOMS_LAYOUT])
    return np.argwhere(free)


def four_rooms_state(row: int, col: int) -> int:
    """State index of the free cell ``(row, col)`` of :data:`FOUR_ROOMS_LAYOUT`.

    Raises:
        ValueError: ``(row, col)`` is a wall or outside the map.
    """
    hits = np.flatnonzero((four_rooms_cells() == (row, col)).all(axis=1))
    if hits.size == 0:
        raise ValueError(f"cell: ({row}, {col}) is not a free Four-Rooms cell")
    return int(hits[0])


def _one_hot_cells(cells, num_states: int) -> np.ndarray:
    vec = np.zeros(num_states)
    for cell in cells:
        vec[four_rooms_state(*cell)] = 1.0
    return vec


def four_rooms(
    key: PRNGKey | None = None,
    *,
    start: tuple[int, int] = (1, 1),
    goals: tuple[tuple[int, int], ...] = ((11, 11),),
    goal_mode: str = "absorbing",
    slip: float = 1.0 / 3.0,
    gamma: float = 0.99,
    tau: float = 0.005,
    dtype=None,
) -> TabularMDP:
    """HPGD-style Four-Rooms MDP (docs/math.md §9).

    The 13x13 map :data:`FOUR_ROOMS_LAYOUT` (outer walls, classic inner walls,
    104 free cells = the states), 4 actions; the intended move happens with
    probability ``1 - slip = 2/3`` and each other one with ``slip / 3 = 1/9``; moves
    into walls stay put. ``rho`` is one-hot on ``start``.

    Goal semantics (``goal_mode``):

    * ``"absorbing"`` (default): every action at a goal cell stays there forever,
      so a follower paid ``+1`` per step at the goal earns ``gamma^T / (1 - gamma)``
      after reaching it at time ``T`` and the target occupancy counts only the
      visits before the goal;
    * ``"reset"``: every action at a goal cell moves to ``start`` (an episodic task
      written as a continuing one).

    Args:
        key: unused (uniform generator signature); may be ``None``.
        start: ``(row, col)`` of the start cell.
        goals: ``(row, col)`` of the goal cells.
        goal_mode: ``"absorbing"`` or ``"reset"``.
        slip: probability of a random other move (``1/3`` in HPGD).
        gamma: discount factor.
        tau: temperature (HPGD uses 0.001, 0.003, 0.005).
        dtype: floating dtype (default: JAX's default float).

    Returns:
        ``TabularMDP`` with ``P: [104, 4, 104]``.

    Raises:
        ValueError: unknown ``goal_mode`` or a cell that is not free.

    References:
        Thoma et al., "Contextual Bilevel Reinforcement Learning for Incentive
        Alignment" (HPGD), 2024; Sutton, Precup, Singh, Artificial Intelligence
        112, 1999 (the map).
    """
    del key
    check_number("slip", slip, 0.0, 1.0)
    if goal_mode not in ("absorbing", "reset"):
        raise ValueError(
            f"goal_mode: must be 'absorbing' or 'reset', got {goal_mode!r}"
        )
    free = np.array([[ch != "#" for ch in row] for row in FOUR_ROOMS_LAYOUT])
    moves, cells = _grid_moves(free)
    S = len(cells)
    rho = _one_hot_cells([start], S)
    goal = _one_hot_cells(goals, S).astype(bool)
    goal_rows = np.eye(S) if goal_mode == "absorbing" else np.tile(rho, (S, 1))
    dtype = float_dtype(dtype)
    P = _slippery(moves, jnp.asarray(slip, dtype))
    P = jnp.where(goal[:, None, None], goal_rows[:, None, :], P)
    return make_mdp(P, gamma, tau, dtype, rho=rho)


def four_rooms_reward(
    goals: tuple[tuple[int, int], ...] = ((11, 11),), *, dtype=None
) -> Array:
    """The follower's base reward: ``+1`` for every action at a goal cell, else 0.

    Args:
        goals: ``(row, col)`` of the goal cells.
        dtype: floating dtype (default: JAX's default float).

    Returns:
        ``[104, 4]`` reward.
    """
    goal = _one_hot_cells(goals, len(four_rooms_cells()))
    return jnp.asarray(np.repeat(goal[:, None], 4, axis=1), float_dtype(dtype))


def four_rooms_problem(
    key: PRNGKey | None = None,
    *,
    target: tuple[int, int] = (3, 6),
    cost: float = 0.01,
    start: tuple[int, int] = (1, 1),
    goals: tuple[tuple[int, int], ...] = ((11, 11),),
    goal_mode: str = "absorbing",
    slip: float = 1.0 / 3.0,
    gamma: float = 0.99,
    tau: float = 0.005,
    dtype=None,
) -> BilevelProblem:
    """Four-Rooms incentive design as a :class:`bilevel_rl.BilevelProblem` (§9.3).

    * Leader variable ``x: [104]``, one incentive per free cell, ``x0 = 0``.
    * Follower reward (:func:`bilevel_rl.rewards.state_incentive_reward`):
      ``r_x(s, a) = base[s, a] + x[s]``, ``base`` from :func:`four_rooms_reward`.
    * Leader loss (:func:`bilevel_rl.objectives.incentive_design`):
      ``f(x, pi) = -sum_t gamma^t Pr_pi(s_t = target) + cost * ||x||^2``, the first
      term being the expected discounted number of visits to the target cell (its
      normalized occupancy from :func:`bilevel_rl.occupancy_measure` divided by
      ``1 - gamma``); see :func:`bilevel_rl.objectives.target_visits`.
    * ``optimum`` is unknown (``nan``).

    The default start ``(1, 1)`` (top-left room) and goal ``(11, 11)`` (bottom-right
    room) are joined by two shortest routes of equal length (20 moves), through the
    top hallway ``(3, 6)`` or the left hallway ``(6, 2)``. With the slip, the
    follower's unincentivized policy (``tau = 0.005``) prefers the left route
    (it passes ``(6, 2)`` with discounted probability 0.61 and ``(3, 6)`` with
    0.30), so the default target is the top hallway ``(3, 6)``: the leader must pay
    to move the follower onto the other route.

    Args:
        key: unused (uniform generator signature); may be ``None``.
        target: ``(row, col)`` of the cell the leader wants passed.
        cost: weight ``lambda`` of the incentive cost.
        start, goals, goal_mode, slip, gamma, tau, dtype: as in :func:`four_rooms`.

    Returns:
        ``BilevelProblem`` with ``data`` an
        :class:`bilevel_rl.objectives.IncentiveData`.
    """
    mdp = four_rooms(
        key,
        start=start,
        goals=goals,
        goal_mode=goal_mode,
        slip=slip,
        gamma=gamma,
        tau=tau,
        dtype=dtype,
    )
    dtype = mdp.P.dtype
    S = mdp.num_states
    data = IncentiveData(
        mdp=None,  # the problem passes its MDP (BilevelProblem.bound_data)
        base_reward=four_rooms_reward(goals, dtype=dtype),
        target=jnp.asarray(_one_hot_cells([target], S), dtype),
        cost=jnp.asarray(cost, dtype),
    )
    return BilevelProblem(
        mdp=mdp,
        data=data,
        x0=jnp.zeros((S,), dtype),
        reward_fn=state_incentive_reward,
        upper=incentive_design,
        optimum=jnp.asarray(jnp.nan, dtype),
    )
