"""Every bilevel/alignment method of the package on two shared problems.

1. **Tabular RLHF (math §9)**, ``--seeds`` random instances (each seed is its own
   MDP, features and hidden reward ``r* = phi x*``; S=6, A=3, d=4, gamma=0.9,
   tau=0.3), scored on the hidden truth:

   * the *online* formulation (leader fits ``r_x = phi x`` to Bradley–Terry labels
     of H=2 trajectory pairs of the follower's own policy): exact hyper-gradient
     descent (oracle), M-SoBiRL, SoBiRL, Stoc-SoBiRL, PARL (exact upper gradient
     and sampled), PBRL;
   * the *offline* formulation (a fixed data set: 100 expert demonstrations of 30
     steps from the true soft-optimal policy, 2000 per-state action comparisons
     labelled by ``r*``; tabular rewards): AIHF (Algorithm 1, sampled agent
     trajectories, ``alpha = |D|/|P|``), DRLHF, RLHF (two-stage), DPO, SFT.

   Scores at log-spaced outer iterations: the normalized true soft return of the
   deployed policy, ``(V^pi(rho) - V^unif(rho)) / (V*(rho) - V^unif(rho))`` under
   ``r*`` (``pi`` = the follower's soft best response to the learned reward; the
   KL-regularized policy towards SFT for RLHF; the policy itself for DPO/SFT), and
   the preference accuracy of the learned reward (DPO: its implicit reward
   ``tau log(pi/pi_SFT)``) on 2000 held-out H=2 pairs of the uniform policy.
   "Samples" count labelled comparisons: ``num_samples`` pairs per iteration for
   the sampled online methods, the data-set size for the offline ones; the
   model-based methods use exact expectations (no samples).

2. **Four-Rooms incentive design (§9.3)** (104 cells, gamma=0.99, tau=0.005,
   target hallway (3, 6)): exact, M-SoBiRL, PARL, PBRL, HPGD; the leader's exact
   objective ``f(x_k, pi*_{x_k})`` (minus discounted target visits plus cost).
   SoBiRL/Stoc-SoBiRL need a trajectory-level loss and DRLHF/AIHF/RLHF/DPO need
   preference data, which this problem does not define.

Every method runs its ``--seeds`` in one vmapped ``algorithms.run`` call. One
leader step size per problem is shared by the reward-parameter methods (0.5 on
tabular RLHF, 0.1 on Four-Rooms; PBRL takes it divided by its penalty, whose
smoothness grows with it); the tabular-reward offline methods (AIHF, DRLHF) use
Adam at one rate, because their two terms' curvatures differ by orders of
magnitude. No per-method tuning beyond these rules.
Writes ``benchmarks/results/rlhf_tabular.json`` and ``.png``.
"""

from __future__ import annotations

import sys

import harness
import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from bilevel_rl import soft_policy_evaluation, soft_value_iteration  # noqa: E402
from bilevel_rl.algorithms import (  # noqa: E402
    Optimizer,
    Solver,
    aihf,
    drlhf,
    exact,
    hpgd,
    m_sobirl,
    parl,
    pbrl,
    sobirl,
    stoc_sobirl,
)
from bilevel_rl.alignment import (  # noqa: E402
    aihf_problem,
    dpo_policy,
    fit_bradley_terry,
    rlhf_policy,
    sft_policy,
)
from bilevel_rl.experiment import run  # noqa: E402
from bilevel_rl.suites import four_rooms_problem  # noqa: E402
from bilevel_rl.suites.rlhf import (  # noqa: E402
    held_out_pairs,
    preference_accuracy,
    rlhf_alignment_data,
    tabular_rlhf_problem,
)

NAME = "rlhf_tabular"
PENALTY = 10.0  # PBRL's lambda; its leader step is beta / lambda (the penalized
# objective's smoothness grows with lambda)
OFFLINE_RATE = 0.03  # Adam rate of the iterative offline methods (AIHF, DRLHF)


def recording_iterates(solver: Solver) -> Solver:
    """``solver`` whose metrics also carry ``x_k`` (scored after the run)."""

    def step(state, problem):
        new, metrics = solver.step(state, problem)
        return new, {**metrics, "x": state.x}

    return Solver(solver.init, step)


