"""Deep RLHF on MinAtar: every method, seeds vmapped, equal query and step budgets.

:func:`bilevel_rl.deep.rlhf.train` for each method of :data:`METHODS` on each
environment, ``--seeds`` seeds vmapped in ONE compiled call per (environment,
method), ``--steps`` environment steps per seed and (for the methods that ask)
``--queries`` preference queries per seed. One shared set of hyper-parameters
(:data:`SHARED`, default :class:`~bilevel_rl.deep.ppo.Params`), stated in the
JSON; nothing is tuned per method. two_stage spends its queries in the first
quarter of the iterations (its follower waits meanwhile), the others evenly.

Reported per (environment, method): final true return (mean of the running
episode returns over the last 10% of iterations; per seed, mean, s.e.), preference
accuracy on FRESH on-policy pairs (held out: measured before they are trained on),
curves of return against environment steps, queries and wall time (the one
call's time spread evenly over its iterations), environment steps per second
(compile time apart), and for ``sobirl_branch`` the extra simulator steps of its
branched rollouts. Headlines: each RLHF method's return over the oracle's at the
same step budget, and the RLHF loop's steps/s over the oracle's and over the
bare PPO loop's (``ppo_loop``: :func:`bilevel_rl.deep.ppo.train` on the true
reward, the same seeds vmapped, ``PPO_LOOP_UPDATES`` updates, timed in the same
run). ``stoc_sobirl_storm`` is deep Stoc-SoBiRL: ``sobirl_one_step`` with the
fixed-sample STORM momentum on its score term (default ``momentum_weight``).

Usage::

    python benchmarks/deep_rlhf.py            # both games, 3 seeds, 3M steps
    python benchmarks/deep_rlhf.py --quick    # smoke run (Breakout, short)
"""

from __future__ import annotations

import dataclasses
import sys

import harness
import jax
import numpy as np
import ppo_minatar

from bilevel_rl.deep import envs, ppo, rlhf

NAME = "deep_rlhf"
ENVS = ("Breakout-MinAtar", "SpaceInvaders-MinAtar")
METHODS = {
    "oracle": dict(method="oracle"),
    "sobirl_one_step": dict(method="sobirl", estimator="one_step"),
    "sobirl_branch": dict(method="sobirl", estimator="branch"),
    "stoc_sobirl_storm": dict(method="sobirl", estimator="one_step", momentum="storm"),
    "drlhf": dict(method="drlhf"),
    "two_stage": dict(method="two_stage"),
}
SHARED = dict(fragment_length=25, buffer_size=2048, reward_batch=64, warmup=20)
"""The RLHF options every method shares (the rest: :class:`rlhf.Params`)."""
FULL = dict(steps=3_000_000, queries=10_000, seeds=3)
QUICK = dict(steps=24 * 8192, queries=240, seeds=2)
PPO_LOOP_UPDATES = 40
"""Updates of the bare PPO loop timed as the speed reference (``ppo_loop``)."""


def method_params(name: str, iterations: int, queries: int) -> rlhf.Params:
    params = rlhf.Params(**SHARED, **METHODS[name])
    return rlhf.with_query_budget(params, iterations, queries)


