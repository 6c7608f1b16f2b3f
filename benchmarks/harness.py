"""What every benchmark script shares: timing, machine facts, result files, CLI.

The scripts run as ``python benchmarks/NAME.py``, so this module imports as
``harness``. Import it before NumPy, SciPy or JAX: it pins OpenBLAS to one thread
(unless the caller set ``OPENBLAS_NUM_THREADS``), so that NumPy baselines run on one
thread like the XLA programs they are compared with, and so that the LAPACK calls
of JAX on CPU (SciPy's OpenBLAS) do not spin extra threads next to XLA's. Importing
it loads neither NumPy nor JAX and starts no JAX backend, so a script may still set
``XLA_FLAGS`` (:func:`set_host_devices`) afterwards.

Every script writes ``<out>.json`` (:class:`Bench`: an envelope of ``benchmark``,
``created``, ``command``, ``quick``, ``machine``, ``loadavg_start``/``_end`` and
``total_run_s`` around the script's own fields) and ``<out>.png`` beside it.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

OPENBLAS_PRESET = os.environ.get("OPENBLAS_NUM_THREADS")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

RESULTS = Path(__file__).resolve().parent / "results"
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
_STARTED = time.perf_counter()


def log(msg: str) -> None:
    """Prints ``msg`` after the seconds since this process imported the harness."""
    print(f"[{time.perf_counter() - _STARTED:7.1f}s] {msg}", flush=True)


# ----------------------------------------------------------------------- timing


def once(fn):
    """One call of ``fn`` to completion: ``(wall_s, cpu_s, output)``."""
    import jax

    c0, t0 = time.process_time(), time.perf_counter()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - t0, time.process_time() - c0, out


def timed(
    fn,
    *,
    repeats: int = 5,
    min_time_s: float = 0.0,
    max_repeats: int = 50,
    long_call_s: float = 1.0,
    long_repeats: int = 3,
    keep=lambda out: out,
) -> dict:
    """A first (compiling) call of ``fn``, then the steady state.

    The steady state is ``repeats`` timed calls, more while less than ``min_time_s``
    has been timed (at most ``max_repeats``), and only ``long_repeats`` when the
    first timed call takes over ``long_call_s``. Returns :func:`stats` of the record;
    its ``_out`` is ``keep`` of the first call's output (the output itself is not
    held while the steady state runs unless ``keep`` holds it).
    """
    first, _, out = once(fn)
    out = keep(out)
    walls, cpus = [], []
    while len(walls) < (
        repeats if not walls or walls[0] <= long_call_s else long_repeats
    ) or (sum(walls) < min_time_s and len(walls) < max_repeats):
        wall, cpu, _ = once(fn)
        walls.append(wall)
        cpus.append(cpu)
    return stats({"first_call_s": first, "_walls": walls, "_cpus": cpus, "_out": out})


def interleaved(fns: dict, repeats: int) -> dict:
    """:func:`timed` for every ``name -> fn``, the repeats taken round-robin.

    Every ``fn`` has its first call before any is timed; then each round calls every
    ``fn`` once, so that a burst of load from another process hits all of them.
    """
    recs = {}
    for name, fn in fns.items():
        first, _, out = once(fn)
        recs[name] = {"first_call_s": first, "_walls": [], "_cpus": [], "_out": out}
    for _ in range(repeats):
        for name, fn in fns.items():
            wall, cpu, _ = once(fn)
            recs[name]["_walls"].append(wall)
            recs[name]["_cpus"].append(cpu)
    return {name: stats(rec) for name, rec in recs.items()}


def stats(record: dict) -> dict:
    """Median, minimum, CPU time and compile time of the timed calls of ``record``.

    ``compile_s = first_call_s - median_s`` (the first call also compiles), unless
    the record already has a ``compile_s`` (measured on its own).
    """
    walls, cpus = record["_walls"], record["_cpus"]
    record["median_s"] = statistics.median(walls)
    record["min_s"] = min(walls)
    record["cpu_median_s"] = statistics.median(cpus)
    record["cpu_over_wall"] = record["cpu_median_s"] / record["median_s"]
    record["repeats"] = len(walls)
    record.setdefault(
        "compile_s", max(0.0, record["first_call_s"] - record["median_s"])
    )
    return record


def public(record: dict, *, samples: bool = False) -> dict:
    """``record`` without its private fields (``_out``...); ``all_s``: every wall."""
    out = {k: v for k, v in record.items() if not k.startswith("_")}
    if samples:
        out["all_s"] = list(record["_walls"])
    return out


def aot_compile(fn, *args):
    """Compiles ``jax.jit(fn)`` for ``args`` ahead of time: ``(compiled, seconds)``."""
    import jax

    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - t0


# ---------------------------------------------------------------- machine facts


def _cpuinfo(key: str) -> str:
    """The first ``key : value`` of ``/proc/cpuinfo`` (Linux); ``""`` elsewhere."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo``, else ``platform``'s guess."""
    return _cpuinfo("model name") or platform.processor()


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read().strip()


