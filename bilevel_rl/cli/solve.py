"""``bilevel-rl solve``: batch-solves a generated suite of soft MDPs with the chunked,
jitted solver and reports residuals, iterations, compile time and throughput.
Bad input exits with status 2 and a one-line message naming the option.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable

import numpy as np

from bilevel_rl.cli.common import (
    Reporter,
    UsageError,
    check_writable,
    float_in,
    positive_float,
    positive_int,
    print_table,
)
from bilevel_rl.experiment.config import DTYPES
from bilevel_rl.soft import METHODS, STATUS

# ----------------------------------------------------------------------- suites


def solve_suites() -> dict[str, tuple[str, Callable]]:
    """``name -> (description, make(key, args) -> (mdp, reward))`` for ``solve``.

    The MDP generators of :mod:`bilevel_rl.suites` with uniform rewards, and every
    bilevel suite of the run registry (:data:`bilevel_rl.experiment.config.SUITES`)
    as its follower's MDP and reward at ``x0``. Each ``make`` is traceable, so a
    batch is ``jax.vmap`` over keys.
    """
    import jax

    from bilevel_rl import suites
    from bilevel_rl.experiment.config import SUITES

    def uniform_reward(key, mdp):
        S, A = mdp.num_states, mdp.num_actions
        return jax.random.uniform(key, (S, A), mdp.P.dtype)

    def with_random_reward(build):
        def make(key, args):
            k_mdp, k_r = jax.random.split(key)
            mdp = build(k_mdp, args)
            return mdp, uniform_reward(k_r, mdp)

        return make

    def common(args):
        return dict(gamma=args.gamma, tau=args.tau, dtype=args.jnp_dtype)

    def follower_at_x0(suite):
        accepted = suite.defaults()

        def make(key, args):
            sizes = dict(num_states=args.states, num_actions=args.actions)
            sizes = {k: v for k, v in sizes.items() if k in accepted}
            problem = suite.build(key, **sizes, **common(args))
            return problem.mdp, problem.reward(problem.x0)

        return make

    entries = {
        "dirichlet": (
            "random MDPs with Dirichlet(1) transition rows, U(0,1) rewards",
            with_random_reward(
                lambda k, a: suites.dirichlet_mdp(k, a.states, a.actions, **common(a))
            ),
        ),
        "garnet": (
            "Garnet MDPs: each (s,a) reaches --branching random states, U(0,1) rewards",
            with_random_reward(
                lambda k, a: suites.garnet_mdp(
                    k, a.states, a.actions, a.branching, **common(a)
                )
            ),
        ),
        "chain": (
            "chain of --states states, 2 actions with slip, U(0,1) rewards",
            with_random_reward(lambda k, a: suites.chain_mdp(k, a.states, **common(a))),
        ),
    }
    for name, suite in SUITES.items():
        text = f"the follower of the {name!r} run suite at x0 ({suite.description})"
        entries[name] = (text, follower_at_x0(suite))
    return entries


# ------------------------------------------------------------------- arguments


def add_parser(sub) -> None:
    """Registers ``solve`` on the ``bilevel-rl`` sub-command parser."""
    solve = sub.add_parser(
        "solve",
        help="batch-solve a generated suite of soft MDPs",
        description="Batch-solve a generated suite of soft MDPs in one jitted, "
        "cache-chunked call. Defaults: 1024 Dirichlet MDPs, S=64, A=8, float32.",
    )
    solve.add_argument(
        "--suite",
        default="dirichlet",
        help="problem suite (default dirichlet; see --list-suites)",
    )
    solve.add_argument(
        "--list-suites", action="store_true", help="print the suites and exit"
    )
    solve.add_argument("--states", type=positive_int, default=64)
    solve.add_argument("--actions", type=positive_int, default=8)
    solve.add_argument(
        "--branching", type=positive_int, default=4, help="Garnet branching factor"
    )
    solve.add_argument(
        "--batch", type=positive_int, default=1024, help="number of MDPs"
    )
    solve.add_argument("--seed", type=int, default=0)
    solve.add_argument("--dtype", choices=DTYPES, default="float32")
    solve.add_argument("--gamma", type=float_in(0.0, 1.0), default=0.9)
    solve.add_argument("--tau", type=positive_float, default=1.0)
    solve.add_argument("--tol", type=float_in(0.0, np.inf), default=1e-6)
    solve.add_argument("--max-iters", type=positive_int, default=10_000)
    solve.add_argument(
        "--method",
        choices=("auto", *METHODS),
        default="auto",
        help="fixed-point solver; auto picks the one predicted faster",
    )
    solve.add_argument(
        "--chunk-size",
        type=positive_int,
        default=None,
        help="MDPs per cache chunk (default: from the L2 size)",
    )
    solve.add_argument(
        "--blocks",
        type=positive_int,
        default=8,
        help="progress-bar steps (the batch is solved in this many equal jitted calls)",
    )
    solve.add_argument(
        "--out", default="bilevel_rl_out/solve.json", help="JSON result file"
    )
    solve.add_argument("--quiet", action="store_true", help="no progress output")
    solve.set_defaults(handler=cmd_solve)


# ----------------------------------------------------------------------- solve


def cmd_solve(args: argparse.Namespace) -> int:
    import jax

    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from bilevel_rl.batched import auto_chunk_size, batch_method, solve_batch

    registry = solve_suites()
    if args.list_suites:
        for name, (text, _) in registry.items():
            print(f"{name:12s} {text}")
        return 0
    if args.suite not in registry:
        raise UsageError(
            f"--suite: unknown suite {args.suite!r}; choose from {sorted(registry)}"
        )
    if args.suite == "garnet" and args.branching > args.states:
        raise UsageError(
            f"--branching: must be <= --states ({args.states}), got {args.branching}"
        )
    check_writable("--out", args.out)
    args.jnp_dtype = jnp.dtype(args.dtype)
    make = registry[args.suite][1]

    blocks = min(args.blocks, args.batch)
    block = -(-args.batch // blocks)  # ceil; the last block is padded
    keys = jax.random.split(jax.random.key(args.seed), blocks * block)
    generate = jax.jit(jax.vmap(lambda k: make(k, args)))

    results, t_compile, t_gen = [], 0.0, 0.0
    bar = Reporter(args.batch, "MDPs", quiet=args.quiet)
    t_start = time.perf_counter()
    chunk = None
    for b in range(blocks):
        t0 = time.perf_counter()
        mdp, reward = jax.block_until_ready(generate(keys[b * block : (b + 1) * block]))
        t_gen += time.perf_counter() - t0
        chunk = args.chunk_size or auto_chunk_size(mdp, block)
        t0 = time.perf_counter()
        sol = solve_batch(
            mdp,
            reward,
            tol=args.tol,
            max_iters=args.max_iters,
            method=args.method,
            chunk_size=chunk,
        )
        sol = jax.tree.map(np.asarray, jax.block_until_ready(sol))
        if b == 0:
            t_compile = time.perf_counter() - t0
            bar.message(f"compiled and solved the first block in {t_compile:.2f} s")
        results.append(sol)
        done = min(args.batch, (b + 1) * block)
        bar.update(done, MDPs_per_s=f"{done / (time.perf_counter() - t_start):.0f}")
    bar.close()
    wall = time.perf_counter() - t_start

    full = jax.tree.map(lambda *xs: np.concatenate(xs), *results)
    sol = jax.tree.map(lambda x: x[: args.batch], full)
    # Steady state: every block after the first (which includes compilation);
    # padded instances of the last block were solved too, so they count.
    steady = wall - t_compile - t_gen
    steady_mdps = (blocks - 1) * block
    steady_sweeps = float(full.iterations[block:].astype(np.int64).sum())
    iters = sol.iterations.astype(np.int64)
    report = {
        "command": "solve",
        "suite": args.suite,
        "num_states": int(sol.v.shape[-1]),
        "num_actions": int(sol.q.shape[-1]),
        "batch": args.batch,
        "seed": args.seed,
        "dtype": args.dtype,
        "gamma": args.gamma,
        "tau": args.tau,
        "tol": args.tol,
        "method": args.method,
        "method_used": batch_method(
            mdp, reward, tol=args.tol, max_iters=args.max_iters, method=args.method
        ),
        "chunk_size": int(chunk),
        "residual_max": float(sol.residual.max()),
        "residual_median": float(np.median(sol.residual)),
        "converged_fraction": float(np.mean(sol.status < STATUS.index("max_iters"))),
        "status_counts": {
            name: int(np.sum(sol.status == i)) for i, name in enumerate(STATUS)
        },
        "iterations_min": int(iters.min()),
        "iterations_median": float(np.median(iters)),
        "iterations_max": int(iters.max()),
        "all_finite": bool(np.isfinite(sol.v).all() and np.isfinite(sol.q).all()),
        "wall_s": wall,
        "first_block_s_incl_compile": t_compile,
        "generate_s": t_gen,
        "mdps_per_s_steady": steady_mdps / steady
        if steady_mdps and steady > 0
        else None,
        "mdp_sweeps_per_s_steady": steady_sweeps / steady
        if steady_mdps and steady > 0
        else None,
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "jax_version": jax.__version__,
        "python": platform.python_version(),
    }
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=2)
    _print_summary(report, args.out)
    return 0 if report["all_finite"] else 1


def _print_summary(report: dict, path: str) -> None:
    def fmt(v):
        if v is None:
            return "n/a (single block)"
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    rows = [
        (
            "suite",
            f"{report['suite']}  S={report['num_states']} "
            f"A={report['num_actions']}  {report['dtype']}",
        ),
        ("MDPs", report["batch"]),
        ("method", f"{report['method']} ({report['method_used']})"),
        (
            "residual max / median",
            f"{fmt(report['residual_max'])} / {fmt(report['residual_median'])}",
        ),
        ("converged", f"{100 * report['converged_fraction']:.1f}%"),
        (
            "iterations min/median/max",
            f"{report['iterations_min']} / "
            f"{fmt(report['iterations_median'])} / {report['iterations_max']}",
        ),
        (
            "first block (incl. compile)",
            f"{report['first_block_s_incl_compile']:.2f} s",
        ),
        ("total wall time", f"{report['wall_s']:.2f} s"),
        ("MDPs/s (steady)", fmt(report["mdps_per_s_steady"])),
        ("MDP-sweeps/s (steady)", fmt(report["mdp_sweeps_per_s_steady"])),
        ("result file", path),
    ]
    print_table(rows)
    if report["residual_max"] > report["tol"] and report["converged_fraction"] == 1:
        print(
            f"note: residuals above --tol {report['tol']:g} are {report['dtype']} "
            "round-off: the solver stops once iterates differ by less than "
            "4 eps ||v||_inf (see bilevel_rl.soft.ROUNDOFF_FACTOR)"
        )