def timed_run(solver, problems, keys, iters):
    """``(history, seconds)`` of one batched run, compilation included."""
    seconds, _, (_, hist) = harness.once(
        lambda: run(recording_iterates(solver), problems, keys, iters)
    )
    return hist, seconds


def score_grid(iters: int) -> np.ndarray:
    grid = np.unique(np.geomspace(1, iters, 30).astype(int)) - 1
    return np.unique(np.concatenate([[0], grid, [iters - 1]]))


# ------------------------------------------------------------------ tabular RLHF


def normalized_return(mdp, true_reward, policy):
    """``(V^pi - V^unif) / (V* - V^unif)`` at ``rho`` under the true reward."""
    v_pi = mdp.rho @ soft_policy_evaluation(mdp, true_reward, policy)[0]
    uniform = jnp.full_like(policy, 1.0 / policy.shape[-1])
    v_unif = mdp.rho @ soft_policy_evaluation(mdp, true_reward, uniform)[0]
    v_star = (
        mdp.rho
        @ soft_value_iteration(mdp, true_reward, method="policy_iteration", tol=1e-12).v
    )
    return (v_pi - v_unif) / (v_star - v_unif)


def best_response(mdp, reward):
    return soft_value_iteration(mdp, reward, method="policy_iteration").policy


@jax.jit
def score_rewards(problems, pairs, rewards):
    """Scores of rewards ``[B, T, S, A]`` (best responses deployed); ``[B, T]``."""

    def one(problem, pairs, reward):
        r_star = problem.data.preferences.true_reward
        policy = best_response(problem.mdp, reward)
        return (
            normalized_return(problem.mdp, r_star, policy),
            preference_accuracy(reward, r_star, pairs),
        )

    inner = jax.vmap(one, in_axes=(None, None, 0))
    return jax.vmap(inner)(problems, pairs, rewards)


def summary(values: np.ndarray) -> dict:
    """Mean and standard error over seeds (axis 0) of ``[B, ...]`` values."""
    n = values.shape[0]
    stderr = values.std(0, ddof=1) / np.sqrt(n) if n > 1 else np.zeros_like(values[0])
    return {"mean": values.mean(0).tolist(), "stderr": stderr.tolist()}


def record(name, formulation, seconds, samples, ret, acc, **extra) -> dict:
    """One method's entry of the result file (scores ``[B, T]``); logs a line."""
    harness.log(f"  {name:13s} {seconds:6.1f} s  return {ret[:, -1].mean():.3f}  "
                f"accuracy {acc[:, -1].mean():.3f}")  # fmt: skip
    return {
        "formulation": formulation,
        "seconds": seconds,
        "samples": samples,
        "return": summary(ret),
        "accuracy": summary(acc),
        **extra,
    }


def rlhf_part(seeds: int, iters: int, beta: float) -> dict:
    keys = jax.random.split(jax.random.key(0), seeds)
    problems = jax.vmap(tabular_rlhf_problem)(keys)
    pairs = jax.vmap(lambda k, p: held_out_pairs(k, p, 2000))(
        jax.random.split(jax.random.key(1), seeds), problems
    )
    grid = score_grid(iters)
    features = problems.data.preferences.reward_data  # [B, S, A, d]
    samples_per_iter = 16
    sgd = Optimizer(learning_rate=beta)
    online = {
        "exact": (exact.make(optimizer=sgd), None),
        "m_sobirl": (m_sobirl.make(optimizer=sgd), None),
        "sobirl": (sobirl.make(optimizer=sgd, num_samples=samples_per_iter), 16),
        "stoc_sobirl": (
            stoc_sobirl.make(
                optimizer=Optimizer(
                    learning_rate=beta * 10.0 ** (1 / 3),
                    schedule="inverse_cube_root",
                    offset=10.0,
                ),
                num_samples=samples_per_iter,
            ),
            16,
        ),
        "parl": (parl.make(optimizer=sgd, inner_steps=5, policy_step=2.0), None),
        "parl_sampled": (
            parl.make(
                optimizer=sgd,
                inner_steps=5,
                policy_step=2.0,
                num_samples=samples_per_iter,
            ),  # fmt: skip
            16,
        ),
        "pbrl": (
            pbrl.make(
                optimizer=Optimizer(learning_rate=beta / PENALTY), penalty=PENALTY
            ),
            None,
        ),
    }
    out = {"iterations": grid.tolist(), "methods": {}}
    for name, (solver, per_iter) in online.items():
        hist, seconds = timed_run(solver, problems, keys, iters)
        xs = jnp.asarray(hist["x"][:, grid])  # [B, T, d]
        rewards = jnp.einsum("bsad,btd->btsa", features, xs)
        ret, acc = (np.asarray(v) for v in score_rewards(problems, pairs, rewards))
        samples = None if per_iter is None else (per_iter * (grid + 1)).tolist()
        out["methods"][name] = record(
            name, "online", seconds, samples, ret, acc,
            final_exact_f=summary(hist["exact_f"][:, -1]),
            finite=bool(np.all(hist["finite"])),
        )  # fmt: skip
    out["methods"].update(offline_methods(problems, pairs, keys, iters, grid))
    return out


