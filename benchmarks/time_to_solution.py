"""Time to tolerance of the soft solvers, the automatic choice, and hardware ratios.

Measured in one process, on random Dirichlet(1) MDPs (``A = 8``, ``tau = 1``,
rewards ``U[0,1)``, :func:`_soft_vi.kernels.make_problem`):

* ``grid``: :func:`bilevel_rl.solve_batch` to ``tol = 1e-6`` with
  ``method="value_iteration"``, ``"policy_iteration"`` and ``"auto"`` on every cell of
  ``S in {16, 64, 200}``, ``gamma in {0.9, 0.99, 0.999}``, float32/float64 (batch
  ``BATCH[S]``, times ``--batch-scale``); per cell the time per MDP, sweeps / rounds,
  stop status (float32 meets its round-off floor above ``1e-6``), the largest error
  ``||v - V*||_inf`` against float64 policy iteration to ``1e-12``, and
  ``auto / min(VI, PI)`` (target: ``<= 1.2`` on every cell);
* ``fit``: the per-sweep and per-round costs of the grid fitted to the cost model
  of ``method="auto"`` (:class:`bilevel_rl.soft.SolverCost`), next to the constants
  in use (:data:`bilevel_rl.soft.SOLVER_COSTS`);
* ``target``: 10,000 MDPs with ``S = 100, A = 10``, float32, to ``1e-6`` with policy
  iteration and ``auto`` (target on one H100/H200: under 1 s with ``auto``);
* ``sweep``: at ``B = 1024, S = 64, A = 8`` float32, ``K`` sweeps of ``solve_batch``
  against the bare batched matvec on the same chunks and a NumPy per-MDP loop
  (targets: ``<= 1.25x`` the matvec, ``<= 1 us`` per MDP-sweep, ``>= 14x`` NumPy);
* ``m_sobirl``: the paper's synthetic M-SoBiRL (``benchmarks/msobirl_synthetic.py``)
  per instance-iteration at batch 256 float64 against the NumPy per-instance loop
  (target ``>= 300x``) and against the same JAX code at batch 1 (target ``>= 3x``).

Every timing is :func:`harness.timed` (compile time apart, steady-state median).

Usage::

    python benchmarks/time_to_solution.py            # full run
    python benchmarks/time_to_solution.py --quick    # smoke run
"""

from __future__ import annotations

import sys

import harness
import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import scipy.optimize  # noqa: E402
from _soft_vi.kernels import bare_chunked, make_problem, numpy_loop, to_mdp  # noqa: E402

from bilevel_rl.batched import auto_chunk_size, batch_method, solve_batch  # noqa: E402
from bilevel_rl.soft import SOLVER_COSTS, STATUS  # noqa: E402

NAME = "time_to_solution"
TOL = 1e-6
METHODS = ("value_iteration", "policy_iteration", "auto")
GRID = {
    "S": (16, 64, 200),
    "gamma": (0.9, 0.99, 0.999),
    "dtype": ("float32", "float64"),
}
BATCH = {16: 1024, 64: 256, 200: 16}
QUICK = {"S": (8, 24), "gamma": (0.9, 0.99), "dtype": ("float32", "float64")}
AUTO_TARGET, SWEEP_TARGETS, MSOBIRL_TARGETS = 1.2, (1.25, 1.0, 14.0), (300.0, 3.0)


def _timed(fn, quick):
    return harness.timed(fn, repeats=2 if quick else 3, long_call_s=1.0, long_repeats=2)


def grid_cell(S, gamma, dtype, B, quick) -> dict:
    P, r = make_problem(S, 8, B, dtype, seed=S)
    mdp, reward = to_mdp(P, gamma=gamma), jnp.asarray(r)
    exact = solve_batch(
        to_mdp(P.astype(np.float64), gamma=gamma),
        jnp.asarray(r, jnp.float64),
        tol=1e-12,
        method="policy_iteration",
    ).v
    cell = {"S": S, "A": 8, "gamma": gamma, "dtype": dtype, "batch": B, "tol": TOL}
    cell["auto_chose"] = batch_method(mdp, reward, tol=TOL, max_iters=10**6)
    recs = harness.interleaved(
        {
            m: lambda m=m: solve_batch(mdp, reward, tol=TOL, max_iters=10**6, method=m)
            for m in METHODS
        },
        repeats=2 if quick else 3,
    )
    for method, rec in recs.items():
        sol = rec.pop("_out")
        its = np.asarray(sol.iterations)
        status = np.asarray(sol.status)
        rec.update(
            us_per_mdp=1e6 * rec["median_s"] / B,
            iterations_mean=float(its.mean()),
            iterations_max=int(its.max()),
            status={n: int((status == i).sum()) for i, n in enumerate(STATUS)},
            residual_max=float(np.max(sol.residual)),
            error_max=float(jnp.max(jnp.abs(sol.v.astype(jnp.float64) - exact))),
        )
        cell[method] = harness.public(rec, samples=True)
    # The median over rounds of the per-round ratio: each round timed all three
    # under the same machine load.
    walls = {m: np.array(cell[m]["all_s"]) for m in METHODS}
    best = np.minimum(walls["value_iteration"], walls["policy_iteration"])
    cell["auto_over_best"] = float(np.median(walls["auto"] / best))
    harness.log(
        f"S={S} gamma={gamma} {dtype}: VI {cell['value_iteration']['us_per_mdp']:.1f}"
        f" us, PI {cell['policy_iteration']['us_per_mdp']:.1f} us, auto "
        f"({cell['auto_chose']}) / best = {cell['auto_over_best']:.2f}"
    )
    return cell


