"""The PPO follower with the oracle reward on Breakout-MinAtar: return and throughput.

:func:`bilevel_rl.deep.ppo.train` with ``reward_fn=None`` (the environment's own
reward, the "oracle" follower of the deep RLHF track), default
:class:`~bilevel_rl.deep.ppo.Params` (64 environments x 128 steps per update, 4
epochs of 16 minibatches, adam 1e-3 annealed, MLP 64-64 ReLU, ``tau = 0.01``,
float32), in each of the :data:`VARIANTS`: ``soft`` (the default: ``-tau log pi``
inside the return, the follower the hyper-gradient assumes and the one
``benchmarks/deep_rlhf.py`` trains), ``plain`` (``soft=False``: the usual
entropy bonus ``tau H`` in the loss, the option for an oracle that only has to
score well) and ``plain_wide`` (the same with hidden widths 256-256: about 3.5x
slower per step, faster per step of experience). Per variant, ``--seeds`` seeds
vmapped in ONE compiled call of ``--steps`` environment steps per seed (default 10M).

Reported per variant (``variants``):

* ``final_return``: per seed, the mean true return of the episodes completed in
  the last ``TAIL`` updates (target: mean over seeds ``>= 40`` within 10M steps;
  ``targets.return_met_by`` lists the variants that reach it);
* ``curve``: that mean per block of updates against environment steps (the PNG);
* ``run``: environment steps per second of the vmapped run (all seeds together),
  compilation timed apart (ahead of time); ``full_run_estimate_s``: the wall time
  10M steps x ``--seeds`` would take at the measured rate.

``one_seed``: the default (soft) follower alone for ``PROBE_UPDATES`` updates
(target ``>= 40k`` steps/s for one seed of 64 environments on 2 cores).

Usage::

    python benchmarks/ppo_minatar.py                   # 3 seeds x 10M steps
    python benchmarks/ppo_minatar.py --steps 3000000   # shorter
    python benchmarks/ppo_minatar.py --quick           # smoke run (< 2 minutes)
    python benchmarks/ppo_minatar.py --variants plain_wide --merge  # one variant,
                                   # the others carried over from the results file
"""

from __future__ import annotations

import dataclasses
import json
import sys

import harness
import jax
import numpy as np

from bilevel_rl.deep import ppo

NAME = "ppo_minatar"
ENV = "Breakout-MinAtar"
FULL_STEPS = 10_000_000
TARGET_RETURN, TARGET_STEPS_PER_S = 40.0, 40_000.0
TAIL = 10
"""Updates (of 8192 steps by default) over which the final return is averaged."""
PROBE_UPDATES = 40
QUICK = {"steps": 40 * 8192, "probe_updates": 8}
VARIANTS = {
    "soft": {},
    "plain": {"soft": False},
    "plain_wide": {"soft": False, "hidden": (256, 256)},
}
"""Follower variants run in turn: their changes to the default ``ppo.Params``."""


def compiled_train(env, env_params, params, num_updates, seeds):
    """``jit(vmap(train))`` compiled ahead of time for ``seeds`` keys:
    ``(compiled, keys, compile_s)``."""
    keys = jax.random.split(jax.random.key(0), seeds)

    def run(keys):
        return jax.vmap(lambda k: ppo.train(k, env, env_params, params, num_updates))(
            keys
        )

    compiled, compile_s = harness.aot_compile(run, keys)
    return compiled, keys, compile_s


def measure(env, env_params, params, num_updates, seeds) -> tuple[dict, dict]:
    """One timed run: its record and its metrics (NumPy, ``[seeds, num_updates]``)."""
    compiled, keys, compile_s = compiled_train(
        env, env_params, params, num_updates, seeds
    )
    wall, cpu, (_, metrics) = harness.once(lambda: compiled(keys))
    steps = seeds * num_updates * params.batch_size
    record = {
        "seeds": seeds,
        "num_updates": num_updates,
        "env_steps_per_seed": num_updates * params.batch_size,
        "compile_s": compile_s,
        "run_s": wall,
        "cpu_over_wall": cpu / wall,
        "env_steps_per_s": steps / wall,
        "env_steps_per_s_per_seed": steps / wall / seeds,
    }
    return record, jax.tree.map(np.asarray, metrics)


