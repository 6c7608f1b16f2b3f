"""``bilevel-rl run`` (an algorithm on a batch of a suite) and ``bilevel-rl config``.

Settings come from, in increasing priority: the defaults (the main job: M-SoBiRL on
256 SoBiRL synthetic instances), a TOML file (``--config``), the options. The
resolved configuration is written to ``OUT/config.toml`` before anything runs, so
``bilevel-rl run --resume OUT`` can continue a run killed at any point from its
newest intact checkpoint; the finished result equals an uninterrupted run's
bitwise.

Exit status: 0 when every run stayed finite; 1 when some diverged (the report
names them; the finite runs' results are written); 2 on bad input; 130 when
interrupted (the newest checkpoint stays on disk).
"""

from __future__ import annotations

import argparse
import os
import time
import tomllib

from bilevel_rl.cli.common import (
    Reporter,
    UsageError,
    nonnegative_int,
    positive_float,
    positive_int,
    print_table,
)
from bilevel_rl.experiment.config import DTYPES, RUN_KEYS

RUN_OPTIONS = tuple(f.name for f in RUN_KEYS)
"""Option dests that set the configuration's top-level keys (one per key)."""


def _run_key_option(parser, field) -> None:
    """``--NAME`` for one top-level key, typed and documented by the key itself."""
    kwargs = {"help": field.metadata["help"]}
    if field.name == "dtype":
        kwargs["choices"] = DTYPES
    elif isinstance(field.default, bool):
        raise TypeError(field.name)  # no boolean run keys
    elif isinstance(field.default, int):
        nonneg = field.metadata["nonnegative"]
        kwargs["type"] = nonnegative_int if nonneg else positive_int
    elif isinstance(field.default, float):
        kwargs["type"] = positive_float
    parser.add_argument("--" + field.name.replace("_", "-"), **kwargs)


def add_parser(sub) -> None:
    """Registers ``run`` and ``config``."""
    run = sub.add_parser(
        "run",
        help="run a bilevel algorithm on a batch of problems",
        description="Run a bilevel algorithm on a batch of generated problems in one "
        "compiled call. With no options: M-SoBiRL on 256 SoBiRL synthetic instances "
        "(3000 iterations, float64).",
    )
    run.add_argument("--config", help="TOML file (bilevel-rl config --example)")
    for field in RUN_KEYS:
        _run_key_option(run, field)
    run.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an algorithm option, e.g. -p inner_steps=5 -p "
        "optimizer.learning_rate=0.01 (repeatable; bilevel-rl config --example "
        "--algorithm NAME lists them)",
    )
    run.add_argument(
        "--suite-param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a suite parameter, e.g. --suite-param num_states=20 (repeatable)",
    )
    run.add_argument("--out", help="output folder (default: bilevel_rl_out/run-...)")
    run.add_argument("--resume", metavar="DIR", help="continue the run in DIR")
    run.add_argument("--quiet", action="store_true", help="no progress output")
    multi = run.add_argument_group(
        "multi-process (multi-host) runs",
        "Start the same command in every process. Without --coordinator the "
        "cluster is detected from the environment (SLURM, Open MPI, ...). Process 0 "
        "writes --out (on a file system every process sees, for --resume).",
    )
    multi.add_argument(
        "--distributed", action="store_true", help="join a jax.distributed run"
    )
    multi.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address")
    multi.add_argument("--num-processes", type=positive_int, help="processes in all")
    multi.add_argument("--process-id", type=nonnegative_int, help="this process")
    run.set_defaults(handler=cmd_run)

    config = sub.add_parser(
        "config",
        help="print an example configuration file",
        description="Print (or write with --out) a commented TOML configuration.",
    )
    config.add_argument("--example", action="store_true", required=True)
    config.add_argument("--algorithm", default="m_sobirl")
    config.add_argument("--suite", default=None)
    config.add_argument("--out", help="write the file here instead of printing it")
    config.set_defaults(handler=cmd_config)


def cmd_config(args: argparse.Namespace) -> int:
    from bilevel_rl.experiment.config import ConfigError, example_config

    try:
        text = example_config(args.algorithm, args.suite)
    except ConfigError as err:
        raise UsageError(f"--{err}") from None
    if args.out is None:
        print(text, end="")
        return 0
    try:
        with open(args.out, "x") as fh:
            fh.write(text)
    except FileExistsError:
        raise UsageError(f"--out: {args.out!r} exists; not overwriting") from None
    except OSError as err:
        raise UsageError(f"--out: cannot write {args.out!r} ({err.strerror})") from None
    print(f"wrote {args.out}")
    return 0


