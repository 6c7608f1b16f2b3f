"""The figure of ``soft_vi_throughput``: throughput, bytes read, chunks, solvers."""

from __future__ import annotations

import harness
import numpy as np

from _soft_vi.kernels import NUMPY_SUBSET


def plot(result: dict):
    """The figure of a ``soft_vi_throughput`` result (2 x 3 panels)."""
    plt = harness.pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(17, 10))
    grid = result["grid"]
    hl = result["headline"]["config"]

    ax = axes[0, 0]
    rows = [
        g
        for g in grid
        if (g["S"], g["A"], g["dtype"]) == (hl["S"], hl["A"], hl["dtype"])
    ]
    series = [
        ("solve_chunked", "solve_batch, chunked", "C0", "-"),
        ("solve_unchunked", "solve_batch, chunk = B", "C0", ":"),
        ("bare_chunked", "bare matvec, chunked", "C2", "-"),
        ("bare_unchunked", "bare matvec, whole batch", "C2", ":"),
        ("numpy_loop", f"NumPy loop ({NUMPY_SUBSET} MDPs)", "C3", "--"),
    ]
    for key, label, color, ls in series:
        pts = [
            (g["B"], g[key]["mdp_sweeps_per_s"])
            for g in rows
            if isinstance(g.get(key), dict)
        ]
        if pts:
            ax.plot(*zip(*pts), ls, color=color, marker="o", label=label)
    for rec in result.get("multi_core", []):
        if "sharded" in rec and (rec["S"], rec["A"], rec["dtype"]) == (
            hl["S"],
            hl["A"],
            hl["dtype"],
        ):
            ax.plot(
                rec["B"],
                rec["sharded"]["mdp_sweeps_per_s"],
                "*",
                color="C1",
                ms=12,
                label=f"solve_batch, shard_map over {rec['devices']} host devices",
            )
    harness.log_axes(
        ax,
        xlabel="batch B",
        ylabel="MDP-sweeps / s",
        title=f"S={hl['S']}, A={hl['A']}, {hl['dtype']}",
    )
    ax.legend(fontsize=8)

    ax = axes[0, 1]
    colors = {16: "C0", 64: "C1", 200: "C2"}
    for S in sorted({g["S"] for g in grid}):
        for A in sorted({g["A"] for g in grid}):
            for dt, ls in (("float32", "-"), ("float64", "--")):
                pts = [
                    (g["B"], g["solve_chunked"]["mdp_sweeps_per_s"])
                    for g in grid
                    if (g["S"], g["A"], g["dtype"]) == (S, A, dt)
                ]
                if pts:
                    ax.plot(
                        *zip(*pts),
                        ls,
                        color=colors.get(S, "k"),
                        marker="o" if A == 8 else "s",
                        ms=4,
                        label=f"S={S} A={A} {dt[-2:]}",
                    )
    harness.log_axes(
        ax,
        xlabel="batch B",
        ylabel="MDP-sweeps / s",
        title="solve_batch (chunked), all sizes",
    )
    ax.legend(fontsize=6, ncol=2)

    ax = axes[0, 2]
    bw = result["dram"]["best_bytes_per_s"]
    for S in sorted({g["S"] for g in grid}):
        for key, ls in (("solve_chunked", "-"), ("solve_unchunked", ":")):
            pts = [
                (g["B"], g[key]["p_bytes_per_s"] / 1e9)
                for g in grid
                if g["S"] == S
                and g["A"] == 8
                and g["dtype"] == "float32"
                and isinstance(g.get(key), dict)
            ]
            if pts:
                ax.plot(
                    *zip(*pts),
                    ls,
                    color=colors.get(S, "k"),
                    marker="o",
                    label=f"S={S} {key.split('_')[1]}",
                )
    ax.axhline(bw / 1e9, color="k", lw=1, label="DRAM read (measured)")
    harness.log_axes(
        ax,
        xlabel="batch B",
        ylabel="GB/s of P read",
        title="bytes of P read per second (A=8, float32)",
    )
    ax.legend(fontsize=7)

    ax = axes[1, 0]
    for key, curve in result["chunk_curve"].items():
        cs = [c["chunk"] for c in curve]
        ax.plot(
            cs,
            [c["solve"]["us_per_mdp_sweep"] for c in curve],
            "-o",
            label=f"solve {key}",
        )
        ax.plot(
            cs,
            [c["bare"]["us_per_mdp_sweep"] for c in curve],
            ":x",
            label=f"bare {key}",
        )
        ax.axvline(curve[0]["auto_chunk"], color="grey", lw=0.5)
    harness.log_axes(
        ax,
        xlabel="chunk (MDPs)",
        ylabel="us per MDP-sweep",
        title="chunk size (grey: auto_chunk_size)",
    )
    ax.legend(fontsize=6)

    ax = axes[1, 1]
    sv = result["sweep_variants"][0]
    var = sv["variants"]
    names = list(var)
    ax.barh(
        range(len(names)),
        [var[n]["us_per_mdp_sweep"] for n in names],
        color=["C0"] + ["C1"] * (len(names) - 1),
    )
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set(
        xlabel="us per MDP-sweep",
        title=f"K sweeps on the same chunks, B={sv['B']} S={sv['S']} A={sv['A']} "
        f"{sv['dtype']} chunk={sv['chunk']}",
    )
    ax.invert_yaxis()

    ax = axes[1, 2]
    rows = result["vi_vs_pi"]
    labels = [f"S={r['S']} g={r['gamma']} t={r['tau']}" for r in rows]
    x = np.arange(len(rows))
    ax.bar(
        x - 0.2,
        [1e3 * r["value_iteration"]["median_s"] for r in rows],
        0.4,
        label="value iteration",
    )
    ax.bar(
        x + 0.2,
        [1e3 * r["policy_iteration"]["median_s"] for r in rows],
        0.4,
        label="policy iteration",
    )
    for i, r in enumerate(rows):
        ax.text(
            i - 0.2,
            1e3 * r["value_iteration"]["median_s"],
            str(r["value_iteration"]["iterations"]),
            ha="center",
            fontsize=6,
        )
        ax.text(
            i + 0.2,
            1e3 * r["policy_iteration"]["median_s"],
            str(r["policy_iteration"]["iterations"]),
            ha="center",
            fontsize=6,
        )
    ax.set_xticks(x, labels, rotation=60, fontsize=6, ha="right")
    ax.set(
        yscale="log",
        ylabel="ms to tol 1e-6 (labels: iterations)",
        title="one MDP, A=8, float64",
    )
    ax.legend(fontsize=7)

    fig.suptitle(harness.run_title("soft VI throughput", result))
    fig.tight_layout()
    return fig
