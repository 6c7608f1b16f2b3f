"""Scaling of ``bilevel_rl.solve_batch``: batch size, devices, memory.

Random Dirichlet(1) MDPs (``S=20, A=4``, float32, ``gamma=0.9, tau=1``, rewards
``U[0,1)``) are generated with ``jax.vmap(dirichlet_mdp)`` over ``GEN_BLOCK`` keys
at a time, each block written in place into a donated ``[B, S, A, S]`` buffer, so
that generation never holds more than the batch's ``P`` plus one block. Measured:

* MDP-sweeps/s of :func:`bilevel_rl.solve_batch` (automatic cache-sized chunks)
  for batch sizes ``1 .. 10^5`` on one XLA host device, with ``tol=0`` and
  ``max_iters=50`` so that every instance does exactly 50 sweeps (checked);
* one solve of the ``10^5`` batch to ``tol=1e-6`` (time, iterations, max residual);
* MDP-sweeps/s at a fixed batch (``10^4``) on 1, 2 and 4 host devices
  (``XLA_FLAGS=--xla_force_host_platform_device_count=N``; the batch is sharded with
  ``shard_map``). This machine's core count is recorded: device counts above it
  oversubscribe the cores and cannot scale further;
* the memory high-water mark ``ru_maxrss`` of the process and the bytes of ``P``.

Every configuration runs in its own child process (XLA_FLAGS must be set before JAX
starts, and ``ru_maxrss`` is then per configuration); the child prints one JSON
object on stdout. Children run one after the other with ``OPENBLAS_NUM_THREADS=1``.
Timings are :func:`harness.timed` (compile time separately, then the median of the
steady-state calls).

``--main-job`` measures instead the resources of ``bilevel-rl run --batch N`` (wall
time, peak RSS, bytes written, history and checkpoint sizes against the solver
state; :mod:`_scaling.main_job`) and merges them into ``scaling.json`` under
``main_job``, keeping the other keys.

Usage::

    python benchmarks/scaling.py            # full run
    python benchmarks/scaling.py --quick    # smoke run
    python benchmarks/scaling.py --out /tmp/scaling   # writes /tmp/scaling.{json,png}
    python benchmarks/scaling.py --main-job --batch 20000 --iterations 300
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import harness
from _scaling import main_job
from _scaling.child import DTYPE, GAMMA, GEN_BLOCK, SOLVE_MAX_ITERS, TAU, A, S, child
from _scaling.plot import plot

NAME = "scaling"
SWEEPS = 50
SOLVE_TOL = 1e-6

FULL = {
    "batches": [1, 10, 100, 1_000, 10_000, 100_000],
    "devices": [1, 2, 4],
    "devices_batch": 10_000,
    "devices_rounds": 3,
    "devices_min_time_s": 2.0,
    "solve_batch_B": 100_000,
    "repeats": 5,
    "min_time_s": 0.5,
}
QUICK = {
    "batches": [1, 10, 100],
    "devices": [1, 2],
    "devices_batch": 100,
    "devices_rounds": 1,
    "devices_min_time_s": 0.0,
    "solve_batch_B": 100,
    "repeats": 3,
    "min_time_s": 0.0,
}
SOLVE_TO_TOL_SUMMARY = (
    "steady_s",
    "first_call_s",
    "iterations_max",
    "iterations_median",
    "residual_max",
    "effective_tol_max",
    "all_below_tol",
    "iterations_hit_max",
)


def run_child(spec: dict, log) -> dict:
    """:func:`_scaling.child.child` for ``spec`` in a fresh process."""
    t0 = time.perf_counter()
    load0 = harness.loadavg()
    script = str(Path(__file__).resolve())
    rec = harness.run_child(
        [script, "--child", json.dumps(spec)], devices=spec["devices"]
    )
    if "error" in rec:
        log(f"  child failed: {rec['error']}")
        return {**spec, **rec}
    rec["spec"] = spec
    rec["process_wall_s"] = time.perf_counter() - t0
    rec["loadavg_before_after"] = [load0, harness.loadavg()]
    rec["xla_flags"] = harness.set_host_devices(
        spec["devices"], dict(os.environ), replace=True
    )
    return rec


def config_record(cfg: dict) -> dict:
    return {
        "S": S,
        "A": A,
        "dtype": DTYPE,
        "gamma": GAMMA,
        "tau": TAU,
        "problem": "jax.vmap(dirichlet_mdp) over keys (Dirichlet(1) rows), "
        f"generated in blocks of {GEN_BLOCK} keys, each written in place into "
        "a donated [B,S,A,S] buffer; reward U[0,1); rho uniform",
        "sweeps_fixed": SWEEPS,
        "fixed_sweeps_call": f"solve_batch(mdp, reward, tol=0, max_iters={SWEEPS})"
        " (every instance does exactly that many sweeps, checked)",
        "solve_to_tol": {"tol": SOLVE_TOL, "max_iters": SOLVE_MAX_ITERS},
        **{k: cfg[k] for k in ("batches", "devices", "devices_batch")},
        "solve_batch_B": cfg["solve_batch_B"],
        "repeats_min": cfg["repeats"],
        "min_time_per_measurement_s": cfg["min_time_s"],
        "statistic": "median wall time of the calls after the first "
        "(compiling) call; compile_s = first_call_s - median_s; calls whose "
        "first timed call takes over 5 s are repeated 3 times",
        "chunking": "solve_batch's automatic chunk (half the L2 cache of P "
        "per chunk), per device",
        "isolation": "each configuration in its own child process "
        "(XLA_FLAGS=--xla_force_host_platform_device_count=N set before "
        "jax starts, OPENBLAS_NUM_THREADS=1, JAX_PLATFORMS=cpu), run "
        "sequentially; ru_maxrss is therefore per configuration",
        "memory": "ru_maxrss from resource.getrusage(RUSAGE_SELF) (KiB on "
        "Linux, reported here in bytes); includes the JAX runtime "
        "(see after_import_jax)",
    }


def batch_scaling(cfg: dict, log) -> list:
    """Fixed sweeps at every batch size on one device (and the solve to tol)."""
    out = []
    common = {"repeats": cfg["repeats"], "min_time_s": cfg["min_time_s"]}
    for B in cfg["batches"]:
        spec = {"B": B, "devices": 1, "sweeps": SWEEPS, **common}
        if B == cfg["solve_batch_B"]:
            spec["solve_tol"] = SOLVE_TOL
        rec = run_child(spec, log)
        out.append(rec)
        if "fixed_sweeps" in rec:
            fs = rec["fixed_sweeps"]
            log(
                f"B={B:>6d} chunk={rec['chunk_per_device']:4d}: "
                f"{fs['mdp_sweeps_per_s']:12.0f} MDP-sweeps/s "
                f"({fs['us_per_mdp_sweep']:.3f} us), compile {fs['compile_s']:.2f}s, "
                f"peak RSS {rec['maxrss_bytes']['peak'] / 2**20:.0f} MiB, "
                f"P {rec['P_bytes'] / 2**20:.1f} MiB"
            )
        if "solve_to_tol" in rec:
            st = rec["solve_to_tol"]
            log(
                f"  B={B} to tol {SOLVE_TOL}: {st['steady_s']:.2f}s steady "
                f"(first {st['first_call_s']:.2f}s), iterations "
                f"{st['iterations_min']}..{st['iterations_max']}, max residual "
                f"{st['residual_max']:.2e} (float32 floor max "
                f"{st['effective_tol_max']:.2e})"
            )
    if cfg["solve_batch_B"] not in cfg["batches"]:
        spec = {"B": cfg["solve_batch_B"], "devices": 1, "solve_tol": SOLVE_TOL}
        out.append(run_child(spec, log))
    return out


def device_rounds(cfg: dict, log) -> list:
    """Fixed sweeps at one batch size on each device count, in rounds.

    The counts alternate (1, 2, 4, 1, 2, 4, ...), one child each, so that a change
    of load on a shared machine hits every count alike.
    """
    out = []
    for rnd in range(cfg["devices_rounds"]):
        for d in cfg["devices"]:
            spec = {
                "B": cfg["devices_batch"],
                "devices": d,
                "sweeps": SWEEPS,
                "repeats": cfg["repeats"],
                "min_time_s": cfg["devices_min_time_s"],
                "seed": rnd,
            }
            rec = run_child(spec, log)
            rec["round"] = rnd
            out.append(rec)
            if "fixed_sweeps" in rec:
                fs = rec["fixed_sweeps"]
                log(
                    f"round {rnd} devices={d}: {fs['mdp_sweeps_per_s']:12.0f} "
                    f"MDP-sweeps/s, cpu/wall {fs['cpu_over_wall']:.2f}, peak RSS "
                    f"{rec['maxrss_bytes']['peak'] / 2**20:.0f} MiB"
                )
    return out


def device_scaling(cfg: dict, rounds: list, cores: int) -> list:
    """Per device count: the medians over the rounds, and the speed-up over one."""
    out = []
    for d in cfg["devices"]:
        recs = [r for r in rounds if r.get("devices") == d and "fixed_sweeps" in r]
        if not recs:
            continue
        rates = [r["fixed_sweeps"]["mdp_sweeps_per_s"] for r in recs]

        def median(key, recs=recs):
            return float(statistics.median(r["fixed_sweeps"][key] for r in recs))

        out.append(
            {
                "devices": d,
                "B": cfg["devices_batch"],
                "oversubscribed": d > cores,
                "rounds": len(recs),
                "mdp_sweeps_per_s_rounds": rates,
                "fixed_sweeps": {
                    "mdp_sweeps_per_s": float(statistics.median(rates)),
                    "cpu_over_wall": median("cpu_over_wall"),
                    "compile_s": median("compile_s"),
                },
                "maxrss_bytes": {"peak": max(r["maxrss_bytes"]["peak"] for r in recs)},
                "P_bytes": recs[0]["P_bytes"],
            }
        )
    if out and out[0]["devices"] == 1:
        base = out[0]["fixed_sweeps"]["mdp_sweeps_per_s"]
        for r in out:
            r["speedup_over_one_device"] = r["fixed_sweeps"]["mdp_sweeps_per_s"] / base
    return out


def summary(result: dict) -> dict:
    dev, batches = result["device_scaling"], result["batch_scaling"]
    out = {
        "mdp_sweeps_per_s_by_batch": {
            str(r["B"]): r["fixed_sweeps"]["mdp_sweeps_per_s"]
            for r in batches
            if "fixed_sweeps" in r
        },
        "peak_rss_bytes_by_batch": {
            str(r["B"]): r["maxrss_bytes"]["peak"]
            for r in batches
            if "maxrss_bytes" in r
        },
        "mdp_sweeps_per_s_by_devices": {
            str(r["devices"]): r["fixed_sweeps"]["mdp_sweeps_per_s"] for r in dev
        },
        "speedup_by_devices": {
            str(r["devices"]): r.get("speedup_over_one_device") for r in dev
        },
    }
    for r in batches:
        if "solve_to_tol" in r:
            out["solve_to_tol"] = {
                "B": r["B"],
                "P_bytes": r["P_bytes"],
                "peak_rss_bytes": r["maxrss_bytes"]["peak"],
                **{k: r["solve_to_tol"][k] for k in SOLVE_TO_TOL_SUMMARY},
            }
    return out


def main(argv=None) -> dict:
    parser = harness.parser(__doc__)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument(
        "--main-job", action="store_true", help="measure bilevel-rl run --batch N"
    )
    parser.add_argument("--batch", type=int, default=20_000, help="with --main-job")
    parser.add_argument(
        "--iterations", type=int, help="with --main-job (default: the CLI's)"
    )
    parser.add_argument(
        "--keep", metavar="DIR", help="with --main-job: keep the run's folder in DIR"
    )
    args = parser.parse_args(argv)
    if args.child:
        harness.emit(child(json.loads(args.child)))
        return {}
    if args.main_job:
        rec = main_job.measure(args.batch, args.iterations, harness.log, args.keep)
        prefix = harness.out_prefix(args.out, NAME)
        path = prefix.parent / (prefix.name + ".json")
        main_job.record(rec, path)
        harness.log(f"merged into {path} (main_job)")
        return rec
    cfg = QUICK if args.quick else FULL
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # inherited by the children
    bench = harness.Bench(NAME, args, argv, jax_devices=False)
    result, log = bench.result, bench.log
    result["config"] = config_record(cfg)
    cores = os.cpu_count() or 1
    if max(cfg["devices"]) > cores:
        result["config"]["oversubscription_note"] = (
            f"this machine has {cores} cores: device counts above {cores} "
            "put several XLA host devices on one core (oversubscribed), so they "
            "cannot scale beyond the core count"
        )
    log(
        f"machine: {result['machine']['cpu_model']}, {cores} cores; load "
        f"{result['loadavg_start']}"
    )
    result["batch_scaling"] = batch_scaling(cfg, log)
    result["device_scaling_rounds"] = device_rounds(cfg, log)
    result["device_scaling"] = device_scaling(
        cfg, result["device_scaling_rounds"], cores
    )
    result["summary"] = summary(result)
    return bench.save(plot(result))


if __name__ == "__main__":
    main(sys.argv[1:])
