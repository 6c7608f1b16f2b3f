"""``bilevel-rl deep``: online RLHF on a gymnax environment (the deep track).

One compiled call runs ``--seeds`` seeds of :func:`bilevel_rl.deep.rlhf.step`
vmapped, ``--checkpoint-every`` iterations at a time; after each block the state
and the metrics so far are checkpointed, so ``bilevel-rl deep --resume OUT``
continues a run killed at any point and ends bitwise equal to an uninterrupted
one. Defaults: deep SoBiRL (``one_step`` estimator) on Breakout-MinAtar, 3 seeds,
1M environment steps and 3000 queries per seed, the follower's default
:class:`~bilevel_rl.deep.ppo.Params`.

Outputs in ``--out``: ``config.json`` (every setting, written first),
``metrics.npz`` (each metric ``[seeds, iterations]``), ``summary.json`` (final
return per seed, queries, fresh-pair accuracy, timings), ``returns.png`` and
``checkpoints/``. Exit status: 0 when every seed stayed finite, 1 when some did
not (named), 2 on bad input, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

from bilevel_rl.cli.common import (
    Reporter,
    UsageError,
    nonnegative_int,
    positive_int,
    print_table,
)

DEFAULTS = {
    "env": "Breakout-MinAtar",
    "seeds": 3,
    "seed": 0,
    "steps": 1_000_000,
    "queries": 3000,
    "checkpoint_every": 20,
    "rlhf": {},
    "ppo": {},
    "env_params": {},
}
"""Top-level settings of a run (``config.json``); ``rlhf``/``ppo``/``env_params``
replace fields of :class:`rlhf.Params`, :class:`ppo.Params` and the
environment's ``EnvParams``."""


def add_parser(sub) -> None:
    """Registers ``deep``."""
    p = sub.add_parser(
        "deep",
        help="online RLHF on a gymnax environment (deep SoBiRL, DRLHF, ...)",
        description="Learn a reward model from preferences over fragments of a "
        "soft-PPO follower's rollouts on a gymnax environment, seeds vmapped in one "
        "compiled call. With no options: deep SoBiRL on Breakout-MinAtar, 3 seeds, "
        "1M environment steps and 3000 queries per seed.",
    )
    p.add_argument("--env", help=f"gymnax environment (default {DEFAULTS['env']})")
    p.add_argument("--method", help="sobirl, drlhf, two_stage or oracle")
    p.add_argument("--estimator", help="sobirl's score term: one_step or branch")
    p.add_argument("--seeds", type=positive_int, help="seeds vmapped (default 3)")
    p.add_argument("--seed", type=nonnegative_int, help="first PRNG seed (default 0)")
    p.add_argument("--steps", type=positive_int, help="environment steps per seed")
    p.add_argument("--queries", type=positive_int, help="query budget per seed")
    p.add_argument(
        "--checkpoint-every", type=positive_int, help="iterations per checkpoint"
    )
    for option, table, what in (
        ("-p", "rlhf", "an RLHF option (bilevel_rl.deep.rlhf.Params)"),
        ("--ppo", "ppo", "a follower option (bilevel_rl.deep.ppo.Params)"),
        ("--env-param", "env_params", "a field of the environment's EnvParams"),
    ):
        names = (option, "--param") if option == "-p" else (option,)
        p.add_argument(
            *names, dest=table, action="append", default=[], metavar="NAME=VALUE",
            help=f"{what}, e.g. {_EXAMPLES[table]} (repeatable)",
        )  # fmt: skip
    p.add_argument("--out", help="output folder (default: bilevel_rl_out/deep-...)")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(handler=cmd_deep)


_EXAMPLES = {
    "rlhf": "-p fragment_length=25",
    "ppo": "--ppo num_envs=32",
    "env_params": "--env-param max_steps_in_episode=1000",
}
_TOP = ("env", "seeds", "seed", "steps", "queries", "checkpoint_every")


def resolve_config(args: argparse.Namespace) -> tuple[dict, str, bool]:
    """``(config, folder, resumed)``; the config is validated by :func:`build`."""
    from bilevel_rl.cli.run import _parse_assignments

    if args.resume is not None:
        given = [
            "--" + name.replace("_", "-")
            for name in (*_TOP, "method", "estimator", "out")
            if getattr(args, name) is not None
        ] + [f"--{t}" for t in ("rlhf", "ppo", "env_params") if getattr(args, t)]
        if given:
            raise UsageError(
                f"--resume: the settings come from {args.resume}/config.json; "
                f"drop {' '.join(given)}"
            )
        path = os.path.join(args.resume, "config.json")
        try:
            with open(path) as fh:
                return json.load(fh), args.resume, True
        except FileNotFoundError:
            raise UsageError(
                f"--resume: no run in {args.resume!r} (no config.json)"
            ) from None
        except (OSError, ValueError) as err:
            raise UsageError(f"--resume: cannot read {path!r} ({err})") from None

    cfg = json.loads(json.dumps(DEFAULTS))
    for name in _TOP:
        if getattr(args, name) is not None:
            cfg[name] = getattr(args, name)
    option = {"rlhf": "--param", "ppo": "--ppo", "env_params": "--env-param"}
    for table in ("rlhf", "ppo", "env_params"):
        cfg[table] = _parse_assignments(option[table], getattr(args, table), {})
    for name in ("method", "estimator"):
        if getattr(args, name) is not None:
            cfg["rlhf"][name] = getattr(args, name)
    folder = args.out or os.path.join(
        "bilevel_rl_out",
        f"deep-{cfg['rlhf'].get('method', 'sobirl')}-{cfg['env']}-"
        f"{time.strftime('%Y%m%d-%H%M%S')}",
    )
    if os.path.exists(os.path.join(folder, "config.json")):
        raise UsageError(
            f"--out: {folder!r} holds a run already; continue it with --resume "
            f"{folder} or choose another folder"
        )
    return cfg, folder, False


