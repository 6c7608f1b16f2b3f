"""The SoBiRL paper's synthetic experiment with M-SoBiRL (docs/math.md §3), batched.

Runs Algorithm 2 with the paper's exact sizes and steps (S=10, A=5, d=100, γ=0.5, τ=1,
β=8e-3, ζ=0.5, N=10, K=3000, float64) on one instance and on a batch of instances
with different seeds in one compiled call, and times in the same process:

* the batched JAX run (per-instance time = wall / B), compile time separately;
* the same JAX code run at batch 1, instance by instance (compiled once), in a
  child process with a single XLA device (its best setting);
* a straightforward per-instance NumPy loop of the same algorithm (no JAX), checked
  against the JAX iterates before it is timed.

The batched and the batch-1 timings alternate in rounds (batched run, then a child
timing the batch-1 loop), so both sides of each round see the same machine load; the
speed-up reported is the median over rounds of the per-round ratio (the load of a
shared machine drifts over minutes).

The batched run shards the batch over one XLA host device per core
(``--xla_force_host_platform_device_count``) and runs cache-sized chunks on each.
Writes ``benchmarks/results/msobirl_synthetic.{json,png}`` (or ``--out``).

Usage: ``python benchmarks/msobirl_synthetic.py [--batch 256] [--iters 3000] [--quick]``
"""

from __future__ import annotations

import os
import sys

import harness
import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from scipy.special import logsumexp, softmax  # noqa: E402

from bilevel_rl.algorithms import Optimizer, m_sobirl  # noqa: E402
from bilevel_rl.experiment import run  # noqa: E402
from bilevel_rl.hypergrad import hypergradient  # noqa: E402
from bilevel_rl.suites import sobirl_synthetic  # noqa: E402

NAME = "msobirl_synthetic"
CONFIG = dict(optimizer=Optimizer(learning_rate=8e-3), zeta=0.5, inner_steps=10)
AUTHORS_MS_PER_ITER_CPU = 16.7  # docs/math.md §3, their PyTorch run on a 2-core CPU


def numpy_m_sobirl(P, M, c, x0, w0, gamma, tau, beta, zeta, inner_steps, iters):
    """Algorithm 2 for one instance, plain NumPy (the baseline)."""
    S, A, _ = P.shape
    x, w = x0.copy(), w0.copy()
    v = np.zeros(S)
    pi = np.full((S, A), 1.0 / A)
    U = np.eye(S)[:, None, :] - gamma * P
    xs, gnorms, fs = [], [], []
    for _ in range(iters):
        f = 0.5 * x @ x + 0.5 * np.sum(pi * pi)
        grad_pi = pi
        A_k = np.eye(S) - gamma * np.einsum("sa,sat->st", pi, P)
        pg = pi * grad_pi
        b = np.einsum("sat,sa->t", U, pg)
        w = w - zeta * A_k @ (A_k.T @ w - b)
        q = c * (x @ M @ x) + gamma * P @ v
        pi_tilde = softmax(q / tau, axis=1)
        dq = (M + M.T) @ x
        g = x + (np.sum(pg * c) - np.sum(pi_tilde * w[:, None] * c)) / tau * dq
        x = x - beta * g
        r = c * (x @ M @ x)
        for _ in range(inner_steps):
            v = tau * logsumexp((r + gamma * P @ v) / tau, axis=1)
        pi = softmax((r + gamma * P @ v) / tau, axis=1)
        xs.append(x.copy())
        gnorms.append(np.linalg.norm(g))
        fs.append(f)
    return np.array(xs), np.array(gnorms), np.array(fs)


def numpy_inputs(problem):
    """The positional arguments of :func:`numpy_m_sobirl` for one instance."""
    p = jax.tree.map(np.asarray, problem)
    return (
        p.mdp.P,
        p.data.M,
        p.data.c,
        p.x0,
        p.data.w0,
        float(p.mdp.gamma),
        float(p.mdp.tau),
        CONFIG["optimizer"].learning_rate,
        CONFIG["zeta"],
        CONFIG["inner_steps"],
    )


def time_batch1(num_iters, num_instances):
    """Seconds per instance of ``run`` at batch 1, one instance after another."""
    keys = jax.random.split(jax.random.key(0), num_instances)
    solver = m_sobirl.make(**CONFIG, w0="data", track_exact=False)
    problems = [sobirl_synthetic(k) for k in keys]
    harness.once(lambda: run(solver, problems[0], keys[0], num_iters))  # compile
    wall, _, _ = harness.once(
        lambda: [run(solver, p, k, num_iters) for p, k in zip(problems, keys)]
    )
    return wall / num_instances