def fit_costs(cells) -> dict:
    """Non-negative least-squares fit of :class:`bilevel_rl.soft.SolverCost` (ns per
    MDP) to the grid, relative (every cell weighs the same), with the model's
    relative error per cell."""
    sweeps, rounds = [], []
    for c in cells:
        S, A, item = c["S"], c["A"], np.dtype(c["dtype"]).itemsize
        vi, pi = c["value_iteration"], c["policy_iteration"]
        p_bytes = S * S * A * item
        sweeps.append(([p_bytes, 1.0], 1e3 * vi["us_per_mdp"] / vi["iterations_mean"]))
        cubes = [S**3 * (item == 4), S**3 * (item == 8)]
        per_round = 1e3 * pi["us_per_mdp"] / max(pi["iterations_mean"], 1.0)
        rounds.append(([p_bytes, *cubes, 1.0], per_round))

    def fit(rows):
        X = np.array([x for x, _ in rows])
        t = np.array([y for _, y in rows])
        coef = scipy.optimize.nnls(X / t[:, None], np.ones(len(t)))[0]
        return coef, (X @ coef / t).tolist()

    (per_byte, fixed), sweep_ratio = fit(sweeps)
    coef, round_ratio = fit(rounds)
    backend = jax.default_backend()
    return {
        "fitted": {
            "sweep_per_byte": per_byte,
            "sweep_fixed": fixed,
            "round_per_byte": coef[0],
            "round_per_cube": {"4": coef[1], "8": coef[2]},
            "round_fixed": coef[3],
        },
        "model_over_measured": {"sweep": sweep_ratio, "round": round_ratio},
        "in_use": SOLVER_COSTS.get(backend, SOLVER_COSTS["cpu"])._asdict(),
        "backend": backend,
    }


def target(quick) -> dict:
    B, S, A = (200, 20, 10) if quick else (10_000, 100, 10)
    P, r = make_problem(S, A, B, "float32", seed=7)
    mdp, reward = to_mdp(P, gamma=0.99), jnp.asarray(r)
    out = {"batch": B, "S": S, "A": A, "gamma": 0.99, "dtype": "float32", "tol": TOL}
    # Value iteration is left out here: ~1000 sweeps, 90 s on 2 CPU cores (the
    # grid compares it with policy iteration).
    for method in ("policy_iteration", "auto"):
        rec = _timed(
            lambda m=method: solve_batch(mdp, reward, tol=TOL, method=m), quick
        )
        sol = rec.pop("_out")
        rec["iterations_max"] = int(np.max(sol.iterations))
        rec["residual_max"] = float(np.max(sol.residual))
        rec["stopped_by_tol_or_floor"] = bool(np.all(np.asarray(sol.status) <= 1))
        out[method] = harness.public(rec)
    out["auto_chose"] = batch_method(mdp, reward, tol=TOL, max_iters=10_000)
    out["auto_under_1s"] = out["auto"]["median_s"] < 1.0
    harness.log(f"target: auto {out['auto']['median_s']:.3f} s ({out['auto_chose']})")
    return out


def sweep_ratios(quick) -> dict:
    B, S, A, K = (64, 16, 8, 50) if quick else (1024, 64, 8, 300)
    P, r = make_problem(S, A, B, "float32", seed=1)
    mdp, reward = to_mdp(P, gamma=0.99), jnp.asarray(r)
    chunk = auto_chunk_size(mdp, B)
    lib = _timed(
        lambda: solve_batch(
            mdp,
            reward,
            tol=0.0,
            max_iters=K,
            method="value_iteration",
            chunk_size=chunk,
        ),
        quick,
    )
    assert np.all(np.asarray(lib.pop("_out").iterations) == K)
    v0 = jnp.zeros((B, S), jnp.float32)
    bare = _timed(lambda: bare_chunked(mdp.P, v0, chunk=chunk, num_sweeps=K), quick)
    bare.pop("_out")
    npy = numpy_loop(P[:32], r[:32], K, 1)
    npy.pop("_out")
    us = {
        "library": 1e6 * lib["median_s"] / (B * K),
        "bare_matvec": 1e6 * bare["median_s"] / (B * K),
        "numpy_loop": 1e6 * npy["median_s"] / (npy["mdps_timed"] * K),
    }
    out = {"batch": B, "S": S, "A": A, "dtype": "float32", "sweeps": K, "chunk": chunk}
    out["us_per_mdp_sweep"] = us
    out["library_over_bare"] = us["library"] / us["bare_matvec"]
    out["numpy_over_library"] = us["numpy_loop"] / us["library"]
    out["compile_s"] = {"library": lib["compile_s"], "bare_matvec": bare["compile_s"]}
    out["targets"] = dict(zip(("over_bare", "us", "numpy_over"), SWEEP_TARGETS))
    harness.log(f"sweep: {us} library/bare {out['library_over_bare']:.2f}")
    return out


