"""AIHF paper, Section 4: the two-action examples and Numerical Example 2.

* Two-action examples (one state, beta = 1): pi_1 of SFT, of the preference reward
  r_P, of RLHF and of AIHF (exact AIHF by hyper-gradient descent), against the
  paper's values 1/2, 6/10, 6/10, 56/110 and 6/10, 1/2, 6/10, 56/110.
* Numerical Example 2: 50 actions, r_i = N(i/50; mu=0.5, sigma=2) density, 2000
  demonstrations from softmax(r) restricted to actions 1..45, 200 Bradley–Terry
  comparisons for every pair, 100 repeats run as one vmapped batch. Estimates: SFT
  (demo frequencies), RLHF (BT reward, KL-regularized towards pi_SFT), DPO (policy
  gradient on the DPO loss, reference pi_SFT mixed with 1e-6 uniform so that its log
  is finite), AIHF (alpha = |D|/|P|, exact hyper-gradient descent). Reports the
  total-variation distance to softmax(r) (mean ± standard error over the repeats)
  and the mass on the uncovered actions 46..50.

Writes ``benchmarks/results/aihf_bandit.json`` and ``.png``.
"""

from __future__ import annotations

import sys

import harness
import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bilevel_rl import soft_optimal_policy  # noqa: E402
from bilevel_rl.algorithms import Optimizer, exact  # noqa: E402
from bilevel_rl.alignment import (  # noqa: E402
    AlignmentData,
    aihf_problem,
    bandit_datasets,
    dpo_policy,
    fit_bradley_terry,
    rlhf_policy,
    sft_policy,
    total_variation,
)
from bilevel_rl.experiment import run  # noqa: E402
from bilevel_rl.suites import aihf_gaussian_reward, bandit_mdp  # noqa: E402

NAME = "aihf_bandit"


def two_action_examples() -> list[dict]:
    mdp = bandit_mdp(2, tau=1.0)
    out = []
    for demos, prefs, expected in [
        ((50, 50), (6, 4), (1 / 2, 6 / 10, 6 / 10, 56 / 110)),
        ((6, 4), (50, 50), (6 / 10, 1 / 2, 6 / 10, 56 / 110)),
    ]:
        counts = jnp.asarray([demos], float) / sum(demos)
        wins = jnp.asarray([[[0.0, prefs[0]], [prefs[1], 0.0]]]) / sum(prefs)
        data = AlignmentData(counts, wins, jnp.asarray(sum(demos) / sum(prefs)))
        r_hat = fit_bradley_terry(wins)
        pi_sft = sft_policy(counts)
        problem = aihf_problem(mdp, data)
        step = Optimizer(learning_rate=0.5 / (1 + float(data.alpha)))
        state, _ = run(exact.make(optimizer=step), problem, jax.random.key(0), 300)
        got = [
            float(pi_sft[0, 0]),
            float(soft_optimal_policy(mdp, r_hat)[0, 0]),
            float(rlhf_policy(mdp, r_hat, pi_sft)[0, 0]),
            float(soft_optimal_policy(mdp, state.x)[0, 0]),
        ]
        names = ["sft", "preference_reward", "rlhf", "aihf"]
        out.append(
            {
                "demonstrations": demos,
                "preferences": prefs,
                "pi1": dict(zip(names, got, strict=True)),
                "paper": dict(zip(names, expected, strict=True)),
                "max_abs_error": max(abs(a - b) for a, b in zip(got, expected)),
            }
        )
    return out


