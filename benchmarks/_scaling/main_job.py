"""``scaling.py --main-job``: the resources of ``bilevel-rl run --batch N``.

Runs the command line's main job (M-SoBiRL on the SoBiRL synthetic suite, float64,
default iterations unless ``--iterations`` is given) in a child process and records:
wall time; the child's peak RSS (``ru_maxrss`` from ``wait4``, the same number as
``getrusage(RUSAGE_CHILDREN)`` for this one child); the bytes it wrote
(``/proc/<pid>/io`` read after it exits and before it is reaped: ``wchar``, every byte
passed to ``write``, including checkpoints deleted later; ``write_bytes``, what reached
the disk); the output folder's sizes (history, largest checkpoint) and the solver
state's size (the checkpoint's state leaves: all but the last two, which are the
per-run finite flags and finite-step counts); and the run's own ``metrics.json``
timings, with the load average before and after (the 2 cores may be shared). The
record is merged into ``results/scaling.json`` under ``main_job``
(keyed by batch and iterations), keeping every other key.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import harness
import numpy as np


def _sizes(folder: Path) -> dict:
    def total(path: Path) -> int:
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())

    ckpts = sorted((folder / "checkpoints").glob("ckpt-*.npz"))
    segments = sorted((folder / "history").glob("segment-*.npz"))
    newest = ckpts[-1]
    with zipfile.ZipFile(newest) as zf:
        leaves = sorted(
            (n for n in zf.namelist() if n.startswith("leaf_")),
            key=lambda n: int(n[5:-4]),
        )
    with np.load(newest) as ckpt:
        state = sum(ckpt[n[:-4]].nbytes for n in leaves[:-2])
        carry = sum(ckpt[n[:-4]].nbytes for n in leaves)
    largest = max(p.stat().st_size for p in ckpts)
    return {
        "output_bytes": total(folder),
        "history_bytes": total(folder / "history"),
        "history_segments": len(segments),
        "largest_segment_bytes": max(p.stat().st_size for p in segments),
        "largest_checkpoint_bytes": largest,
        "solver_state_bytes": int(state),
        "checkpoint_arrays_bytes": int(carry),
        "checkpoint_over_state": largest / state,
    }


def measure(batch: int, iterations: int | None, log, keep: str | None = None) -> dict:
    """One ``bilevel-rl run --batch N`` in a child; its resources."""
    folder = Path(tempfile.mkdtemp(prefix="main_job_", dir=keep)) / "out"
    cmd = [sys.executable, "-m", "bilevel_rl.cli", "run", "--batch", str(batch)]
    if iterations is not None:
        cmd += ["--iterations", str(iterations)]
    cmd += ["--out", str(folder)]
    log(f"main job: {' '.join(cmd[1:])}")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    stderr_path = folder.parent / "stderr.log"
    load0 = harness.loadavg()
    t0 = time.perf_counter()
    with open(stderr_path, "w") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err)
        stdout = proc.stdout.read().decode()
        # Exited but not reaped: its /proc entry still holds its I/O counters.
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        wall = time.perf_counter() - t0
        text = Path(f"/proc/{proc.pid}/io").read_text()
        io = dict(line.split(": ") for line in text.splitlines() if line)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    rec = {
        "command": "bilevel-rl " + " ".join(cmd[3:-2]),
        "batch": batch,
        "iterations": iterations,
        "exit_status": proc.returncode,
        "wall_s": wall,
        "peak_rss_bytes": usage.ru_maxrss * 1024,
        "io": {
            k: int(io[k]) for k in ("wchar", "write_bytes", "cancelled_write_bytes")
        },
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "loadavg_before_after": [load0, harness.loadavg()],
        "cores": os.cpu_count(),
    }
    if proc.returncode != 0:
        rec["stderr_tail"] = stderr_path.read_text()[-3000:]
        log(f"  failed (exit {proc.returncode}): {rec['stderr_tail'][-500:]}")
        return rec
    metrics = json.loads((folder / "metrics.json").read_text())
    rec["iterations"] = metrics["iterations"]
    rec["runs"] = metrics["runs"]
    rec["record_every"] = metrics["record_every"]
    rec["run"] = {
        k: metrics[k] for k in ("compile_s", "run_s", "wall_s", "run_iterations_per_s")
    }
    rec["run"]["us_per_instance_iteration"] = (
        1e6 * metrics["run_s"] / (metrics["runs"] * metrics["iterations"])
    )
    rec["final_exact_f_max"] = metrics["final"]["exact_f"]["max"]
    rec["diverged"] = len(metrics["diverged"])
    rec.update(_sizes(folder))
    rec["summary_table"] = stdout
    if keep is None:
        shutil.rmtree(folder.parent)
    else:
        rec["output_folder"] = str(folder)
    log(
        f"  {rec['wall_s']:.1f} s wall ({rec['run']['run_s']:.1f} s running, "
        f"{rec['run']['compile_s']:.1f} s compiling), peak RSS "
        f"{rec['peak_rss_bytes'] / 2**30:.2f} GiB, wrote "
        f"{rec['io']['wchar'] / 2**20:.0f} MiB, history "
        f"{rec['history_bytes'] / 2**20:.0f} MiB, largest checkpoint "
        f"{rec['largest_checkpoint_bytes'] / 2**20:.1f} MiB = "
        f"{rec['checkpoint_over_state']:.3f} x the state"
    )
    return rec


def record(rec: dict, path: Path) -> None:
    """Merges ``rec`` into ``path``'s ``main_job`` (replacing the entry of the same
    batch and iterations); every other key of the file is kept."""
    data = json.loads(path.read_text()) if path.exists() else {}
    job = data.setdefault(
        "main_job",
        {
            "what": "bilevel-rl run --batch N (M-SoBiRL, SoBiRL synthetic suite, "
            "float64) in a child process: python benchmarks/scaling.py --main-job "
            "--batch N [--iterations K]",
            "runs": [],
        },
    )
    job["runs"] = [
        r
        for r in job["runs"]
        if (r["batch"], r.get("iterations")) != (rec["batch"], rec.get("iterations"))
    ] + [{**rec, "created": harness.now(), "machine": harness.machine_info(
        jax_devices=False)}]  # fmt: skip
    job["runs"].sort(key=lambda r: (r["batch"], r.get("iterations") or 0))
    harness.write_json(data, path)
