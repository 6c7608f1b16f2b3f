"""The problems, the baselines and the ceilings that soft VI is measured against."""

from __future__ import annotations

import concurrent.futures
import functools
import os

import harness
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from bilevel_rl.mdp import TabularMDP
from bilevel_rl.soft import soft_bellman_operator

GAMMA = 0.99  # large enough that no MDP reaches its round-off floor in K sweeps
TAU = 1.0
NUMPY_SUBSET = 32  # the NumPy loop times the first min(B, 32) MDPs of a batch
UNCHUNKED_MAX_BYTES = 600 * 2**20  # whole-batch variants only below this P size


def make_problem(S: int, A: int, B: int, dtype: str, seed: int = 0):
    """``P [B,S,A,S]`` with Dirichlet(1) rows, rewards ``U[0,1)``, NumPy arrays."""
    rng = np.random.default_rng(seed)
    P = rng.standard_exponential((B, S, A, S), dtype=np.dtype(dtype))
    P /= P.sum(-1, keepdims=True)
    r = rng.random((B, S, A), dtype=np.dtype(dtype))
    return P, r


def to_mdp(P: np.ndarray, gamma: float = GAMMA, tau: float = TAU) -> TabularMDP:
    B, S = P.shape[0], P.shape[1]
    dt = P.dtype
    return TabularMDP(
        P=jnp.asarray(P),
        rho=jnp.full((B, S), 1.0 / S, dt),
        gamma=jnp.full((B,), gamma, dt),
        tau=jnp.full((B,), tau, dt),
    )


def rate_fields(record: dict, mdp_sweeps: int, p_bytes: int) -> dict:
    """Adds MDP-sweeps/s, time per MDP-sweep and bytes of ``P`` read per second."""
    t = record["median_s"]
    record["mdp_sweeps_per_s"] = mdp_sweeps / t
    record["us_per_mdp_sweep"] = 1e6 * t / mdp_sweeps
    record["p_bytes_per_s"] = mdp_sweeps * p_bytes / t
    return record


# ------------------------------------------------------------------ NumPy baseline


def numpy_soft_vi(P, r, gamma, tau, num_sweeps):
    """Plain NumPy soft value iteration on one MDP (``P [S,A,S]``, ``r [S,A]``)."""
    S, A = r.shape
    P2 = P.reshape(S * A, S)
    v = np.zeros(S, P.dtype)
    for _ in range(num_sweeps):
        q = r + gamma * (P2 @ v).reshape(S, A)
        m = q.max(axis=1)
        v = m + tau * np.log(np.exp((q - m[:, None]) / tau).sum(axis=1))
    return v


def numpy_loop(P, r, num_sweeps, repeats) -> dict:
    """:func:`numpy_soft_vi` on every MDP of ``P``, one after the other, timed."""
    n = P.shape[0]

    def run():
        return np.stack(
            [numpy_soft_vi(P[i], r[i], GAMMA, TAU, num_sweeps) for i in range(n)]
        )

    rec = harness.timed(run, repeats=repeats)
    rec["mdps_timed"] = n
    return rec


# ------------------------------------------------------- bare matvec (the ceiling)


def _next_v(q):
    # [.., S, A] -> [.., S]: keeps K products dependent (XLA would hoist a
    # loop-invariant one); rows of P sum to one, so v stays bounded.
    return q.mean(-1)


@functools.partial(jax.jit, static_argnames=("chunk", "num_sweeps"))
def bare_chunked(P, v0, *, chunk, num_sweeps):
    """``num_sweeps`` dependent batched matvecs per chunk, chunked like solve_batch."""

    def one(args):
        p, v = args
        body = lambda _, v: _next_v(jnp.einsum("sat,t->sa", p, v))  # noqa: E731
        return lax.fori_loop(0, num_sweeps, body, v)

    return lax.map(one, (P, v0), batch_size=chunk)


@functools.partial(jax.jit, static_argnames=("num_sweeps",))
def bare_unchunked(P, v0, *, num_sweeps):
    """``num_sweeps`` dependent ``einsum('bsat,bt->bsa')`` on the whole batch."""
    body = lambda _, v: _next_v(jnp.einsum("bsat,bt->bsa", P, v))  # noqa: E731
    return lax.fori_loop(0, num_sweeps, body, v0)


@jax.jit
def bare_single_pass(P, v):
    return jnp.einsum("bsat,bt->bsa", P, v)


@functools.partial(jax.jit, static_argnames=("chunk", "num_sweeps"))
def library_operator_sweeps(P, r, gamma, tau, *, chunk, num_sweeps):
    """``num_sweeps`` of :func:`bilevel_rl.soft.soft_bellman_operator` per MDP.

    A ``fori_loop`` (no stopping test), chunked like ``solve_batch``.
    """

    def one(args):
        p, rr, g, t = args
        mdp = TabularMDP(P=p, rho=None, gamma=g, tau=t)
        v0 = jnp.zeros(p.shape[-1], p.dtype)
        body = lambda _, v: soft_bellman_operator(mdp, rr, v)  # noqa: E731
        return lax.fori_loop(0, num_sweeps, body, v0)

    return lax.map(one, (P, r, gamma, tau), batch_size=chunk)


# ---------------------------------------------------------------- DRAM roofline


def dram_bandwidth(nbytes: int, repeats: int) -> dict:
    """Read bandwidth of sums over a ``nbytes`` float32 array (>> L3 in full runs)."""
    x = np.ones(nbytes // 4, np.float32)  # written once: every page is resident
    res = {"array_bytes": x.nbytes}

    def rate(fn):
        return x.nbytes / harness.timed(fn, repeats=repeats)["median_s"]

    res["numpy_1_thread"] = rate(lambda: np.add.reduce(x))
    n = os.cpu_count() or 1
    parts = np.array_split(x, n)
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        # ufunc reductions release the GIL, so the threads read in parallel.
        res[f"numpy_{n}_threads"] = rate(lambda: list(pool.map(np.add.reduce, parts)))
    xj = jnp.asarray(x)
    res["jax_sum"] = rate(functools.partial(jax.jit(jnp.sum), xj))
    res["best_bytes_per_s"] = max(v for k, v in res.items() if k != "array_bytes")
    return res
