"""Tabular entropy-regularized MDPs: the data structure, its validation and batching.

A :class:`TabularMDP` holds everything of a discounted soft MDP except the reward,
which is the leader's variable and is passed separately to every solver. All fields
are pytree leaves, so a batch of MDPs is one ``TabularMDP`` whose arrays carry a
leading batch axis ``[B, ...]`` and every function of the package can be
``jax.vmap``-ed over it.

Validation happens once, at the API boundary (:meth:`TabularMDP.create`), outside
``jit``. Generators in :mod:`bilevel_rl.suites` build valid MDPs by construction and
call the plain constructor so that they stay traceable.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from bilevel_rl.types import Array

ROW_SUM_TOL = 1e-6
"""Tolerance on the sums of the rows of ``P``, ``rho`` and ``ref_policy``."""


@struct.dataclass
class TabularMDP:
    """A discounted, entropy- (or KL-) regularized tabular MDP without its reward.

    Attributes:
        P: ``[S, A, S]`` transition probabilities, ``P[s, a, s'] = P(s' | s, a)``.
        rho: ``[S]`` initial-state distribution.
        gamma: ``[]`` discount factor in ``[0, 1)``.
        tau: ``[]`` regularization temperature, ``> 0``.
        ref_policy: ``[S, A]`` reference policy ``pi0`` of the KL-regularized variant
            (docs/math.md §1), or ``None`` for plain entropy regularization.

    A batch adds a leading axis to every field (``P: [B, S, A, S]``, ``gamma: [B]``).
    Build validated instances with :meth:`create`; batch them with :func:`stack`.
    """

    P: Array
    rho: Array
    gamma: Array
    tau: Array
    ref_policy: Array | None = None

    @property
    def num_states(self) -> int:
        """Number of states ``S``."""
        return self.P.shape[-1]

    @property
    def num_actions(self) -> int:
        """Number of actions ``A``."""
        return self.P.shape[-2]

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """Leading batch axes (``()`` for a single MDP)."""
        return self.P.shape[:-3]

    @property
    def log_ref_policy(self) -> Array | None:
        """``[S, A]`` ``log pi0``, or ``None`` when there is no reference policy."""
        return None if self.ref_policy is None else jnp.log(self.ref_policy)

    @classmethod
    def create(
        cls,
        P,
        *,
        gamma: float,
        tau: float,
        rho=None,
        ref_policy=None,
        dtype=None,
    ) -> TabularMDP:
        """Validates the data and builds a single MDP.

        Args:
            P: ``[S, A, S]`` transition probabilities; every row ``P[s, a, :]`` is a
                distribution.
            gamma: discount factor in ``[0, 1)``.
            tau: temperature, a finite number ``> 0``.
            rho: ``[S]`` initial distribution; uniform when ``None``.
            ref_policy: ``[S, A]`` reference policy with strictly positive entries
                and rows summing to one (KL-regularized variant), or ``None``.
            dtype: floating dtype of the stored arrays; defaults to ``P``'s dtype if
                it is floating, else JAX's default float. ``float64`` needs
                ``jax.config.update("jax_enable_x64", True)``.

        Returns:
            A validated ``TabularMDP``.

        Raises:
            TypeError: a field is not a real numeric array (e.g. bool, complex,
                object, string) or ``dtype`` is not floating.
            ValueError: a field has the wrong rank or shape, non-finite or negative
                entries, rows that do not sum to one (within ``1e-6``), ``gamma``
                outside ``[0, 1)`` or ``tau <= 0``. The message names the field, the
                offending index and the rule.
        """
        P_np = _as_real_array("P", P)
        if dtype is None:
            in_dtype = np.asarray(P).dtype
            dtype = in_dtype if np.issubdtype(in_dtype, np.floating) else float
        if P_np.ndim != 3:
            raise ValueError(
                f"P: expected rank 3 with shape [S, A, S], got rank {P_np.ndim} "
                f"with shape {P_np.shape}"
            )
        S, A, S2 = P_np.shape
        if S < 1 or A < 1:
            raise ValueError(
                f"P: needs at least one state and one action, got shape {P_np.shape}"
            )
        if S2 != S:
            raise ValueError(
                f"P: last axis must equal the first (next-state axis of size S={S}), "
                f"got shape {P_np.shape}"
            )
        _check_distribution("P", P_np, index_names=("s", "a"))

        if rho is None:
            rho_np = np.full((S,), 1.0 / S)
        else:
            rho_np = _as_real_array("rho", rho)
            if rho_np.shape != (S,):
                raise ValueError(
                    f"rho: expected shape [S] = ({S},), got shape {rho_np.shape}"
                )
            _check_distribution("rho", rho_np, index_names=())

        gamma_f = _as_scalar("gamma", gamma)
        if not 0.0 <= gamma_f < 1.0:
            raise ValueError(f"gamma: must lie in [0, 1), got {gamma_f!r}")
        tau_f = _as_scalar("tau", tau)
        if not tau_f > 0.0:
            raise ValueError(f"tau: must be > 0, got {tau_f!r}")

        ref_np = None
        if ref_policy is not None:
            ref_np = _as_real_array("ref_policy", ref_policy)
            if ref_np.shape != (S, A):
                raise ValueError(
                    f"ref_policy: expected shape [S, A] = ({S}, {A}), "
                    f"got shape {ref_np.shape}"
                )
            _check_distribution("ref_policy", ref_np, index_names=("s",))
            bad = np.argwhere(ref_np <= 0.0)
            if bad.size:
                s, a = (int(i) for i in bad[0])
                raise ValueError(
                    f"ref_policy: entries must be > 0 (the KL term needs log pi0), "
                    f"got ref_policy[{s}, {a}] = {ref_np[s, a]!r}"
                )

        try:
            dtype = jnp.dtype(jnp.zeros((), dtype).dtype)  # canonicalize (x64 setting)
        except TypeError:
            raise TypeError(f"dtype: not a dtype: {dtype!r}") from None
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"dtype: must be a floating dtype, got {dtype}")
        return cls(
            P=jnp.asarray(P_np, dtype),
            rho=jnp.asarray(rho_np, dtype),
            gamma=jnp.asarray(gamma_f, dtype),
            tau=jnp.asarray(tau_f, dtype),
            ref_policy=None if ref_np is None else jnp.asarray(ref_np, dtype),
        )


def stack(mdps: Sequence[TabularMDP]) -> TabularMDP:
    """Stacks MDPs of equal sizes into one batched ``TabularMDP`` (``[B, ...]``).

    Raises:
        ValueError: empty sequence, mismatched ``(S, A)``, or a mix of MDPs with and
            without ``ref_policy``.
    """
    mdps = list(mdps)
    if not mdps:
        raise ValueError("mdps: need at least one MDP to stack")
    shape = mdps[0].P.shape
    has_ref = mdps[0].ref_policy is not None
    for i, m in enumerate(mdps):
        if m.P.shape != shape:
            raise ValueError(
                f"mdps[{i}].P: shape {m.P.shape} differs from mdps[0].P {shape}"
            )
        if (m.ref_policy is not None) != has_ref:
            raise ValueError(
                f"mdps[{i}].ref_policy: all MDPs must either have a ref_policy or not"
            )
    return jax.tree.map(lambda *xs: jnp.stack(xs), *mdps)


def unstack(batch: TabularMDP) -> list[TabularMDP]:
    """Splits a batched ``TabularMDP`` with one leading axis into a list of MDPs."""
    if batch.P.ndim != 4:
        raise ValueError(
            f"batch.P: expected one leading batch axis [B, S, A, S], got shape "
            f"{batch.P.shape}"
        )
    return [jax.tree.map(lambda x, i=i: x[i], batch) for i in range(batch.P.shape[0])]


def broadcast(mdp: TabularMDP, batch_size: int) -> TabularMDP:
    """Repeats one MDP ``batch_size`` times along a new leading axis."""
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (batch_size, *x.shape)), mdp)


# ---------------------------------------------------------------------- validation


def _as_real_array(field: str, value) -> np.ndarray:
    if isinstance(value, jax.core.Tracer):
        raise TypeError(
            f"{field}: TabularMDP.create validates concrete arrays and cannot run "
            "under jit/vmap; build traced MDPs with the TabularMDP(...) constructor"
        )
    try:
        arr = np.asarray(value)
    except Exception as err:  # ragged lists and the like
        raise TypeError(f"{field}: cannot be converted to an array ({err})") from None
    if arr.dtype == bool or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise TypeError(
            f"{field}: must hold real numbers (integer or floating dtype), "
            f"got dtype {arr.dtype}"
        )
    if arr.size == 0:
        raise ValueError(f"{field}: must not be empty, got shape {arr.shape}")
    arr = arr.astype(np.float64)
    bad = np.argwhere(~np.isfinite(arr))
    if bad.size:
        idx = tuple(int(i) for i in bad[0])
        raise ValueError(
            f"{field}: entries must be finite, got {field}{list(idx)} = {arr[idx]!r}"
        )
    bad = np.argwhere(arr < 0)
    if bad.size:
        idx = tuple(int(i) for i in bad[0])
        raise ValueError(
            f"{field}: entries must be >= 0, got {field}{list(idx)} = {arr[idx]!r}"
        )
    return arr


def _check_distribution(field: str, arr: np.ndarray, index_names: tuple[str, ...]):
    """Checks that ``arr`` sums to one along its last axis; names the worst row."""
    err = np.abs(arr.sum(axis=-1) - 1.0)
    worst = np.unravel_index(int(np.argmax(err)), err.shape) if err.ndim else ()
    if err[worst] > ROW_SUM_TOL:
        where = ", ".join(f"{n}={int(i)}" for n, i in zip(index_names, worst))
        row = f"row ({where})" if where else "the vector"
        raise ValueError(
            f"{field}: rows must sum to 1 (tolerance {ROW_SUM_TOL:g}); worst is {row} "
            f"summing to {float(arr.sum(axis=-1)[worst])!r}"
        )


def _as_scalar(field: str, value) -> float:
    if isinstance(value, jax.core.Tracer):
        raise TypeError(f"{field}: must be a concrete number, not a traced value")
    arr = np.asarray(value)
    if arr.dtype == bool or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise TypeError(f"{field}: must be a real number, got dtype {arr.dtype}")
    if arr.shape != ():
        raise ValueError(f"{field}: must be a scalar, got shape {arr.shape}")
    val = float(arr)
    if not np.isfinite(val):
        raise ValueError(f"{field}: must be finite, got {val!r}")
    return val