def main(argv=None):
    parser = harness.parser(__doc__)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--iters", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=5, help="rounds")
    parser.add_argument("--numpy-instances", type=int, default=2)
    parser.add_argument("--single-instances", type=int, default=8)
    parser.add_argument(
        "--single-device",
        action="store_true",
        help="internal: time the batch-1 loop and print seconds",
    )
    args = parser.parse_args(argv)
    if args.single_device:
        harness.emit({"per_instance_s": time_batch1(args.iters, args.single_instances)})
        return
    # One XLA host device per core, so that the batch is sharded over the cores
    # (solve_batch's batch_map); set before JAX starts its backend.
    harness.set_host_devices(os.cpu_count() or 1)
    if args.quick:
        args.batch, args.iters, args.repeats = 8, 50, 1
        args.numpy_instances, args.single_instances = 1, 2
    bench = harness.Bench(NAME, args, argv)
    B, K = args.batch, args.iters

    keys = jax.random.split(jax.random.key(0), B)
    problems = jax.vmap(sobirl_synthetic)(keys)
    solver = m_sobirl.make(**CONFIG, w0="data", track_exact=False)

    # --- compile (first call) separately from steady state
    first_call, _, (state, hist) = harness.once(lambda: run(solver, problems, keys, K))

    # exact hyper-gradient and upper value at the final iterate of every instance
    def exact(problem, x):
        reward_fn, upper = problem.bind()
        return jnp.linalg.norm(hypergradient(upper, reward_fn, x, problem.mdp))

    exact_norms = np.asarray(jax.jit(jax.vmap(exact))(problems, state.x))
    f_final = np.asarray(hist["f"][:, -1])

    # --- rounds: the batched run, then the same JAX code at batch 1, instance by
    # instance, in a 1-device child process
    n1 = min(args.single_instances, B)
    single = [jax.tree.map(lambda a, i=i: a[i], problems) for i in range(n1)]
    child_cmd = [
        __file__,
        "--single-device",
        "--iters",
        str(K),
        "--single-instances",
        str(n1),
    ]
    batch_times, single_times = [], []
    for _ in range(args.repeats):
        batch_times.append(harness.once(lambda: run(solver, problems, keys, K))[0])
        child = harness.run_child(child_cmd, devices=1, check=True)
        single_times.append(child["per_instance_s"])
    batch_s = float(np.median(batch_times))
    compile_s = first_call - min(batch_times)
    single_per_instance = float(np.median(single_times))
    round_ratios = [t1 / (tb / B) for t1, tb in zip(single_times, batch_times)]

    # --- NumPy per-instance loop: check it against JAX, then time it
    check_iters = min(K, 50)
    _, np_g, np_f = numpy_m_sobirl(*numpy_inputs(single[0]), check_iters)
    np.testing.assert_allclose(np_g, hist["grad_norm"][0, :check_iters], rtol=1e-8)
    np.testing.assert_allclose(np_f, hist["f"][0, :check_iters], rtol=1e-8)
    n_np = min(args.numpy_instances, B)
    inputs = [numpy_inputs(single[i % n1]) for i in range(n_np)]
    numpy_wall, _, _ = harness.once(lambda: [numpy_m_sobirl(*a, K) for a in inputs])
    numpy_per_instance = numpy_wall / n_np

    batch_per_instance = batch_s / B
    result = bench.result
    result.update(
        {
            "config": dict(
                S=10,
                A=5,
                d=100,
                gamma=0.5,
                tau=1.0,
                K=K,
                batch=B,
                dtype="float64",
                beta=CONFIG["optimizer"].learning_rate,
                zeta=CONFIG["zeta"],
                inner_steps=CONFIG["inner_steps"],
            ),
            "compile_s": compile_s,
            "batch_wall_s_median": batch_s,
            "batch_wall_s_all": batch_times,
            "jax_batch1_per_instance_s_all": single_times,
            "per_instance_s": {
                "jax_batched": batch_per_instance,
                "jax_batch1_loop": single_per_instance,
                "numpy_loop": numpy_per_instance,
            },
            "per_iteration_ms": {
                "jax_batched_per_instance": 1e3 * batch_per_instance / K,
                "jax_batch1": 1e3 * single_per_instance / K,
                "numpy": 1e3 * numpy_per_instance / K,
                "authors_pytorch_cpu_reference": AUTHORS_MS_PER_ITER_CPU,
            },
            "speedup_vs_numpy": numpy_per_instance / batch_per_instance,
            "speedup_vs_jax_batch1": float(np.median(round_ratios)),
            "speedup_vs_jax_batch1_per_round": round_ratios,
            "targets": {"vs_numpy": 100.0, "vs_jax_batch1": 3.0},
            "numpy_instances_timed": n_np,
            "jax_batch1_instances_timed": n1,
            "devices": [str(d) for d in jax.devices()],
            "final": {
                "f_minus_optimum_max_abs": float(np.max(np.abs(f_final - 1.0))),
                "exact_grad_norm_max": float(exact_norms.max()),
                "exact_grad_norm_median": float(np.median(exact_norms)),
                "estimate_grad_norm_median": float(np.median(hist["grad_norm"][:, -1])),
                "all_finite": bool(np.all(hist["finite"])),
            },
        }
    )
    bench.save(plot(hist, B, K), dpi=120)
    for k in ("compile_s", "per_iteration_ms", "speedup_vs_numpy"):
        bench.log(f"{k}: {result[k]}")
    bench.log(f"speedup_vs_jax_batch1: {result['speedup_vs_jax_batch1']}")
    bench.log(f"final: {result['final']}")


def plot(hist, B, K):
    """Median and 10-90% band over the batch of the gradient norm and the gap."""
    plt = harness.pyplot()
    k = np.arange(K)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, label in (
        (axes[0], "grad_norm", "‖ĝ_k‖"),
        (axes[1], "f", "f(x_k, π_k) − 1"),
    ):
        vals = np.asarray(hist[key])
        if key == "f":
            vals = np.abs(vals - 1.0)
        lo, med, hi = np.percentile(vals, [10, 50, 90], axis=0)
        ax.fill_between(
            k, np.maximum(lo, 1e-17), np.maximum(hi, 1e-17), alpha=0.3, label="10–90%"
        )
        ax.plot(k, np.maximum(med, 1e-17), label="median")
        ax.set_yscale("log")
        ax.set_xlabel("iteration k")
        ax.set_ylabel(label)
        ax.legend()
    fig.suptitle(f"M-SoBiRL, SoBiRL synthetic problem, batch of {B} instances")
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main(sys.argv[1:])