# ----------------------------------------------------------------------- run


def _parse_assignments(option: str, items: list[str], base: dict) -> dict:
    """``base`` updated by ``NAME=VALUE`` pairs; VALUE is read as a TOML value (bare
    words as strings); a dotted NAME (``optimizer.learning_rate``) sets a key of a
    table."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"{option}: expected NAME=VALUE, got {item!r}")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        *tables, key = name.strip().split(".")
        target = out
        for table in tables:
            if not isinstance(target.setdefault(table, {}), dict):
                raise UsageError(f"{option}: {table} is not a table ({item!r})")
            target = target[table]
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            value = {**target[key], **value}
        target[key] = value
    return out


def join_processes(args: argparse.Namespace) -> bool:
    """Runs ``jax.distributed.initialize`` for ``--distributed``; ``True`` in the
    process that writes the outputs (process 0, or the only process)."""
    options = {
        "--coordinator": args.coordinator,
        "--num-processes": args.num_processes,
        "--process-id": args.process_id,
    }
    if not args.distributed:
        given = [name for name, value in options.items() if value is not None]
        if given:
            raise UsageError(f"{given[0]}: only with --distributed")
        return True
    from bilevel_rl.devices import initialize

    try:
        index, _ = initialize(*options.values())
    except ValueError as err:
        names = "--coordinator, --num-processes, --process-id"
        raise UsageError(str(err).replace(
            "coordinator_address, num_processes, process_id", names
        ).replace("process_id:", "--process-id:")) from None  # fmt: skip
    except RuntimeError as err:
        raise UsageError(f"--distributed: cannot join the run ({err})") from None
    return index == 0


def resolve_config(args: argparse.Namespace, primary: bool = True):
    """``(config, folder, resumed)`` from the options; validates everything.
    Only the ``primary`` process checks and creates the output folder."""
    from bilevel_rl.experiment.config import ConfigError, load_config, make_config

    if args.resume is not None:
        given = (
            [
                "--" + dest.replace("_", "-")
                for dest in (*RUN_OPTIONS, "config", "out")
                if getattr(args, dest) is not None
            ]
            + (["--param"] if args.param else [])
            + (["--suite-param"] if args.suite_param else [])
        )
        if given:
            raise UsageError(
                f"--resume: the settings come from {args.resume}/config.toml; "
                f"drop {' '.join(given)}"
            )
        path = os.path.join(args.resume, "config.toml")
        if not os.path.isfile(path):
            raise UsageError(f"--resume: no run in {args.resume!r} (no config.toml)")
        try:
            return load_config(path), args.resume, True
        except ConfigError as err:
            raise UsageError(f"--resume: {err}") from None

    values = {}
    try:
        if args.config is not None:
            with open(args.config, "rb") as fh:
                values = tomllib.load(fh)
    except OSError as err:
        raise UsageError(f"--config: cannot read {args.config!r} ({err.strerror})")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"--config: {args.config!r} is malformed TOML ({err})")
    for dest in RUN_OPTIONS:
        if getattr(args, dest) is not None:
            values[dest] = getattr(args, dest)
    for option, table, items in (
        ("--param", "algorithm_params", args.param),
        ("--suite-param", "suite_params", args.suite_param),
    ):
        if items:
            base = values.get(table, {})
            if not isinstance(base, dict):
                raise UsageError(f"--config: {table} must be a table")
            values[table] = _parse_assignments(option, items, base)
    try:
        cfg = make_config(values)
    except ConfigError as err:
        where = f"{args.config}: " if args.config else ""
        raise UsageError(f"{where}{err}") from None
    folder = args.out or os.path.join(
        "bilevel_rl_out",
        f"run-{cfg.algorithm}-{cfg.suite}-{time.strftime('%Y%m%d-%H%M%S')}",
    )
    if not primary:
        return cfg, folder, False
    if os.path.exists(os.path.join(folder, "config.toml")):
        raise UsageError(
            f"--out: {folder!r} holds a run already; continue it with --resume "
            f"{folder} or choose another folder"
        )
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--out: cannot create {folder!r} ({err.strerror})") from None
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise UsageError(f"--out: cannot write to {folder!r}")
    return cfg, folder, False


def cmd_run(args: argparse.Namespace) -> int:
    primary = join_processes(args)
    cfg, folder, resumed = resolve_config(args, primary)
    import jax

    if cfg.dtype == "float64":
        jax.config.update("jax_enable_x64", True)

    from bilevel_rl.cli import outputs
    from bilevel_rl.experiment import run
    from bilevel_rl.experiment.config import build_problems, build_solver, to_toml

    if not resumed and primary:
        outputs.write_atomic(os.path.join(folder, "config.toml"), to_toml(cfg))
    reporter = Reporter(cfg.iterations, "it", quiet=args.quiet or not primary)
    reporter.message(
        f"{'resuming' if resumed else 'running'} {cfg.algorithm} on "
        f"{cfg.num_runs} {cfg.suite} runs -> {folder}"
    )
    last = {}

    def progress(p):
        if not last:
            start = (
                f" (resumed at iteration {p.resumed_from})" if p.resumed_from else ""
            )
            reporter.message(f"compiled in {p.compile_s:.2f} s{start}")
        done_here = p.iteration - p.resumed_from
        last["progress"] = p
        reporter.update(
            p.iteration,
            it_per_s=f"{done_here / max(p.run_s, 1e-9):.1f}",
            median_grad=f"{p.history['grad_norm.p50'][-1]:.3e}",
        )

    problems, keys = build_problems(cfg)
    t0 = time.perf_counter()
    state, history = run(
        build_solver(cfg),
        problems,
        keys,
        cfg.iterations,
        chunk_size=cfg.chunk_size or None,
        segment_length=cfg.log_every,
        record_every=cfg.recording,
        history_dir=os.path.join(folder, "history"),
        checkpoint_dir=os.path.join(folder, "checkpoints"),
        checkpoint_every=cfg.checkpoint_every,
        checkpoint_seconds=cfg.checkpoint_seconds,
        callback=progress,
    )
    reporter.close()
    wall = time.perf_counter() - t0
    p = last.get("progress")
    timing = {
        "wall_s": wall,
        "compile_s": p.compile_s if p else 0.0,
        "run_s": p.run_s if p else 0.0,
        "run_iterations_per_s": (p.iteration - p.resumed_from) / p.run_s
        if p and p.run_s > 0
        else None,
        "resumed_from": p.resumed_from if p else cfg.iterations,
    }
    if not primary:
        return 1 if (history["diverged_at"] >= 0).any() else 0
    report = outputs.write(folder, cfg, problems, state, history, timing)
    _print_summary(report, folder)
    return 1 if report["diverged"] else 0


def _print_summary(report: dict, folder: str) -> None:
    def stat(name):
        s = report["final"].get(name)
        return (
            "n/a"
            if s is None
            else f"{s['median']:.3e} [{s['p10']:.2e}, {s['p90']:.2e}]"
        )

    rows = [
        ("algorithm / suite", f"{report['algorithm']} / {report['suite']}"),
        ("runs", f"{report['runs']} ({report['batch']} x {report['seeds']} seeds)"),
        ("iterations", report["iterations"]),
        ("final ‖ĝ‖ median [p10, p90]", stat("grad_norm")),
    ]
    if "exact_grad_norm" in report["final"]:
        rows.append(("final ‖∇φ‖ median [p10, p90]", stat("exact_grad_norm")))
    rows.append(("final f median [p10, p90]", stat("f")))
    if "optimum_gap_max" in report:
        rows.append(("max |f(x, π*) − f*|", f"{report['optimum_gap_max']:.3e}"))
    rows += [
        ("diverged runs", len(report["diverged"])),
        ("compile time", f"{report['compile_s']:.2f} s"),
        ("run time", f"{report['run_s']:.2f} s"),
        ("wall time", f"{report['wall_s']:.2f} s"),
        ("output folder", folder),
    ]
    print_table(rows)
    for d in report["diverged"][:10]:
        print(
            f"diverged: run {d['run']} (instance {d['instance']}, seed "
            f"{d['seed_index']}) at iteration {d['iteration']}"
        )
    if len(report["diverged"]) > 10:
        print(f"... and {len(report['diverged']) - 10} more (metrics.json)")