@dataclasses.dataclass(frozen=True)
class Run:
    """A validated configuration: the environment, both ``Params``, the sizes."""

    env: object
    env_params: object
    params: object  # rlhf.Params, its queries_per_iteration set from the budget
    ppo_params: object
    iterations: int
    seeds: int
    seed: int
    checkpoint_every: int


def build(cfg: dict) -> Run:
    """Validates ``cfg`` (every error names its setting) before anything compiles."""
    try:
        from bilevel_rl.deep import envs, ppo, rlhf
    except ImportError as err:
        raise UsageError(
            f"deep: needs the envs extra ({err}); pip install 'bilevel_rl[envs]'"
        ) from None

    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise UsageError(f"config.json: unknown setting(s) {unknown}")
    try:
        env, env_params = envs.make(cfg["env"], **cfg["env_params"])
        envs.num_discrete_actions(env, env_params)
    except ValueError as err:
        raise UsageError(f"--{err}".replace("--env_params", "--env-param")) from None
    tables = (("--ppo", ppo.Params, "ppo"), ("--param", rlhf.Params, "rlhf"))
    built = {}
    for option, cls, table in tables:
        values = dict(cfg[table])
        for name, value in values.items():
            if isinstance(value, list):  # JSON/TOML arrays: the tuple fields
                values[name] = tuple(value)
        fields = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(values) - fields)
        if bad:
            raise UsageError(
                f"{option}: unknown option(s) {bad}; known: {sorted(fields)}"
            )
        try:
            built[table] = cls(**values)
        except (TypeError, ValueError) as err:
            raise UsageError(f"{option} {err}") from None
    ppo_params = built["ppo"]
    per_iteration = built["rlhf"].ppo_updates * ppo_params.batch_size
    iterations = cfg["steps"] // per_iteration
    if iterations < 1:
        raise UsageError(
            f"--steps: {cfg['steps']} is less than one iteration's "
            f"{per_iteration} environment steps"
        )
    try:
        params = rlhf.with_query_budget(built["rlhf"], iterations, cfg["queries"])
        rlhf.check(env, env_params, params, ppo_params)
    except ValueError as err:
        raise UsageError(f"--param {err}") from None
    return Run(
        env, env_params, params, ppo_params, iterations,
        cfg["seeds"], cfg["seed"], cfg["checkpoint_every"],
    )  # fmt: skip


def cmd_deep(args: argparse.Namespace) -> int:
    cfg, folder, resumed = resolve_config(args)
    run = build(cfg)
    from bilevel_rl.cli import outputs

    if not resumed:
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as err:
            raise UsageError(f"--out: cannot create {folder!r} ({err.strerror})")
        outputs.write_atomic(
            os.path.join(folder, "config.json"), json.dumps(cfg, indent=2) + "\n"
        )
    reporter = Reporter(run.iterations, "it", quiet=args.quiet)
    reporter.message(
        f"{'resuming' if resumed else 'running'} {run.params.method} on {cfg['env']}, "
        f"{run.seeds} seeds x {run.iterations} iterations "
        f"({run.iterations * run.ppo_params.batch_size * run.params.ppo_updates:,} "
        f"steps) -> {folder}"
    )
    state, metrics, timing = execute(run, folder, reporter)
    reporter.close()
    report = write_outputs(folder, cfg, run, metrics, timing)
    per_seed = ", ".join(f"{r:.2f}" for r in report["final_return"])
    rows = [
        ("method / env", f"{run.params.method} / {cfg['env']}"),
        ("seeds x iterations", f"{run.seeds} x {run.iterations}"),
        ("env steps per seed", f"{report['env_steps']:,}"),
        ("queries per seed", report["queries"]),
        ("final return per seed", per_seed),
        ("final return mean", f"{report['final_return_mean']:.2f}"),
        ("fresh-pair accuracy", f"{report['fresh_accuracy_mean']:.3f}"),
        ("non-finite seeds", report["nonfinite_seeds"] or "none"),
        ("compile time", f"{timing['compile_s']:.2f} s"),
        ("run time", f"{timing['run_s']:.2f} s"),
        ("output folder", folder),
    ]  # fmt: skip
    print_table(rows)
    return 1 if report["nonfinite_seeds"] else 0


