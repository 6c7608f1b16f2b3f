"""Soft value-iteration throughput on CPU: MDP-sweeps per second and their ceilings.

For a grid of batch sizes ``B``, state counts ``S``, action counts ``A`` and dtypes,
this measures in one process run, on the same random MDPs:

* ``solve_chunked``: :func:`bilevel_rl.batched.solve_batch` with its automatic,
  cache-sized chunks (``lax.map(batch_size=chunk)``), ``tol=0`` and
  ``max_iters=K`` so that every MDP does exactly ``K`` sweeps (checked);
* ``solve_unchunked``: the same call with ``chunk_size=B`` (every sweep streams the
  whole batch's ``P``), where the batch's ``P`` is at most ``UNCHUNKED_MAX_BYTES``;
* ``bare_chunked``: the bare batched matvec ``einsum('bsat,bt->bsa')``, ``K`` times
  in a ``fori_loop`` on the same chunks (same ``lax.map`` and chunk size) -- the
  ceiling a sweep cannot beat. To keep ``K`` dependent products (XLA would hoist a
  loop-invariant one) the next vector is ``v <- mean_a (P v)(., a)``, a ``[S, A] ->
  [S]`` reduction that is much cheaper than the product;
* ``bare_unchunked``: the same ``K`` matvecs on the whole batch at once, and
  ``bare_single_pass``: one whole-batch ``einsum`` (no loop);
* ``numpy_loop``: a plain NumPy soft VI loop (``P.reshape(S*A, S) @ v``, a
  max-shifted logsumexp), one MDP at a time, on the first ``NUMPY_SUBSET`` MDPs of
  the batch, scaled per MDP-sweep;
* the DRAM read bandwidth of this machine (NumPy and JAX sums over an array much
  larger than the L3 cache) and the bytes of ``P`` read per second by each solver.

Also: the chunk-size curve; at a few configurations ``solve_batch`` against the
library's :func:`bilevel_rl.soft.soft_bellman_operator` in a plain ``fori_loop``
and the bare matvec, timed round-robin; ``solve_batch`` sharded over one host device
per core (child processes); and for the "faster solver" question the sweeps and
wall time to ``tol=1e-6`` (float64) of ``method="value_iteration"`` and
``method="policy_iteration"``.

Timings are :func:`harness.timed`: compile time separately (first call minus the
steady-state median), steady state the median of several timed calls, with the
process CPU time alongside: XLA runs these programs on one thread, so a CPU/wall
ratio well below 1 means other processes took the core.

Usage::

    python benchmarks/soft_vi_throughput.py            # full run
    python benchmarks/soft_vi_throughput.py --quick    # smoke test
    python benchmarks/soft_vi_throughput.py --out /tmp/x   # /tmp/x.{json,png}
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import harness
import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
from _soft_vi.kernels import (  # noqa: E402
    GAMMA,
    NUMPY_SUBSET,
    TAU,
    UNCHUNKED_MAX_BYTES,
    dram_bandwidth,
    make_problem,
)
from _soft_vi.plot import plot  # noqa: E402
from _soft_vi.sections import (  # noqa: E402
    chunk_curve,
    grid_point,
    multi_core,
    sharded_child,
    sweep_variants,
    vi_vs_pi,
)

from bilevel_rl.devices import cache_bytes  # noqa: E402

NAME = "soft_vi_throughput"
HEADLINE = {"B": 1024, "S": 64, "A": 8, "dtype": "float32"}
TARGETS = {"speedup_vs_numpy_min": 5.0, "sweep_over_bare_matvec_max": 2.0}

FULL = {
    "sweeps": 50,
    "repeats": 5,
    "min_time_s": 0.3,
    # (S, dtype) -> batch sizes; S=200 float64 stops at 256 (4096 MDPs would be
    # 10 GiB of P).
    "batches": {
        (16, "float32"): [1, 16, 256, 1024, 4096],
        (16, "float64"): [1, 16, 256, 1024, 4096],
        (64, "float32"): [1, 16, 256, 1024, 4096],
        (64, "float64"): [1, 16, 256, 1024, 4096],
        (200, "float32"): [1, 16, 256, 1024],
        (200, "float64"): [1, 16, 256],
    },
    "actions": [4, 8],
    "dram_bytes": 2 * 2**30,
    "chunk_curve": {
        (16, "float32", 1024): [8, 32, 128, 1024],
        (64, "float32", 1024): [1, 2, 4, 8, 16, 64, 1024],
        (200, "float32", 128): [1, 2, 128],
    },
    "variants_at": [
        HEADLINE,
        {"B": 1024, "S": 16, "A": 8, "dtype": "float32"},
        {"B": 64, "S": 200, "A": 8, "dtype": "float32"},
        {"B": 256, "S": 64, "A": 8, "dtype": "float64"},
    ],
    "vi_pi": {"S": [16, 64, 200], "gammas": [0.9, 0.99], "taus": [1.0, 0.1]},
    "multi_core_at": [HEADLINE, {"B": 256, "S": 200, "A": 8, "dtype": "float32"}],
}
QUICK = {
    "sweeps": 10,
    "repeats": 3,
    "min_time_s": 0.0,
    "batches": {(16, "float32"): [1, 8], (16, "float64"): [8]},
    "actions": [4],
    "dram_bytes": 64 * 2**20,
    "chunk_curve": {(16, "float32", 8): [1, 8]},
    "variants_at": [{"B": 8, "S": 16, "A": 4, "dtype": "float32"}],
    "vi_pi": {"S": [16], "gammas": [0.9], "taus": [1.0]},
    "multi_core_at": [{"B": 8, "S": 16, "A": 4, "dtype": "float32"}],
}
HEADLINE_KEYS = (
    "solve_chunked",
    "solve_unchunked",
    "bare_chunked",
    "bare_unchunked",
    "bare_single_pass",
    "numpy_loop",
)


def headline(result: dict) -> dict:
    """The grid point at the first ``variants_at`` configuration, against targets."""
    cfg = result["config"]["variants_at"][0]
    keys = ("B", "S", "A", "dtype")
    match = [g for g in result["grid"] if all(g[k] == cfg[k] for k in keys)]
    out = {"config": dict(cfg), "targets": TARGETS}
    if not match:
        return out
    g = match[0]
    for field in ("mdp_sweeps_per_s", "us_per_mdp_sweep"):
        out[field] = {
            k: g[k][field] for k in HEADLINE_KEYS if isinstance(g.get(k), dict)
        }
    out["speedup_vs_numpy"] = g["speedup_vs_numpy"]
    out["sweep_over_bare_chunked"] = g["sweep_over_bare_chunked"]
    out["sweep_over_bare_unchunked"] = g.get("sweep_over_bare_unchunked")
    out["chunking_speedup"] = g.get("chunking_speedup")
    out["meets_speedup_target"] = (
        g["speedup_vs_numpy"] >= TARGETS["speedup_vs_numpy_min"]
    )
    out["meets_bare_ratio_target"] = (
        g["sweep_over_bare_chunked"] <= TARGETS["sweep_over_bare_matvec_max"]
    )
    for rec in result.get("multi_core", []):
        if "sharded" in rec and all(rec[k] == cfg[k] for k in keys):
            us = rec["sharded"]["us_per_mdp_sweep"]
            out["all_cores_sharded"] = {
                "devices": rec["devices"],
                "mdp_sweeps_per_s": rec["sharded"]["mdp_sweeps_per_s"],
                "speedup_over_one_device": rec["speedup_over_one_device"],
                "speedup_vs_numpy_single_thread": g["numpy_loop"]["us_per_mdp_sweep"]
                / us,
            }
    return out


def config_record(cfg: dict) -> dict:
    return {
        "sweeps_per_call_K": cfg["sweeps"],
        "gamma": GAMMA,
        "tau": TAU,
        "tol": 0.0,
        "repeats_min": cfg["repeats"],
        "min_time_per_measurement_s": cfg["min_time_s"],
        "statistic": "median wall time of the timed calls after a first "
        "(compiling) call; compile_s = first_call_s - median_s",
        "batches": {f"S={S} {dt}": b for (S, dt), b in cfg["batches"].items()},
        "actions": cfg["actions"],
        "numpy_subset": f"NumPy loop timed on the first min(B, {NUMPY_SUBSET}) "
        "MDPs of each batch and scaled per MDP-sweep",
        "unchunked_max_bytes": UNCHUNKED_MAX_BYTES,
        "variants_at": cfg["variants_at"],
        "problem": "P rows Dirichlet(1) (normalized exponentials), reward "
        "U[0,1), rho uniform, no reference policy",
    }


def main(argv=None) -> dict:
    parser = harness.parser(__doc__)
    parser.add_argument("--sharded-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sharded_child:
        sharded_child(args.sharded_child)
        return {}
    cfg = QUICK if args.quick else FULL
    bench = harness.Bench(NAME, args, argv)
    log, result = bench.log, bench.result
    result["machine"]["l2_bytes_used_by_auto_chunk"] = cache_bytes()
    result["config"] = config_record(cfg)

    log("DRAM bandwidth")
    result["dram"] = dram_bandwidth(cfg["dram_bytes"], repeats=3)
    log(f"  best {result['dram']['best_bytes_per_s'] / 1e9:.1f} GB/s")

    result["grid"] = []
    for (S, dtype), batches in cfg["batches"].items():
        for A in cfg["actions"]:
            P_all, r_all = make_problem(S, A, max(batches), dtype)
            for B in batches:
                rec = grid_point(P_all[:B], r_all[:B], cfg)
                result["grid"].append(rec)
                log(
                    f"S={S:3d} A={A} {dtype} B={B:5d} chunk={rec['chunk']:4d}: "
                    f"{rec['solve_chunked']['mdp_sweeps_per_s']:11.0f} sweeps/s "
                    f"x{rec['speedup_vs_numpy']:.1f} vs numpy, "
                    f"{rec['sweep_over_bare_chunked']:.2f} x bare"
                )
            del P_all, r_all

    log("chunk curve")
    result["chunk_curve"] = {
        f"S={S} {dt} B={B}": chunk_curve(S, dt, B, chunks, cfg)
        for (S, dt, B), chunks in cfg["chunk_curve"].items()
    }
    log("solve_batch vs the library operator in a fori_loop vs the bare matvec")
    result["sweep_variants"] = [sweep_variants(at, cfg) for at in cfg["variants_at"]]
    for sv in result["sweep_variants"]:
        rel = {
            k: round(v["relative_to_solve_batch"], 3) for k, v in sv["variants"].items()
        }
        log(f"  B={sv['B']} S={sv['S']} A={sv['A']} {sv['dtype']}: {rel}")
    log("multi-core: solve_batch under shard_map, one host device per core")
    result["multi_core"] = multi_core(cfg, str(Path(__file__).resolve()))
    for rec in result["multi_core"]:
        if "error" in rec:
            log(f"  {rec['S']} {rec['dtype']} B={rec['B']}: failed: {rec['error']}")
        else:
            log(
                f"  B={rec['B']} S={rec['S']} A={rec['A']} {rec['dtype']}: "
                f"x{rec['speedup_over_one_device']:.2f} over one device"
            )
    log("value vs policy iteration")
    result["vi_vs_pi"] = vi_vs_pi(cfg)

    result["headline"] = hl = headline(result)
    cw = [g["solve_chunked"]["cpu_over_wall"] for g in result["grid"]]
    result["contention"] = {
        "solve_chunked_cpu_over_wall_median": float(np.median(cw)),
        "solve_chunked_cpu_over_wall_min": float(np.min(cw)),
        "note": "XLA ran these programs on one thread; cpu/wall well below 1 "
        "means other processes shared the cores during the run",
    }
    bench.save(plot(result))
    if "speedup_vs_numpy" in hl:
        log(
            f"headline {hl['config']}: x{hl['speedup_vs_numpy']:.2f} vs NumPy "
            f"(target >= 5), sweep/bare = {hl['sweep_over_bare_chunked']:.2f} "
            "(target <= 2)"
        )
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