def measure(env_name: str, name: str, steps: int, queries: int, seeds: int):
    env, env_params = envs.make(env_name)
    ppo_params = ppo.Params()
    iterations = max(1, steps // ppo_params.batch_size)
    params = method_params(name, iterations, queries)
    keys = jax.random.split(jax.random.key(0), seeds)

    def run(keys):
        return jax.vmap(
            lambda k: rlhf.train(k, env, env_params, params, ppo_params, iterations)
        )(keys)

    compiled, compile_s = harness.aot_compile(run, keys)
    wall, cpu, (_, metrics) = harness.once(lambda: compiled(keys))
    metrics = jax.tree.map(np.asarray, metrics)
    tail = max(1, iterations // 10)
    final = metrics["mean_return"][:, -tail:].mean(1)
    accuracy = metrics["fresh_accuracy"][:, -tail:].mean(1)
    branch_steps = 0
    if params.method == "sobirl" and params.estimator == "branch":
        per_iteration = params.queries_per_iteration * 2 * params.fragment_length
        branch_steps = (
            iterations
            * per_iteration
            * params.branch_rollouts
            * params.branch_length
            * 2
        )
    env_steps = iterations * ppo_params.batch_size
    record = {
        "params": dataclasses.asdict(params),
        "iterations": iterations,
        "env_steps_per_seed": env_steps,
        "branch_simulator_steps_per_seed": branch_steps,
        "queries_per_seed": int(metrics["queries"][0, -1]),
        "compile_s": compile_s,
        "run_s": wall,
        "cpu_over_wall": cpu / wall,
        "env_steps_per_s": seeds * env_steps / wall,
        "final_return": {
            "per_seed": final.tolist(),
            "mean": float(final.mean()),
            "se": float(final.std(ddof=1) / np.sqrt(seeds)) if seeds > 1 else None,
            "tail_iterations": tail,
        },
        "fresh_accuracy": {
            "per_seed": accuracy.tolist(),
            "mean": float(accuracy.mean()),
        },
        "all_finite": bool(metrics["finite"].all()),
        "curve": {
            "env_steps": metrics["env_steps"][0].tolist(),
            "queries": metrics["queries"][0].tolist(),
            "wall_s": (wall * np.arange(1, iterations + 1) / iterations).tolist(),
            "mean_return": metrics["mean_return"].mean(0).tolist(),
            "fresh_accuracy": metrics["fresh_accuracy"].mean(0).tolist(),
        },
    }
    return record


def ppo_loop(env_name: str, updates: int, seeds: int) -> dict:
    """Steps/s of the bare PPO loop (true reward) for ``seeds`` vmapped seeds:
    :func:`ppo_minatar.measure`'s record."""
    env, env_params = envs.make(env_name)
    record, _ = ppo_minatar.measure(env, env_params, ppo.Params(), updates, seeds)
    return record


def plot(result):
    plt = harness.pyplot()
    games = list(result["runs"])
    fig, axes = plt.subplots(
        len(games), 3, figsize=(13, 3.6 * len(games)), squeeze=False
    )
    for row, game in zip(axes, games, strict=True):
        for i, (name, rec) in enumerate(result["runs"][game].items()):
            c = rec["curve"]
            style = dict(color=f"C{i}", label=name, lw=1.2)
            row[0].plot(c["env_steps"], c["mean_return"], **style)
            if name != "oracle":
                row[1].plot(c["queries"], c["mean_return"], **style)
                row[2].plot(c["env_steps"], c["fresh_accuracy"], **style)
        row[0].set(xlabel="environment steps (per seed)", ylabel="true return",
                   title=game)  # fmt: skip
        row[1].set(xlabel="queries (per seed)", ylabel="true return", title=game)
        row[2].set(xlabel="environment steps", ylabel="accuracy, fresh pairs",
                   title=game)  # fmt: skip
        for ax in row:
            ax.grid(alpha=0.3)
            ax.title.set_fontsize(9)
        row[0].legend(fontsize=7)
    fig.suptitle(harness.run_title("deep RLHF (seed means)", result), fontsize=8)
    fig.tight_layout()
    return fig


def main(argv=None):
    p = harness.parser(__doc__)
    p.add_argument("--steps", type=int, default=FULL["steps"], help="env steps/seed")
    p.add_argument("--queries", type=int, default=FULL["queries"], help="per seed")
    p.add_argument("--seeds", type=int, default=FULL["seeds"])
    p.add_argument("--envs", nargs="+", default=list(ENVS))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    args = p.parse_args(argv)
    bench = harness.Bench(NAME, args, argv)
    result = bench.result
    size = (
        QUICK
        if args.quick
        else dict(steps=args.steps, queries=args.queries, seeds=args.seeds)
    )
    games = ENVS[:1] if args.quick else args.envs
    result.update(size=size, shared=SHARED, ppo=dataclasses.asdict(ppo.Params()))
    result["runs"], result["headlines"], result["ppo_loop"] = {}, {}, {}
    for game in games:
        loop = result["ppo_loop"][game] = ppo_loop(
            game, min(PPO_LOOP_UPDATES, size["steps"] // ppo.Params().batch_size),
            size["seeds"],
        )  # fmt: skip
        bench.log(f"{game} bare PPO loop: {loop['env_steps_per_s']:,.0f} steps/s")
        runs = result["runs"][game] = {}
        for name in args.methods:
            rec = runs[name] = measure(game, name, **size)
            bench.log(
                f"{game} {name}: return {rec['final_return']['mean']:.2f} "
                f"(± {rec['final_return']['se'] or 0:.2f}), fresh accuracy "
                f"{rec['fresh_accuracy']['mean']:.3f}, {rec['queries_per_seed']} "
                f"queries, {rec['env_steps_per_s']:,.0f} steps/s "
                f"(compile {rec['compile_s']:.1f} s, run {rec['run_s']:.1f} s)"
            )
        oracle = runs.get("oracle")
        if oracle is None:
            continue
        result["headlines"][game] = {
            name: {
                "return_over_oracle": rec["final_return"]["mean"]
                / max(oracle["final_return"]["mean"], 1e-9),
                "steps_per_s_over_oracle": rec["env_steps_per_s"]
                / oracle["env_steps_per_s"],
                "steps_per_s_over_ppo_loop": rec["env_steps_per_s"]
                / loop["env_steps_per_s"],
            }
            for name, rec in runs.items()
            if name != "oracle"
        }
    bench.save(plot(result))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