def cpu_caches() -> dict:
    """``L1d``, ``L1i``, ``L2``, ``L3`` of cpu0: size and the CPUs that share it."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    caches = {}
    try:
        for entry in sorted(os.listdir(base)):
            d = os.path.join(base, entry)
            if not os.path.isfile(os.path.join(d, "level")):
                continue
            kind = _read(os.path.join(d, "type"))
            tag = f"L{_read(os.path.join(d, 'level'))}"
            tag += {"Data": "d", "Instruction": "i"}.get(kind, "")
            shared = os.path.join(d, "shared_cpu_list")
            caches[tag] = {
                "size": _read(os.path.join(d, "size")),
                "shared_cpu_list": _read(shared) if os.path.exists(shared) else "",
            }
    except OSError:
        pass
    return caches


def _memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            return int(fh.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def machine_info(*, jax_devices: bool = True) -> dict:
    """CPU, caches, memory, library versions, JAX devices and thread settings.

    ``jax_devices=False`` leaves out the JAX backend (a parent process whose
    children hold the devices then starts none itself).
    """
    flags = _cpuinfo("flags").split()
    isa = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile")
    info = {
        "date": now(),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "caches": cpu_caches(),
        "isa": [f for f in isa if f in flags],
        "memory_bytes": _memory_bytes(),
        "python": platform.python_version(),
        **{pkg: _version(pkg) for pkg in ("jax", "jaxlib", "numpy", "scipy")},
        "platform": platform.platform(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "openblas_num_threads": {
            "used": os.environ.get("OPENBLAS_NUM_THREADS"),
            "preset_by_caller": OPENBLAS_PRESET,
        },
    }
    if jax_devices:
        import jax

        info["backend"] = jax.default_backend()
        info["device_kind"] = jax.devices()[0].device_kind
        info["devices"] = [str(d) for d in jax.devices()]
    return info


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ------------------------------------------------------------- host devices


def set_host_devices(count: int, env=None, *, replace: bool = False) -> str:
    """Asks XLA for ``count`` CPU devices in ``env`` (default ``os.environ``).

    Takes effect in a process whose JAX backend has not started yet. Without
    ``replace``, a device count the caller already put in ``XLA_FLAGS`` is kept.
    Returns the new ``XLA_FLAGS``.
    """
    env = os.environ if env is None else env
    flags = env.get("XLA_FLAGS", "").split()
    if replace or not any(f.startswith(DEVICE_COUNT_FLAG) for f in flags):
        flags = [f for f in flags if not f.startswith(DEVICE_COUNT_FLAG)]
        flags.append(f"{DEVICE_COUNT_FLAG}={count}")
    env["XLA_FLAGS"] = " ".join(flags)
    return env["XLA_FLAGS"]


def emit(record) -> None:
    """A child process's answer: one JSON line on stdout (see :func:`run_child`)."""
    print(json.dumps(record, default=_json_default), flush=True)