def m_sobirl_ratios(quick) -> dict:
    import msobirl_synthetic as ms

    from bilevel_rl.algorithms import m_sobirl
    from bilevel_rl.experiment import run
    from bilevel_rl.suites import sobirl_synthetic

    B, K, n_np = (16, 30, 2) if quick else (256, 300, 4)
    keys = jax.random.split(jax.random.key(0), B)
    solver = m_sobirl.make(**ms.CONFIG, w0="data", track_exact=False)
    batch = jax.vmap(sobirl_synthetic)(keys)
    rec = _timed(lambda: run(solver, batch, keys, K)[0].x, quick)
    rec.pop("_out")
    batched = 1e6 * rec["median_s"] / (B * K)
    batch1 = 1e6 * ms.time_batch1(K, 4 if not quick else 2) / K
    one = [jax.tree.map(lambda a, i=i: a[i], batch) for i in range(n_np)]
    wall, _, _ = harness.once(
        lambda: [ms.numpy_m_sobirl(*ms.numpy_inputs(p), K) for p in one]
    )
    numpy_us = 1e6 * wall / (n_np * K)
    out = {"batch": B, "iterations": K, "dtype": "float64"}
    out["us_per_instance_iteration"] = {
        "batched": batched,
        "batch1": batch1,
        "numpy_loop": numpy_us,
    }
    out["numpy_over_batched"] = numpy_us / batched
    out["batch1_over_batched"] = batch1 / batched
    out["compile_s"] = rec["compile_s"]
    out["targets"] = dict(zip(("numpy_over", "batch1_over"), MSOBIRL_TARGETS))
    harness.log(f"m_sobirl: {out['us_per_instance_iteration']}")
    return out


def plot(result):
    plt = harness.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    ax = axes[0]
    for c, (dtype, S) in enumerate(
        (d, s) for d in result["grid_axes"]["dtype"] for s in result["grid_axes"]["S"]
    ):
        cells = [x for x in result["grid"] if x["dtype"] == dtype and x["S"] == S]
        g = [x["gamma"] for x in cells]
        color = f"C{c}"
        for method, style in zip(METHODS, ("--", ":", "-")):
            ax.plot(
                g,
                [x[method]["us_per_mdp"] for x in cells],
                style,
                color=color,
                marker="o" if method == "auto" else None,
                label=f"S={S} {dtype}" if method == "auto" else None,
            )
    harness.log_axes(
        ax,
        xlabel="gamma",
        ylabel="us per MDP to tol 1e-6",
        title="VI (--), PI (:), auto (-o)",
    )
    ax.set_xscale("linear")
    ax.legend(fontsize=7)
    ax = axes[1]
    ratios = [x["auto_over_best"] for x in result["grid"]]
    ax.bar(range(len(ratios)), ratios, color="C2")
    ax.axhline(AUTO_TARGET, color="k", ls="--", lw=1, label="target 1.2")
    ax.set(xlabel="grid cell", ylabel="auto / faster of VI, PI", title="auto")
    ax.legend()
    fig.suptitle(harness.run_title("Time to solution", result), fontsize=9)
    fig.tight_layout()
    return fig


def main(argv=None):
    p = harness.parser(__doc__)
    p.add_argument("--batch-scale", type=float, default=1.0, help="multiplies BATCH")
    p.add_argument("--skip", nargs="*", default=(), help="sections to skip")
    args = p.parse_args(argv)
    bench = harness.Bench(NAME, args, argv)
    axes = QUICK if args.quick else GRID
    result = bench.result
    result.update(tol=TOL, grid_axes=axes, batch=BATCH, batch_scale=args.batch_scale)
    result["grid"] = [
        grid_cell(S, g, d, max(1, int(BATCH.get(S, 64) * args.batch_scale)), args.quick)
        for d in axes["dtype"]
        for S in axes["S"]
        for g in axes["gamma"]
    ]
    worst = max(c["auto_over_best"] for c in result["grid"])
    result["auto_over_best_max"] = worst
    result["auto_within_target_everywhere"] = worst <= AUTO_TARGET
    result["fit"] = fit_costs(result["grid"])
    sections = {"target": target, "sweep": sweep_ratios, "m_sobirl": m_sobirl_ratios}
    for name, fn in sections.items():
        if name not in args.skip:
            result[name] = fn(args.quick)
    bench.save(plot(result))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
