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
  ``shard_map``). This machine's core count is recorded: with 2 cores, 4 devices
  oversubscribe the cores and cannot be faster than 2;
* the memory high-water mark ``ru_maxrss`` of the process and the bytes of ``P``.

Every configuration runs in its own child process (XLA_FLAGS must be set before JAX
is imported, and ``ru_maxrss`` is then per configuration); the child prints one JSON
object on stdout. Children run one after the other with ``OPENBLAS_NUM_THREADS=1``.
Compile time is reported separately: ``compile_s = first_call_s - median_s``, where
the median is over the timed calls after the first (``jax.block_until_ready``).

Usage::

    python benchmarks/scaling.py            # full run, ~5 min on 2 cores
    python benchmarks/scaling.py --quick    # smoke run, seconds
    python benchmarks/scaling.py --out /tmp/scaling   # writes /tmp/scaling.{json,png}
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

NAME = "scaling"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / NAME
S, A = 20, 4
DTYPE = "float32"
GAMMA, TAU = 0.9, 1.0
SWEEPS = 50
SOLVE_TOL = 1e-6
SOLVE_MAX_ITERS = 10_000
GEN_BLOCK = 5000  # 32 MB of P per block; divides 10^4 and 10^5

FULL = {
    "batches": [1, 10, 100, 1_000, 10_000, 100_000],
    "devices": [1, 2, 4],
    "devices_batch": 10_000,
    "devices_rounds": 3,
    "chunk_probe": {"B": 100_000, "chunk_size": 160},
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
    "chunk_probe": {"B": 100, "chunk_size": 50},
    "devices_min_time_s": 0.0,
    "solve_batch_B": 100,
    "repeats": 3,
    "min_time_s": 0.0,
}