def example_2(repeats: int, num_demos: int, per_pair: int, covered: int):
    A = 50
    r = aihf_gaussian_reward(A)
    truth = jax.nn.softmax(r)[None]
    mdp = bandit_mdp(A, tau=1.0)
    alpha = num_demos / (per_pair * A * (A - 1) / 2)

    @jax.jit
    @jax.vmap
    def baselines(key):
        counts, wins = bandit_datasets(
            key, r, num_demos=num_demos, comparisons_per_pair=per_pair, covered=covered
        )
        data = AlignmentData(counts, wins, jnp.asarray(alpha))
        pi_sft = sft_policy(counts)
        pi_rlhf = rlhf_policy(mdp, fit_bradley_terry(wins), pi_sft)
        reference = (1 - 1e-6) * pi_sft + 1e-6 / A
        no_demos = data.replace(alpha=jnp.asarray(0.0))
        pi_dpo = dpo_policy(no_demos, reference, 1.0, num_steps=300)
        return data, pi_sft, pi_rlhf, pi_dpo

    keys = jax.random.split(jax.random.key(2025), repeats)

    def estimate():
        data, pi_sft, pi_rlhf, pi_dpo = baselines(keys)
        problems = jax.vmap(lambda d: aihf_problem(mdp, d))(data)
        state, hist = run(
            exact.make(optimizer=Optimizer(learning_rate=100.0)), problems, keys, 300
        )
        pi_aihf = jax.vmap(lambda x: soft_optimal_policy(mdp, x))(state.x)
        return pi_sft, pi_rlhf, pi_dpo, pi_aihf, hist

    seconds, _, (pi_sft, pi_rlhf, pi_dpo, pi_aihf, hist) = harness.once(estimate)
    estimates = {"SFT": pi_sft, "RLHF": pi_rlhf, "DPO": pi_dpo, "AIHF": pi_aihf}
    result = {"ground_truth_uncovered_mass": float(truth[0, covered:].sum())}
    for name, pi in estimates.items():
        tv = np.asarray(jax.vmap(total_variation, (0, None))(pi, truth))
        uncovered = np.asarray(pi[:, 0, covered:].sum(-1))
        result[name] = {
            "tv_mean": float(tv.mean()),
            "tv_stderr": float(tv.std(ddof=1) / np.sqrt(len(tv))) if len(tv) > 1 else 0,
            "uncovered_mass_mean": float(uncovered.mean()),
            "uncovered_mass_max": float(uncovered.max()),
            "mean_policy": np.asarray(pi[:, 0].mean(0)).tolist(),
        }
    result["aihf_final_exact_grad_norm_max"] = float(
        hist["exact_grad_norm"][:, -1].max()
    )
    result["seconds_all_repeats"] = seconds
    return result, np.asarray(truth[0])


def plot(result, truth, covered):
    plt = harness.pyplot()
    fig, axes = plt.subplots(
        1, 2, figsize=(12, 3.8), gridspec_kw={"width_ratios": [3, 1]}
    )
    ax = axes[0]
    k = np.arange(1, len(truth) + 1)
    names = ["SFT", "RLHF", "DPO", "AIHF"]
    width = 0.18
    for i, name in enumerate(names):
        ax.bar(k + (i - 1.5) * width, result[name]["mean_policy"], width, label=name)
    ax.plot(k, truth, "k.-", label="ground truth softmax(r)")
    ax.axvline(covered + 0.5, color="r", ls=":", label="demonstration coverage")
    ax.set_xlabel("action")
    ax.set_ylabel("probability (mean over repeats)")
    ax.legend(fontsize=8, ncol=3)
    ax = axes[1]
    means = [result[n]["tv_mean"] for n in names]
    errs = [result[n]["tv_stderr"] for n in names]
    ax.bar(names, means, yerr=errs, capsize=4, color=[f"C{i}" for i in range(4)])
    ax.set_ylabel("TV distance to ground truth")
    fig.suptitle("AIHF Numerical Example 2 (50 actions, demos on 1..45)", fontsize=10)
    fig.tight_layout()
    return fig


def main(argv=None):
    parser = harness.parser(__doc__)
    parser.add_argument("--repeats", type=int, default=100)
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else args.repeats
    bench = harness.Bench(NAME, args, argv)
    examples = two_action_examples()
    result, truth = example_2(repeats, 2000, 200, 45)
    bench.result["two_action_examples"] = examples
    bench.result["numerical_example_2"] = {
        "repeats": repeats,
        "num_demos": 2000,
        "comparisons_per_pair": 200,
        "covered_actions": 45,
        **result,
    }
    bench.save(plot(result, truth, 45))
    for ex in examples:
        bench.log(f"two-action example {ex['pi1']} max error {ex['max_abs_error']}")
    for name in ("SFT", "RLHF", "DPO", "AIHF"):
        r = result[name]
        bench.log(f"{name:5s} TV {r['tv_mean']:.4f} ± {r['tv_stderr']:.4f}   "
                  f"mass on 46..50 {r['uncovered_mass_mean']:.4f}")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