def execute(run: Run, folder: str, reporter: Reporter):
    """Runs (or continues) ``run`` block by block with a checkpoint after each.

    Returns:
        ``(state, metrics, timing)``: the final vmapped state, each metric as a
        NumPy ``[seeds, iterations]`` array, compile and run seconds.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    from bilevel_rl.deep import rlhf
    from bilevel_rl.experiment import checkpoint

    keys = jax.random.split(jax.random.key(run.seed), run.seeds)
    args = (run.env, run.env_params, run.params, run.ppo_params)

    def init(keys):
        return jax.vmap(lambda k: rlhf.init(k, *args, run.iterations))(keys)

    def block(state, iterations):
        def body(state, iteration):
            return jax.vmap(lambda s: rlhf.step(s, iteration, *args))(state)

        return jax.lax.scan(body, state, iterations)

    block = jax.jit(block)
    t0 = time.perf_counter()
    ckdir = os.path.join(folder, "checkpoints")
    done, chunks = 0, []
    like = jax.eval_shape(init, keys)  # a resumed run never builds a fresh state
    restored = checkpoint.load_latest(ckdir, like) if os.path.isdir(ckdir) else None
    if restored is None:
        state = jax.jit(init)(keys)
    else:
        state, extras, meta = restored
        done = int(meta["iteration"])
        chunks = [extras] if done else []
        reporter.message(f"resumed at iteration {done}")
    compile_s, run_s = 0.0, 0.0
    compiled = {}
    start = done
    steps_per_iteration = run.seeds * run.params.ppo_updates * run.ppo_params.batch_size
    while done < run.iterations:
        n = min(run.checkpoint_every, run.iterations - done)
        its = jnp.arange(done, done + n, dtype=jnp.int32)
        if n not in compiled:
            t = time.perf_counter()
            compiled[n] = block.lower(state, its).compile()
            compile_s += time.perf_counter() - t
        t = time.perf_counter()
        state, m = compiled[n](state, its)
        m = {k: np.moveaxis(np.asarray(v), 0, 1) for k, v in m.items()}
        run_s += time.perf_counter() - t
        chunks.append(m)
        done += n
        so_far = {k: np.concatenate([c[k] for c in chunks], 1) for k in m}
        chunks = [so_far]
        rate = (done - start) * steps_per_iteration / max(run_s, 1e-9)
        checkpoint.save(
            ckdir, done, state, {"iterations": run.iterations},
            extras=so_far,
        )  # fmt: skip
        reporter.update(
            done,
            steps_per_s=f"{rate:,.0f}",
            mean_return=f"{so_far['mean_return'][:, -1].mean():.2f}",
            queries=int(so_far["queries"][0, -1]),
        )  # fmt: skip
    metrics = chunks[0] if chunks else {}
    timing = {
        "wall_s": time.perf_counter() - t0,
        "compile_s": compile_s,
        "run_s": run_s,
        "resumed_from": start,
    }
    return state, metrics, timing


def final_returns(metrics: dict, tail_fraction: float = 0.1):
    """``[seeds]`` mean of the running true return over the last
    ``tail_fraction`` of the iterations (at least one)."""
    returns = metrics["mean_return"]
    tail = max(1, int(returns.shape[1] * tail_fraction))
    return returns[:, -tail:].mean(1)


def write_outputs(folder: str, cfg: dict, run: Run, metrics: dict, timing: dict):
    """``metrics.npz``, ``summary.json`` and ``returns.png``; returns the summary."""
    import numpy as np

    from bilevel_rl.cli import outputs

    np.savez(os.path.join(folder, "metrics.npz"), **metrics)
    final = final_returns(metrics)
    accuracy = final_returns({"mean_return": metrics["fresh_accuracy"]})
    per_iteration = run.params.ppo_updates * run.ppo_params.batch_size
    iterations_here = run.iterations - timing["resumed_from"]
    report = {
        "config": cfg,
        "method": run.params.method,
        "rlhf": _jsonable(dataclasses.asdict(run.params)),
        "ppo": _jsonable(dataclasses.asdict(run.ppo_params)),
        "iterations": run.iterations,
        "env_steps": run.iterations * per_iteration,
        "queries": int(metrics["queries"][0, -1]),
        "final_return": final.tolist(),
        "final_return_mean": float(final.mean()),
        "fresh_accuracy_mean": float(accuracy.mean()),
        "nonfinite_seeds": [int(i) for i in np.flatnonzero(~metrics["finite"].all(1))],
        **timing,
        "env_steps_per_s": iterations_here * per_iteration * run.seeds
        / max(timing["run_s"], 1e-9),
    }  # fmt: skip
    outputs.write_atomic(
        os.path.join(folder, "summary.json"), json.dumps(report, indent=2) + "\n"
    )
    plot(
        metrics,
        os.path.join(folder, "returns.png"),
        f"{run.params.method} on {cfg['env']}",
    )
    return report


def _jsonable(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def plot(metrics: dict, path: str, title: str) -> None:
    """True return per seed against environment steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, returns in enumerate(metrics["mean_return"]):
        ax.plot(metrics["env_steps"][i], returns, lw=1, label=f"seed {i}")
    ax.set(
        xlabel="environment steps (per seed)", ylabel="true episode return", title=title
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