def maxrss_bytes() -> int:
    """``ru_maxrss`` of this process in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ------------------------------------------------------------------ child process


def child(spec: dict) -> dict:
    """One configuration, in a fresh process whose XLA_FLAGS the parent set."""
    rss_start = maxrss_bytes()
    import jax
    import jax.numpy as jnp
    import numpy as np

    from bilevel_rl import solve_batch
    from bilevel_rl.distributed import auto_chunk_size
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
        # jax.vmap(dirichlet_mdp) over GEN_BLOCK keys at a time, each block written
        # in place (donated buffer) into the [B, S, A, S] array: the peak is P plus
        # one block, not several copies of P.
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
        "chunk_per_device": spec.get("chunk_size")
        or auto_chunk_size(mdp, -(-B // devices)),
    }

    if spec.get("sweeps"):
        K = spec["sweeps"]

        def call():
            return solve_batch(
                mdp, reward, tol=0.0, max_iters=K, chunk_size=spec.get("chunk_size")
            )

        t0 = time.perf_counter()
        sol = jax.block_until_ready(call())
        first = time.perf_counter() - t0
        its = np.asarray(sol.iterations)
        assert (its == K).all(), (its.min(), its.max())
        del sol
        walls, cpus = [], []
        while len(walls) < (spec["repeats"] if first < 5.0 else 3) or (
            sum(walls) < spec["min_time_s"] and len(walls) < 200
        ):
            c0, t0 = time.process_time(), time.perf_counter()
            jax.block_until_ready(call())
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        med = float(np.median(walls))
        out["fixed_sweeps"] = {
            "sweeps": K,
            "first_call_s": first,
            "median_s": med,
            "min_s": float(np.min(walls)),
            "repeats": len(walls),
            "compile_s": max(0.0, first - med),
            "cpu_over_wall": float(np.median(cpus)) / med,
            "mdp_sweeps_per_s": B * K / med,
            "us_per_mdp_sweep": 1e6 * med / (B * K),
            "p_bytes_per_s": K * p_bytes / med,
        }

    if spec.get("solve_tol") is not None:

        def solve():
            return solve_batch(
                mdp, reward, tol=spec["solve_tol"], max_iters=SOLVE_MAX_ITERS
            )

        t0 = time.perf_counter()
        sol = jax.block_until_ready(solve())
        first = time.perf_counter() - t0
        c0, t0 = time.process_time(), time.perf_counter()
        sol = jax.block_until_ready(solve())
        wall = time.perf_counter() - t0
        cpu = time.process_time() - c0
        its = np.asarray(sol.iterations)
        res = np.asarray(sol.residual)
        # The solver never asks for less than ROUNDOFF_FACTOR * eps * ||v||_inf
        # (float32: ~1e-5 here, above tol=1e-6); see soft_value_iteration.
        eps = float(jnp.finfo(sol.v.dtype).eps)
        floor = ROUNDOFF_FACTOR * eps * np.abs(np.asarray(sol.v)).max(axis=-1)
        eff = np.maximum(spec["solve_tol"], floor)
        out["solve_to_tol"] = {
            "tol": spec["solve_tol"],
            "max_iters": SOLVE_MAX_ITERS,
            "first_call_s": first,
            "steady_s": wall,
            "compile_s": max(0.0, first - wall),
            "cpu_over_wall": cpu / wall,
            "iterations_min": int(its.min()),
            "iterations_median": float(np.median(its)),
            "iterations_max": int(its.max()),
            "residual_max": float(res.max()),
            "all_below_tol": bool((res <= spec["solve_tol"]).all()),
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


def run_child(spec: dict, log) -> dict:
    env = dict(os.environ)
    env["OPENBLAS_NUM_THREADS"] = "1"
    flags = [
        f
        for f in env.get("XLA_FLAGS", "").split()
        if not f.startswith("--xla_force_host_platform_device_count")
    ]
    flags.append(f"--xla_force_host_platform_device_count={spec['devices']}")
    env["XLA_FLAGS"] = " ".join(flags)
    env.setdefault("JAX_PLATFORMS", "cpu")
    t0 = time.perf_counter()
    load0 = loadavg()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        log(f"  child failed ({proc.returncode}): {proc.stderr[-2000:]}")
        return {**spec, "error": proc.stderr[-2000:]}
    rec = json.loads(proc.stdout.strip().splitlines()[-1])
    rec["spec"] = spec
    rec["process_wall_s"] = time.perf_counter() - t0
    rec["loadavg_before_after"] = [load0, loadavg()]
    rec["xla_flags"] = env["XLA_FLAGS"]
    return rec


# ----------------------------------------------------------------- machine facts


def machine_info() -> dict:
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as fh:
            mem = int(fh.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    l2 = None
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index2/size") as fh:
            l2 = fh.read().strip()
    except OSError:
        pass

    def version(pkg):
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "l2_cache_cpu0": l2,
        "memory_bytes": mem,
        "python": sys.version.split()[0],
        "jax": version("jax"),
        "jaxlib": version("jaxlib"),
        "numpy": version("numpy"),
        "platform": platform.platform(),
    }


# ------------------------------------------------------------------------- plot


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    pts = [r for r in result["batch_scaling"] if "fixed_sweeps" in r]
    ax = axes[0]
    ax.plot(
        [r["B"] for r in pts],
        [r["fixed_sweeps"]["mdp_sweeps_per_s"] for r in pts],
        "-o",
    )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="batch B (MDPs)",
        ylabel="MDP-sweeps / s",
        title=f"solve_batch, 1 device, S={S} A={A} {DTYPE}, {SWEEPS} sweeps",
    )
    ax.grid(True, which="both", lw=0.3)

    ax = axes[1]
    dev = result["device_scaling"]
    cores = result["machine"]["cores"]
    ax.plot(
        [r["devices"] for r in dev],
        [r["fixed_sweeps"]["mdp_sweeps_per_s"] for r in dev],
        "-o",
        label="measured",
    )
    if dev:
        base = dev[0]["fixed_sweeps"]["mdp_sweeps_per_s"] / dev[0]["devices"]
        ds = [r["devices"] for r in dev]
        ax.plot(
            ds,
            [base * min(d, cores) for d in ds],
            ":",
            color="grey",
            label=f"linear up to {cores} cores",
        )
    ax.axvline(cores, color="r", lw=0.6, label=f"{cores} cores")
    ax.set(
        xscale="log",
        xlabel="XLA host devices",
        ylabel="MDP-sweeps / s",
        title=f"B={result['config']['devices_batch']} (>cores = oversubscribed)",
    )
    ax.set_xticks([r["devices"] for r in dev], [str(r["devices"]) for r in dev])
    ax.minorticks_off()
    ax.legend(fontsize=8)

    ax = axes[2]
    ax.plot(
        [r["B"] for r in pts],
        [r["maxrss_bytes"]["peak"] / 2**20 for r in pts],
        "-o",
        label="peak RSS (ru_maxrss)",
    )
    ax.plot(
        [r["B"] for r in pts],
        [r["P_bytes"] / 2**20 for r in pts],
        "--x",
        label="bytes of P",
    )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="batch B",
        ylabel="MiB",
        title="memory per configuration (own process)",
    )
    ax.legend(fontsize=8)
    fig.suptitle(
        f"solve_batch scaling - {result['machine']['cpu_model']}, "
        f"{cores} cores, jax {result['machine']['jax']}"
        + (" (QUICK smoke run)" if result["quick"] else "")
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="output prefix: writes <out>.json and <out>.png",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))), flush=True)
        return {}
    cfg = QUICK if args.quick else FULL
    out = args.out.with_suffix("") if args.out.suffix == ".json" else args.out
    t_start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_start:7.1f}s] {msg}", flush=True)

    common = {"repeats": cfg["repeats"], "min_time_s": cfg["min_time_s"]}
    result = {
        "benchmark": NAME,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(
            ["python", "benchmarks/scaling.py", *(argv or sys.argv[1:])]
        ),
        "quick": args.quick,
        "machine": machine_info(),
        "loadavg_start": loadavg(),
        "config": {
            "S": S,
            "A": A,
            "dtype": DTYPE,
            "gamma": GAMMA,
            "tau": TAU,
            "problem": "jax.vmap(dirichlet_mdp) over keys (Dirichlet(1) rows), "
            f"generated in blocks of {GEN_BLOCK} keys, each written in place into "
            "a donated [B,S,A,S] buffer; reward U[0,1); "
            "rho uniform",
            "sweeps_fixed": SWEEPS,
            "fixed_sweeps_call": f"solve_batch(mdp, reward, tol=0, max_iters={SWEEPS})"
            " (every instance does exactly that many sweeps, checked)",
            "solve_to_tol": {"tol": SOLVE_TOL, "max_iters": SOLVE_MAX_ITERS},
            "batches": cfg["batches"],
            "devices": cfg["devices"],
            "devices_batch": cfg["devices_batch"],
            "solve_batch_B": cfg["solve_batch_B"],
            "repeats_min": cfg["repeats"],
            "min_time_per_measurement_s": cfg["min_time_s"],
            "statistic": "median wall time of the calls after the first "
            "(compiling) call; compile_s = first_call_s - median_s; calls whose "
            "first call takes over 5 s are repeated 3 times",
            "chunking": "solve_batch's automatic chunk (half the L2 cache of P "
            "per chunk), per device",
            "isolation": "each configuration in its own child process "
            "(XLA_FLAGS=--xla_force_host_platform_device_count=N set before "
            "jax is imported, OPENBLAS_NUM_THREADS=1, JAX_PLATFORMS=cpu), run "
            "sequentially; ru_maxrss is therefore per configuration",
            "memory": "ru_maxrss from resource.getrusage(RUSAGE_SELF) (KiB on "
            "Linux, reported here in bytes); includes the JAX runtime "
            "(see after_import_jax)",
        },
    }
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

    result["batch_scaling"] = []
    for B in cfg["batches"]:
        spec = {"B": B, "devices": 1, "sweeps": SWEEPS, **common}
        if B == cfg["solve_batch_B"]:
            spec["solve_tol"] = SOLVE_TOL
        rec = run_child(spec, log)
        result["batch_scaling"].append(rec)
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
        result["batch_scaling"].append(run_child(spec, log))

    # Memory probe: the same fixed-sweep call with a chunk that divides B (the
    # automatic chunk, 163 here, does not divide 10^5), to see whether the peak
    # above P comes from the remainder handling of lax.map(batch_size=...).
    probe = cfg["chunk_probe"]
    spec = {"devices": 1, "sweeps": SWEEPS, **common, **probe}
    rec = run_child(spec, log)
    result["chunk_divides_B_probe"] = rec
    if "fixed_sweeps" in rec:
        log(
            f"probe B={probe['B']} chunk={probe['chunk_size']} (divides B): "
            f"{rec['fixed_sweeps']['mdp_sweeps_per_s']:12.0f} MDP-sweeps/s, peak "
            f"RSS {rec['maxrss_bytes']['peak'] / 2**20:.0f} MiB (after generate "
            f"{rec['maxrss_bytes']['after_generate'] / 2**20:.0f} MiB)"
        )

    # Device counts run in rounds (1, 2, 4, 1, 2, 4, ...), one child each, so that
    # a change of load on this shared machine hits every count; the summary takes
    # the median over the rounds.
    result["device_scaling_rounds"] = []
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
            result["device_scaling_rounds"].append(rec)
            if "fixed_sweeps" in rec:
                fs = rec["fixed_sweeps"]
                log(
                    f"round {rnd} devices={d}: {fs['mdp_sweeps_per_s']:12.0f} "
                    f"MDP-sweeps/s, cpu/wall {fs['cpu_over_wall']:.2f}, peak RSS "
                    f"{rec['maxrss_bytes']['peak'] / 2**20:.0f} MiB"
                )
    result["device_scaling"] = []
    for d in cfg["devices"]:
        recs = [
            r
            for r in result["device_scaling_rounds"]
            if r.get("devices") == d and "fixed_sweeps" in r
        ]
        if not recs:
            continue
        rates = [r["fixed_sweeps"]["mdp_sweeps_per_s"] for r in recs]
        result["device_scaling"].append(
            {
                "devices": d,
                "B": cfg["devices_batch"],
                "oversubscribed": d > cores,
                "rounds": len(recs),
                "mdp_sweeps_per_s_rounds": rates,
                "fixed_sweeps": {
                    "mdp_sweeps_per_s": float(statistics.median(rates)),
                    "cpu_over_wall": float(
                        statistics.median(
                            r["fixed_sweeps"]["cpu_over_wall"] for r in recs
                        )
                    ),
                    "compile_s": float(
                        statistics.median(r["fixed_sweeps"]["compile_s"] for r in recs)
                    ),
                },
                "maxrss_bytes": {"peak": max(r["maxrss_bytes"]["peak"] for r in recs)},
                "P_bytes": recs[0]["P_bytes"],
            }
        )
    dev = result["device_scaling"]
    if dev and dev[0]["devices"] == 1:
        base = dev[0]["fixed_sweeps"]["mdp_sweeps_per_s"]
        for r in dev:
            r["speedup_over_one_device"] = r["fixed_sweeps"]["mdp_sweeps_per_s"] / base

    summary = {
        "mdp_sweeps_per_s_by_batch": {
            str(r["B"]): r["fixed_sweeps"]["mdp_sweeps_per_s"]
            for r in result["batch_scaling"]
            if "fixed_sweeps" in r
        },
        "peak_rss_bytes_by_batch": {
            str(r["B"]): r["maxrss_bytes"]["peak"]
            for r in result["batch_scaling"]
            if "maxrss_bytes" in r
        },
        "mdp_sweeps_per_s_by_devices": {
            str(r["devices"]): r["fixed_sweeps"]["mdp_sweeps_per_s"] for r in dev
        },
        "speedup_by_devices": {
            str(r["devices"]): r.get("speedup_over_one_device") for r in dev
        },
    }
    for r in result["batch_scaling"]:
        if "solve_to_tol" in r:
            summary["solve_to_tol"] = {
                "B": r["B"],
                "P_bytes": r["P_bytes"],
                "peak_rss_bytes": r["maxrss_bytes"]["peak"],
                **{
                    k: r["solve_to_tol"][k]
                    for k in (
                        "steady_s",
                        "first_call_s",
                        "iterations_max",
                        "iterations_median",
                        "residual_max",
                        "effective_tol_max",
                        "all_below_tol",
                        "iterations_hit_max",
                    )
                },
            }
    result["summary"] = summary
    result["loadavg_end"] = loadavg()
    result["total_run_s"] = time.perf_counter() - t_start

    out.parent.mkdir(parents=True, exist_ok=True)
    json_path = out.parent / (out.name + ".json")
    png_path = out.parent / (out.name + ".png")
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    log(f"wrote {json_path}")
    plot(result, png_path)
    log(f"wrote {png_path}; load {result['loadavg_end']}")
    return result


if __name__ == "__main__":
    main()