def run_child(args: list[str], *, devices: int | None = None, check=False) -> dict:
    """Runs ``python *args`` and returns the JSON of its last stdout line.

    ``devices``: the child's XLA CPU device count (replacing the parent's). On a
    non-zero exit: raises ``RuntimeError`` if ``check``, else returns
    ``{"error": <end of stderr>}``.
    """
    env = dict(os.environ)
    if devices is not None:
        set_host_devices(devices, env, replace=True)
    proc = subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        if check:
            raise RuntimeError(f"child {args} failed:\n{proc.stderr[-4000:]}")
        return {"error": proc.stderr[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------ command line, files


def parser(doc: str, **kwargs) -> argparse.ArgumentParser:
    """The common options: ``--quick`` (smoke sizes) and ``--out`` (path prefix)."""
    p = argparse.ArgumentParser(description=doc.strip().splitlines()[0], **kwargs)
    p.add_argument("--quick", action="store_true", help="tiny smoke run")
    p.add_argument(
        "--out",
        type=Path,
        help="output prefix: writes <out>.json and <out>.png "
        "(default: benchmarks/results/<name>)",
    )
    return p


def out_prefix(out: Path | None, name: str) -> Path:
    """``out`` without a ``.json``/``.png`` suffix, or ``results/<name>``."""
    if out is None:
        return RESULTS / name
    out = Path(out)
    return out.with_suffix("") if out.suffix in (".json", ".png") else out


def _json_default(obj):
    if hasattr(obj, "tolist"):  # NumPy/JAX arrays and scalars
        return obj.tolist()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def write_json(obj, path: Path, indent: int = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=indent, default=_json_default) + "\n")


def pyplot():
    """``matplotlib.pyplot`` on the file-only ``Agg`` backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def log_axes(ax, **labels) -> None:
    """Log-scaled ``x`` and ``y`` axes of ``ax``, plus ``labels`` (``ax.set``)."""
    ax.set(xscale="log", yscale="log", **labels)


def run_title(what: str, result: dict) -> str:
    """``what - CPU, cores, jax version`` of a result, marking a ``--quick`` run."""
    m = result["machine"]
    title = f"{what} - {m['cpu_model']}, {m['cores']} cores, jax {m['jax']}"
    return title + (" (QUICK smoke run)" if result["quick"] else "")


def save_png(fig, path: Path, dpi: int = 110) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)


class Bench:
    """One benchmark run: its result record, a timestamped log and the output files.

    ``result`` starts as the envelope (see the module docstring); the script adds
    its fields, then calls :meth:`save` with the figure.
    """

    def __init__(self, name: str, args, argv=None, *, jax_devices: bool = True):
        self.t0 = time.perf_counter()
        self.out = out_prefix(args.out, name)
        argv = sys.argv[1:] if argv is None else argv
        self.result = {
            "benchmark": name,
            "created": now(),
            "command": " ".join(["python", f"benchmarks/{name}.py", *argv]),
            "quick": bool(args.quick),
            "machine": machine_info(jax_devices=jax_devices),
            "loadavg_start": loadavg(),
        }

    log = staticmethod(log)

    def save(self, fig, *, dpi: int = 110) -> dict:
        """Writes ``<out>.json`` (closing the envelope) and ``fig`` as ``<out>.png``."""
        self.result["loadavg_end"] = loadavg()
        self.result["total_run_s"] = time.perf_counter() - self.t0
        json_path = self.out.parent / (self.out.name + ".json")
        png_path = self.out.parent / (self.out.name + ".png")
        write_json(self.result, json_path)
        save_png(fig, png_path, dpi)
        self.log(f"wrote {json_path} and {png_path.name}")
        return self.result
