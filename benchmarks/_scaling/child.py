"""One ``scaling`` configuration, measured in a fresh child process.

The parent sets the child's ``XLA_FLAGS`` (host device count) before JAX starts,
so JAX is imported only inside :func:`child`, after the first ``ru_maxrss``
reading: the memory high-water marks are this configuration's alone.
"""

from __future__ import annotations

import functools
import resource
import time

import harness

S, A = 20, 4
DTYPE = "float32"
GAMMA, TAU = 0.9, 1.0
SOLVE_MAX_ITERS = 10_000
GEN_BLOCK = 5000  # 32 MB of P per block; divides 10^4 and 10^5


def maxrss_bytes() -> int:
    """``ru_maxrss`` of this process in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(spec: dict) -> dict:
    """Generates ``spec["B"]`` MDPs and times ``solve_batch`` on them."""
    rss_start = maxrss_bytes()
    import jax
    import jax.numpy as jnp
    import numpy as np

    from bilevel_rl import solve_batch
    from bilevel_rl.batched import auto_chunk_size
    from bilevel_rl.mdp import TabularMDP
    from bilevel_rl.soft import ROUNDOFF_FACTOR
    from bilevel_rl.suites.random_mdps import dirichlet_mdp

    B, devices = spec["B"], spec["devices"]
    assert jax.device_count() == devices, (jax.devices(), devices)
    rss_jax = maxrss_bytes()

    gen_mdps = jax.jit(
        jax.vmap(lambda k: dirichlet_mdp(k, S, A, gamma=GAMMA, tau=TAU, dtype=DTYPE))
    )

    @functools.partial(jax.jit, donate_argnums=0)
    def write_block(buf, block, start):
        return jax.lax.dynamic_update_slice_in_dim(buf, block, start, axis=0)

    def generate(key):
        # GEN_BLOCK keys at a time, each block written in place (donated buffer)
        # into the [B, S, A, S] array: the peak is P plus one block.
        k_mdp, k_r = jax.random.split(key)
        keys = jax.random.split(k_mdp, B)
        P = jnp.empty((B, S, A, S), DTYPE)
        for lo in range(0, B, GEN_BLOCK):
            block = gen_mdps(keys[lo : lo + GEN_BLOCK])
            P = write_block(P, block.P, lo)
        mdp = TabularMDP(
            P=P,
            rho=jnp.broadcast_to(block.rho[0], (B, S)),
            gamma=jnp.broadcast_to(block.gamma[0], (B,)),
            tau=jnp.broadcast_to(block.tau[0], (B,)),
        )
        del block
        reward = jax.random.uniform(k_r, (B, S, A), DTYPE)
        return mdp, reward

    t0 = time.perf_counter()
    mdp, reward = jax.block_until_ready(generate(jax.random.key(spec.get("seed", 0))))
    gen_s = time.perf_counter() - t0
    p_bytes = mdp.P.size * mdp.P.dtype.itemsize
    rss_gen = maxrss_bytes()
    out = {
        "B": B,
        "devices": devices,
        "jax_devices": [str(d) for d in jax.devices()],
        "P_shape": list(mdp.P.shape),
        "P_bytes": int(p_bytes),
        "generate_s_incl_compile": gen_s,
        "chunk_per_device": auto_chunk_size(mdp, -(-B // devices)),
    }

    if spec.get("sweeps"):
        K = spec["sweeps"]
        rec = harness.timed(
            lambda: solve_batch(mdp, reward, tol=0.0, max_iters=K),
            repeats=spec["repeats"],
            min_time_s=spec["min_time_s"],
            max_repeats=200,
            long_call_s=5.0,
            keep=lambda sol: np.asarray(sol.iterations),
        )
        its = rec["_out"]
        assert (its == K).all(), (its.min(), its.max())
        med = rec["median_s"]
        out["fixed_sweeps"] = {
            "sweeps": K,
            **harness.public(rec),
            "mdp_sweeps_per_s": B * K / med,
            "us_per_mdp_sweep": 1e6 * med / (B * K),
            "p_bytes_per_s": K * p_bytes / med,
        }

    if spec.get("solve_tol") is not None:
        tol = spec["solve_tol"]
        rec = harness.timed(
            lambda: solve_batch(mdp, reward, tol=tol, max_iters=SOLVE_MAX_ITERS),
            repeats=1,
        )
        sol = rec["_out"]
        its = np.asarray(sol.iterations)
        res = np.asarray(sol.residual)
        # The solver never asks for less than ROUNDOFF_FACTOR * eps * ||v||_inf
        # (the float32 round-off floor; see soft_value_iteration).
        eps = float(jnp.finfo(sol.v.dtype).eps)
        floor = ROUNDOFF_FACTOR * eps * np.abs(np.asarray(sol.v)).max(axis=-1)
        eff = np.maximum(tol, floor)
        out["solve_to_tol"] = {
            "tol": tol,
            "max_iters": SOLVE_MAX_ITERS,
            "first_call_s": rec["first_call_s"],
            "steady_s": rec["median_s"],
            "compile_s": rec["compile_s"],
            "cpu_over_wall": rec["cpu_over_wall"],
            "iterations_min": int(its.min()),
            "iterations_median": float(np.median(its)),
            "iterations_max": int(its.max()),
            "residual_max": float(res.max()),
            "all_below_tol": bool((res <= tol).all()),
            "effective_tol_max": float(eff.max()),
            "effective_tol_note": "stopping threshold max(tol, "
            "ROUNDOFF_FACTOR * eps * ||v||_inf) per instance (float32 round-off "
            "floor); residual is the exact Bellman residual of the returned v",
            "iterations_hit_max": int((its >= SOLVE_MAX_ITERS).sum()),
            "finite": bool(jnp.isfinite(sol.v).all()),
        }
    out["maxrss_bytes"] = {
        "at_start": rss_start,
        "after_import_jax": rss_jax,
        "after_generate": rss_gen,
        "peak": maxrss_bytes(),
    }
    out["maxrss_peak_minus_import_bytes"] = out["maxrss_bytes"]["peak"] - rss_jax
    return out
