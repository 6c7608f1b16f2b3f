"""The measured sections of ``soft_vi_throughput``: each returns JSON-ready records.

``cfg`` is the script's ``FULL`` or ``QUICK`` dictionary. Every timing is
:func:`harness.timed` (first call, then the median of the steady state).
"""

from __future__ import annotations

import functools
import os

import harness
import jax
import jax.numpy as jnp
import numpy as np

from _soft_vi.kernels import (
    NUMPY_SUBSET,
    UNCHUNKED_MAX_BYTES,
    bare_chunked,
    bare_single_pass,
    bare_unchunked,
    library_operator_sweeps,
    make_problem,
    numpy_loop,
    rate_fields,
    to_mdp,
)
from bilevel_rl.batched import auto_chunk_size, solve_batch
from bilevel_rl.mdp import TabularMDP
from bilevel_rl.soft import soft_value_iteration


def _rated(record: dict, mdp_sweeps: int, p_bytes: int) -> dict:
    return harness.public(rate_fields(record, mdp_sweeps, p_bytes))


def grid_point(P_np, r_np, cfg) -> dict:
    """solve_batch (chunked, whole batch), bare matvecs and NumPy on one batch."""
    B, S, A, _ = P_np.shape
    K = cfg["sweeps"]
    timing = {"repeats": cfg["repeats"], "min_time_s": cfg["min_time_s"]}
    p_bytes = S * A * S * P_np.dtype.itemsize
    mdp, r = to_mdp(P_np), jnp.asarray(r_np)
    chunk = auto_chunk_size(mdp, B)
    n = B * K
    rec = {
        "B": B,
        "S": S,
        "A": A,
        "dtype": P_np.dtype.name,
        "sweeps": K,
        "chunk": chunk,
        "p_bytes_per_mdp": p_bytes,
        "p_bytes_batch": B * p_bytes,
    }
    fits = B * p_bytes <= UNCHUNKED_MAX_BYTES

    def solve(c):
        return lambda: solve_batch(mdp, r, tol=0.0, max_iters=K, chunk_size=c)

    sol = harness.timed(solve(None), **timing)
    rec["all_ran_K_sweeps"] = bool(np.all(np.asarray(sol["_out"].iterations) == K))
    v_jax = np.asarray(sol["_out"].v)
    rec["solve_chunked"] = _rated(sol, n, p_bytes)
    if chunk == B:
        rec["solve_unchunked"] = "same as chunked (chunk = B)"
    else:
        rec["solve_unchunked"] = (
            _rated(harness.timed(solve(B), **timing), n, p_bytes) if fits else None
        )

    v0 = jnp.zeros((B, S), P_np.dtype)
    bare = harness.timed(
        lambda: bare_chunked(mdp.P, v0, chunk=chunk, num_sweeps=K), **timing
    )
    rec["bare_chunked"] = _rated(bare, n, p_bytes)
    rec["bare_unchunked"] = (
        _rated(
            harness.timed(lambda: bare_unchunked(mdp.P, v0, num_sweeps=K), **timing),
            n,
            p_bytes,
        )
        if fits
        else None
    )
    single = harness.timed(lambda: bare_single_pass(mdp.P, v0), **timing)
    rec["bare_single_pass"] = _rated(single, B, p_bytes)

    m = min(B, NUMPY_SUBSET)
    npl = numpy_loop(P_np[:m], r_np[:m], K, repeats=max(3, cfg["repeats"] // 2))
    rec["numpy_loop_max_abs_diff_v"] = float(np.max(np.abs(npl["_out"] - v_jax[:m])))
    rec["numpy_loop"] = _rated(npl, m * K, p_bytes)

    t_solve = rec["solve_chunked"]["us_per_mdp_sweep"]
    rec["speedup_vs_numpy"] = rec["numpy_loop"]["us_per_mdp_sweep"] / t_solve
    rec["sweep_over_bare_chunked"] = t_solve / rec["bare_chunked"]["us_per_mdp_sweep"]
    if isinstance(rec["solve_unchunked"], dict):
        rec["chunking_speedup"] = rec["solve_unchunked"]["us_per_mdp_sweep"] / t_solve
    if isinstance(rec["bare_unchunked"], dict):
        rec["sweep_over_bare_unchunked"] = (
            t_solve / rec["bare_unchunked"]["us_per_mdp_sweep"]
        )
    return rec


def chunk_curve(S, dtype, B, chunks, cfg) -> list:
    """solve_batch and the bare matvec at each chunk size in ``chunks`` (A = 8)."""
    K = cfg["sweeps"]
    timing = {"repeats": cfg["repeats"], "min_time_s": cfg["min_time_s"]}
    P_np, r_np = make_problem(S, 8, B, dtype, seed=1)
    mdp, r = to_mdp(P_np), jnp.asarray(r_np)
    p_bytes = P_np[0].nbytes
    v0 = jnp.zeros((B, S), P_np.dtype)
    out = []
    for c in chunks:
        solve = harness.timed(
            lambda c=c: solve_batch(mdp, r, tol=0.0, max_iters=K, chunk_size=c),
            **timing,
        )
        bare = harness.timed(
            lambda c=c: bare_chunked(mdp.P, v0, chunk=c, num_sweeps=K), **timing
        )
        out.append(
            {
                "S": S,
                "A": 8,
                "dtype": dtype,
                "B": B,
                "chunk": c,
                "chunk_p_bytes": c * p_bytes,
                "auto_chunk": auto_chunk_size(mdp, B),
                "solve": _rated(solve, B * K, p_bytes),
                "bare": _rated(bare, B * K, p_bytes),
            }
        )
    return out


SOLVE_BATCH = "solve_batch (library: while_loop + stopping test)"


def sweep_variants(at, cfg) -> dict:
    """solve_batch vs the library operator in a plain loop vs the bare matvec.

    All three run ``K`` sweeps per MDP on the same chunks (the automatic chunk),
    timed round-robin (:func:`harness.interleaved`).
    """
    B, S, A, dtype = at["B"], at["S"], at["A"], at["dtype"]
    K = cfg["sweeps"]
    P_np, r_np = make_problem(S, A, B, dtype, seed=2)
    mdp, r = to_mdp(P_np), jnp.asarray(r_np)
    chunk = auto_chunk_size(mdp, B)
    v0 = jnp.zeros((B, S), P_np.dtype)
    fns = {
        SOLVE_BATCH: lambda: solve_batch(mdp, r, tol=0.0, max_iters=K).v,
        "fori_soft_bellman_operator": lambda: library_operator_sweeps(
            mdp.P, r, mdp.gamma, mdp.tau, chunk=chunk, num_sweeps=K
        ),
        "bare_matvec_SAS": lambda: bare_chunked(mdp.P, v0, chunk=chunk, num_sweeps=K),
    }
    recs = harness.interleaved(fns, repeats=max(cfg["repeats"], 7))
    ref = np.asarray(recs[SOLVE_BATCH]["_out"])
    loop = recs["fori_soft_bellman_operator"]
    loop["max_abs_diff_v_vs_solve_batch"] = float(
        np.max(np.abs(np.asarray(loop["_out"]) - ref))
    )
    variants = {k: _rated(v, B * K, P_np[0].nbytes) for k, v in recs.items()}
    for rec in variants.values():
        rec["relative_to_solve_batch"] = (
            rec["us_per_mdp_sweep"] / variants[SOLVE_BATCH]["us_per_mdp_sweep"]
        )
    return {
        "B": B,
        "S": S,
        "A": A,
        "dtype": dtype,
        "chunk": chunk,
        "variants": variants,
    }


VI_PI_BATCH = 16
VI_PI_BATCH_MAX_S = 64  # the batched rows are skipped above this S (run time)


def vi_vs_pi(cfg) -> list:
    """Iterations and wall time to tol 1e-6 (float64), value vs policy iteration.

    One MDP (jitted ``soft_value_iteration``), and (for ``S <= VI_PI_BATCH_MAX_S``)
    a batch of ``VI_PI_BATCH`` MDPs through ``solve_batch``. gamma and tau are
    data, so each method compiles once per ``S`` (``compile_s`` is ~0 for the later
    rows of the same ``S``).
    """
    out = []
    timing = {"repeats": cfg["repeats"], "min_time_s": 0.2}
    methods = ("value_iteration", "policy_iteration")
    single = {
        m: jax.jit(
            functools.partial(
                soft_value_iteration, tol=1e-6, max_iters=100_000, method=m
            )
        )
        for m in methods
    }
    exact_fn = jax.jit(
        functools.partial(
            soft_value_iteration, tol=1e-13, max_iters=1000, method="policy_iteration"
        )
    )
    for S in cfg["vi_pi"]["S"]:
        P_np, r_np = make_problem(S, 8, VI_PI_BATCH, "float64", seed=3)
        batched = S <= VI_PI_BATCH_MAX_S
        for gamma in cfg["vi_pi"]["gammas"]:
            for tau in cfg["vi_pi"]["taus"]:
                mdp = TabularMDP.create(P_np[0], gamma=gamma, tau=tau)
                r = jnp.asarray(r_np[0])
                batch = to_mdp(P_np, gamma=gamma, tau=tau)
                rb = jnp.asarray(r_np)
                exact = exact_fn(mdp, r).v
                row = {"S": S, "A": 8, "gamma": gamma, "tau": tau, "tol": 1e-6}
                for method in methods:
                    f = single[method]
                    rec = harness.timed(lambda f=f: f(mdp, r), **timing)
                    sol = rec["_out"]
                    rec["iterations"] = int(sol.iterations)
                    rec["residual"] = float(sol.residual)
                    rec["max_abs_err_v"] = float(jnp.max(jnp.abs(sol.v - exact)))
                    row[method] = harness.public(rec)
                    if not batched:
                        continue
                    recb = harness.timed(
                        lambda method=method: solve_batch(
                            batch, rb, tol=1e-6, max_iters=100_000, method=method
                        ),
                        **timing,
                    )
                    its = np.asarray(recb["_out"].iterations)
                    recb["iterations_mean"] = float(its.mean())
                    recb["iterations_max"] = int(its.max())
                    recb["us_per_mdp"] = 1e6 * recb["median_s"] / VI_PI_BATCH
                    row[f"{method}_batch{VI_PI_BATCH}"] = harness.public(recb)
                vi, pi = "value_iteration", "policy_iteration"
                row["pi_speedup_wall"] = row[vi]["median_s"] / row[pi]["median_s"]
                if batched:
                    row[f"pi_speedup_wall_batch{VI_PI_BATCH}"] = (
                        row[f"{vi}_batch{VI_PI_BATCH}"]["median_s"]
                        / row[f"{pi}_batch{VI_PI_BATCH}"]["median_s"]
                    )
                out.append(row)
    return out


def sharded_child(spec: str) -> None:
    """Child process: solve_batch with the host devices its parent asked for.

    On the grid's MDPs (same seed and slice); ``solve_batch`` shards the batch over
    the devices itself (``bilevel_rl.devices.batch_map``). Emits one JSON line.
    """
    B, S, A, dtype, K, B_max, reps = spec.split(",")
    B, S, A, K, B_max, reps = int(B), int(S), int(A), int(K), int(B_max), int(reps)
    P_np, r_np = make_problem(S, A, B_max, dtype)
    mdp, r = to_mdp(P_np[:B]), jnp.asarray(r_np[:B])
    rec = harness.timed(lambda: solve_batch(mdp, r, tol=0.0, max_iters=K), repeats=reps)
    v = np.asarray(rec["_out"].v)
    harness.emit(
        {
            "devices": len(jax.local_devices()),
            "chunk": auto_chunk_size(mdp, B),
            "sharded": _rated(rec, B * K, S * A * S * np.dtype(dtype).itemsize),
            "v_checksum": float(np.sum(v, dtype=np.float64)),
        }
    )


def multi_core(cfg, script: str) -> list:
    """solve_batch with 1 and with one-per-core host devices, in child processes.

    Both children (``script --sharded-child``) run back to back on the grid's MDPs,
    so the ratio compares like with like.
    """
    n = os.cpu_count() or 1
    out = []
    for at in cfg["multi_core_at"]:
        B_max = max(cfg["batches"][(at["S"], at["dtype"])])
        spec = (
            f"{at['B']},{at['S']},{at['A']},{at['dtype']},{cfg['sweeps']},"
            f"{B_max},{cfg['repeats']}"
        )
        one, many = (
            harness.run_child([script, "--sharded-child", spec], devices=d)
            for d in (1, n)
        )
        rec = dict(at)
        if "error" in one or "error" in many:
            rec["error"] = one.get("error", "") + many.get("error", "")
        else:
            rec["devices"] = many["devices"]
            rec["one_device"] = one["sharded"]
            rec["sharded"] = many["sharded"]
            rec["speedup_over_one_device"] = (
                one["sharded"]["median_s"] / many["sharded"]["median_s"]
            )
            rec["v_checksums"] = [one["v_checksum"], many["v_checksum"]]
        out.append(rec)
    return out
