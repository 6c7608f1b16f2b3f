"""``bilevel-rl list`` (algorithms and suites) and ``bilevel-rl bench``."""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys

from bilevel_rl.cli.common import UsageError


def add_parser(sub) -> None:
    """Registers ``list`` and ``bench``."""
    lister = sub.add_parser("list", help="list the algorithms and problem suites")
    lister.set_defaults(handler=cmd_list)

    bench = sub.add_parser(
        "bench",
        help="run the benchmark scripts",
        description="Run benchmarks/<name>.py of a source checkout; each writes "
        "benchmarks/results/<name>.json and .png (or under --out).",
    )
    bench.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    bench.add_argument("--quick", action="store_true", help="tiny smoke sizes")
    bench.add_argument("--list", action="store_true", help="list the benchmarks")
    bench.add_argument("--dir", help="benchmarks folder (default: the checkout's)")
    bench.add_argument("--out", help="result folder (default: the scripts' own)")
    bench.set_defaults(handler=cmd_bench)


def cmd_list(args: argparse.Namespace) -> int:
    from bilevel_rl.cli.solve import solve_suites
    from bilevel_rl.experiment.config import ALGORITHMS, SUITES

    sections = [
        (
            "algorithms (bilevel-rl run --algorithm)",
            {name: module.DESCRIPTION for name, module in ALGORITHMS.items()},
        ),
        (
            "suites (bilevel-rl run --suite)",
            {name: suite.description for name, suite in SUITES.items()},
        ),
    ]
    for title, entries in sections:
        print(title)
        for name, description in entries.items():
            print(f"  {name:12s} {description}")
    print("suites (bilevel-rl solve --suite)")
    for name, (text, _) in solve_suites().items():
        print(f"  {name:12s} {text}")
    return 0


def benchmark_dir(folder: str | None) -> pathlib.Path:
    """``folder``, else ``./benchmarks``, else the source checkout's ``benchmarks/``."""
    if folder is not None:
        path = pathlib.Path(folder)
    else:
        candidates = [
            pathlib.Path.cwd() / "benchmarks",
            pathlib.Path(__file__).resolve().parents[2] / "benchmarks",
        ]
        path = next(
            (p for p in candidates if (p / "harness.py").is_file()), candidates[0]
        )
    if not (path / "harness.py").is_file():
        raise UsageError(
            f"--dir: no benchmarks folder at {str(path)!r}; run from a source "
            "checkout or pass --dir"
        )
    return path


def cmd_bench(args: argparse.Namespace) -> int:
    folder = benchmark_dir(args.dir)
    known = sorted(p.stem for p in folder.glob("*.py") if p.stem != "harness")
    if args.list:
        print("\n".join(known))
        return 0
    unknown = [n for n in args.names if n not in known]
    if unknown:
        raise UsageError(
            f"names: unknown benchmark {unknown[0]!r}; choose from {known}"
        )
    if args.out is not None:
        os.makedirs(args.out, exist_ok=True)
    status = 0
    for name in args.names or known:
        command = [sys.executable, str(folder / f"{name}.py")]
        if args.quick:
            command.append("--quick")
        if args.out is not None:
            command += ["--out", os.path.join(args.out, name)]
        print(f"== {name}: {' '.join(command[1:])}", flush=True)
        status = max(status, subprocess.run(command).returncode)
    return status