def offline_methods(problems, pairs, keys, iters, grid):
    num_demos, num_comparisons = 100, 2000
    sizes = dict(num_demos=num_demos, demo_horizon=30, num_comparisons=num_comparisons)
    data = jax.vmap(lambda k, p: rlhf_alignment_data(k, p, **sizes))(
        jax.random.split(jax.random.key(2), len(keys)), problems
    )
    budget = num_comparisons + num_demos
    aligned = jax.vmap(aihf_problem)(problems.mdp, data)
    out = {}
    # Tabular rewards: the demonstration term's curvature (alpha / tau^2 times the
    # visitation) dwarfs the Bradley-Terry term's (~ wins / 4), so plain gradient
    # steps are unstable or stall; both iterative methods use Adam at one rate.
    # AIHF samples agent trajectories of the demonstrations' horizon (Lemma 5.1
    # compares visitations of equal horizons).
    iterative = {
        "aihf": aihf.make(
            optimizer=optax.adam(OFFLINE_RATE),
            inner_steps=2,
            num_samples=16,
            horizon=sizes["demo_horizon"],
        ),  # fmt: skip
        "drlhf": drlhf.make(optimizer=optax.adam(OFFLINE_RATE)),
    }
    for name, solver in iterative.items():
        hist, seconds = timed_run(solver, aligned, keys, iters)
        rewards = jnp.asarray(hist["x"][:, grid])  # [B, T, S, A] tabular
        ret, acc = (np.asarray(v) for v in score_rewards(problems, pairs, rewards))
        out[name] = record(
            name, "offline", seconds, [budget] * len(grid), ret, acc,
            finite=bool(np.all(hist["finite"])),
        )  # fmt: skip

    @jax.jit
    @jax.vmap
    def one_shot(problem, data, pairs):
        mdp = problem.mdp
        r_star = problem.data.preferences.true_reward
        pi_sft = sft_policy(data.demo_counts)
        r_hat = fit_bradley_terry(data.wins)
        pi_rlhf = rlhf_policy(mdp, r_hat, pi_sft)
        reference = (1 - 1e-6) * pi_sft + 1e-6 / mdp.num_actions
        no_demos = data.replace(alpha=jnp.zeros_like(data.alpha))
        pi_dpo = dpo_policy(no_demos, reference, mdp.tau, num_steps=300)
        implicit = mdp.tau * (jnp.log(pi_dpo) - jnp.log(reference))
        ret = [normalized_return(mdp, r_star, p) for p in (pi_rlhf, pi_dpo, pi_sft)]
        acc = [preference_accuracy(r, r_star, pairs) for r in (r_hat, implicit)]
        return ret, acc

    seconds, _, (ret, acc) = harness.once(lambda: one_shot(problems, data, pairs))
    for i, name in enumerate(["rlhf", "dpo", "sft"]):
        r = np.repeat(np.asarray(ret[i])[:, None], len(grid), 1)
        a = (
            np.repeat(np.asarray(acc[i])[:, None], len(grid), 1)
            if i < 2
            else np.full_like(r, np.nan)
        )
        out[name] = record(
            name, "offline (closed form / solver, no outer iterations)", seconds,
            [budget] * len(grid), r, a,
        )  # fmt: skip
    return out


# -------------------------------------------------------------------- Four-Rooms