def episode_means(metrics: dict, block: int) -> np.ndarray:
    """``[seeds, num_updates // block]`` mean true return of the episodes completed
    in each block of ``block`` updates (NaN for a block with none)."""
    total = np.asarray(metrics["episode_return_sum"], np.float64)
    count = np.asarray(metrics["episode_count"], np.float64)
    n = total.shape[1] // block * block
    total = total[:, :n].reshape(total.shape[0], -1, block).sum(-1)
    count = count[:, :n].reshape(count.shape[0], -1, block).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def variant_record(env, env_params, params, num_updates, seeds) -> dict:
    """One variant's vmapped run: its params, run record, final return and curve."""
    run, metrics = measure(env, env_params, params, num_updates, seeds)
    run["full_run_estimate_s"] = seeds * FULL_STEPS / run["env_steps_per_s"]
    tail = min(TAIL, num_updates)
    total = metrics["episode_return_sum"][:, -tail:].sum(1)
    count = metrics["episode_count"][:, -tail:].sum(1)
    final = (total / np.maximum(count, 1)).tolist()
    block = max(1, num_updates // 50)
    curve = episode_means(metrics, block)
    return {
        "params": dataclasses.asdict(params),
        "run": run,
        "final_return": {
            "per_seed": final,
            "mean": float(np.mean(final)),
            "tail_updates": tail,
            "episodes_in_tail": count.tolist(),
            "running_mean_return_last": metrics["mean_return"][:, -1].tolist(),
            "entropy_last": metrics["entropy"][:, -1].tolist(),
        },
        "curve": {
            "block_updates": block,
            "env_steps": ((np.arange(curve.shape[1]) + 1) * block * params.batch_size),
            "mean_return": np.where(np.isnan(curve), None, curve).tolist(),
        },
    }


def plot(result):
    plt = harness.pyplot()
    variants = result["variants"]
    fig, axes = plt.subplots(1, len(variants), figsize=(6 * len(variants), 4.5),
                             sharey=True, squeeze=False)  # fmt: skip
    for ax, (name, rec) in zip(axes[0], variants.items(), strict=True):
        curve = rec["curve"]
        for i, returns in enumerate(curve["mean_return"]):
            returns = np.asarray(returns, dtype=float)  # None: no episode in a block
            ax.plot(curve["env_steps"], returns, color=f"C{i}", label=f"seed {i}")
        ax.axhline(TARGET_RETURN, color="k", ls="--", lw=1, label="target 40")
        ax.set(
            xlabel="environment steps (per seed)",
            ylabel="mean true episode return",
            title=f"PPO {name} (tau={rec['params']['tau']}) on {ENV}: final "
            f"{rec['final_return']['mean']:.1f}, "
            f"{rec['run']['env_steps_per_s']:,.0f} steps/s, "
            f"{rec['run']['seeds']} seeds vmapped",
        )
        ax.title.set_fontsize(9)
        ax.legend(fontsize=8)
    fig.suptitle(harness.run_title("PPO follower", result), fontsize=8)
    fig.tight_layout()
    return fig


def main(argv=None):
    p = harness.parser(__doc__)
    p.add_argument("--steps", type=int, default=FULL_STEPS, help="env steps per seed")
    p.add_argument("--seeds", type=int, default=3, help="seeds vmapped in one call")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument(
        "--merge", action="store_true",
        help="carry the variants not run over from the existing results file",
    )  # fmt: skip
    args = p.parse_args(argv)
    bench = harness.Bench(NAME, args, argv)
    result = bench.result
    import gymnax  # after harness, which must load before NumPy

    env, env_params = gymnax.make(ENV)
    steps = QUICK["steps"] if args.quick else args.steps
    probe_updates = QUICK["probe_updates"] if args.quick else PROBE_UPDATES
    default = ppo.Params()
    num_updates = max(1, steps // default.batch_size)
    result["env"] = ENV

    # the default follower alone, short: the throughput of 64 environments
    probe, _ = measure(env, env_params, default, probe_updates, 1)
    result["one_seed"] = probe
    bench.log(
        f"1 seed x {probe_updates} updates: {probe['env_steps_per_s']:,.0f} steps/s "
        f"(compile {probe['compile_s']:.1f} s)"
    )
    result["variants"], result["carried_over"] = {}, []
    if args.merge:
        kept = json.loads((harness.RESULTS / f"{NAME}.json").read_text())["variants"]
        for name, rec in kept.items():
            if name not in args.variants:
                result["variants"][name] = rec
                result["carried_over"].append(name)
    for name in args.variants:
        params = dataclasses.replace(default, **VARIANTS[name])
        rec = variant_record(env, env_params, params, num_updates, args.seeds)
        result["variants"][name] = rec
        bench.log(
            f"{name}: {args.seeds} seeds x {rec['run']['env_steps_per_seed']:,} "
            f"steps in {rec['run']['run_s']:.1f} s, "
            f"{rec['run']['env_steps_per_s']:,.0f} steps/s (compile "
            f"{rec['run']['compile_s']:.1f} s); final return per seed "
            f"{np.round(rec['final_return']['per_seed'], 2).tolist()}"
        )
    met_by = [
        name
        for name, rec in result["variants"].items()
        if rec["final_return"]["mean"] >= TARGET_RETURN
        and rec["run"]["env_steps_per_seed"] <= FULL_STEPS
    ]
    result["targets"] = {
        "return": TARGET_RETURN,
        "return_met_by": met_by,
        "env_steps_per_s_one_seed": TARGET_STEPS_PER_S,
        "env_steps_per_s_met": probe["env_steps_per_s"] >= TARGET_STEPS_PER_S,
    }
    bench.save(plot(result))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