def four_rooms_part(seeds: int, iters: int, beta: float) -> dict:
    one = four_rooms_problem()
    problems = jax.tree.map(lambda a: jnp.stack([a] * seeds), one)
    keys = jax.random.split(jax.random.key(3), seeds)
    sgd = Optimizer(learning_rate=beta)
    methods = {
        "exact": exact.make(optimizer=sgd),
        "m_sobirl": m_sobirl.make(optimizer=sgd),
        # rho is one start cell and gamma = 0.99: vanilla PG needs long, large
        # steps for the follower to approach theta* (lower_gap is recorded).
        "parl": parl.make(optimizer=sgd, inner_steps=50, policy_step=50.0),
        "pbrl": pbrl.make(
            optimizer=Optimizer(learning_rate=beta / PENALTY), penalty=PENALTY
        ),
        "hpgd": hpgd.make(optimizer=sgd, num_samples=16, horizon=300),
    }
    out = {"iterations": list(range(iters)), "methods": {}}
    for name, solver in methods.items():
        seconds, _, (_, hist) = harness.once(
            lambda solver=solver: run(solver, problems, keys, iters)
        )
        f, g = np.asarray(hist["exact_f"]), np.asarray(hist["exact_grad_norm"])
        out["methods"][name] = {
            "seconds": seconds,
            "exact_f": summary(f),
            "final_exact_grad_norm": summary(g[:, -1]),
            "finite": bool(np.all(hist["finite"])),
        }
        harness.log(f"  {name:13s} {seconds:6.1f} s  f {f[:, 0].mean():.4f} -> "
                    f"{f[:, -1].mean():.4f}")  # fmt: skip
    return out


# -------------------------------------------------------------------------- plot


def plot(result):
    plt = harness.pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.2))
    rl = result["tabular_rlhf"]
    k = np.asarray(rl["iterations"]) + 1
    for name, m in rl["methods"].items():
        style = "-" if m["formulation"] == "online" else "--"
        for ax, key in ((axes[0], "return"), (axes[1], "accuracy")):
            mean, se = np.asarray(m[key]["mean"]), np.asarray(m[key]["stderr"])
            if np.all(np.isnan(mean)):
                continue
            ax.plot(k, mean, style, label=name)
            ax.fill_between(k, mean - se, mean + se, alpha=0.2)
        if m["samples"] is not None:
            mean = np.asarray(m["return"]["mean"])
            if m["formulation"] == "online":
                axes[2].plot(m["samples"], mean, label=name)
            else:
                axes[2].plot(m["samples"][-1], mean[-1], "o", label=name)
    for ax, label in ((axes[0], "normalized true return"),
                      (axes[1], "held-out preference accuracy")):  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel("outer iteration")
        ax.set_ylabel(label)
        ax.set_title(f"tabular RLHF, {result['seeds']} seeds (mean ± s.e.)")
    axes[0].legend(fontsize=7, ncol=2)
    axes[2].set_xscale("log")
    axes[2].set_xlabel("labelled comparisons used")
    axes[2].set_ylabel("normalized true return")
    axes[2].set_title("tabular RLHF: return vs samples")
    axes[2].legend(fontsize=7)
    fr = result["four_rooms"]
    k = np.asarray(fr["iterations"]) + 1
    for name, m in fr["methods"].items():
        mean, se = (np.asarray(m["exact_f"][s]) for s in ("mean", "stderr"))
        axes[3].plot(k, mean, label=name)
        axes[3].fill_between(k, mean - se, mean + se, alpha=0.2)
    axes[3].set_xscale("log")
    axes[3].set_yscale("symlog", linthresh=1.0)  # a diverging method spans decades
    axes[3].set_xlabel("outer iteration")
    axes[3].set_ylabel("leader objective f(x, pi*_x)")
    axes[3].set_title("Four-Rooms incentive design")
    axes[3].legend(fontsize=7)
    fig.tight_layout()
    return fig


def main(argv=None):
    parser = harness.parser(__doc__)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--four-rooms-iters", type=int, default=100)
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.iters, args.four_rooms_iters = 2, 6, 3
    bench = harness.Bench(NAME, args, argv)
    bench.log("tabular RLHF")
    rlhf = rlhf_part(args.seeds, args.iters, beta=0.5)
    bench.log("Four-Rooms")
    rooms = four_rooms_part(args.seeds, args.four_rooms_iters, beta=0.1)
    bench.result.update(
        {"seeds": args.seeds, "tabular_rlhf": rlhf, "four_rooms": rooms}
    )
    bench.save(plot(bench.result), dpi=120)


if __name__ == "__main__":
    main(sys.argv[1:])
