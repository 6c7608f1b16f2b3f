"""The figure of ``scaling``: batch size, host devices, memory."""

from __future__ import annotations

import harness

from _scaling.child import DTYPE, A, S


def plot(result: dict):
    """Throughput vs batch, vs host devices, and peak memory vs batch."""
    plt = harness.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    pts = [r for r in result["batch_scaling"] if "fixed_sweeps" in r]
    ax = axes[0]
    ax.plot(
        [r["B"] for r in pts],
        [r["fixed_sweeps"]["mdp_sweeps_per_s"] for r in pts],
        "-o",
    )
    harness.log_axes(
        ax,
        xlabel="batch B (MDPs)",
        ylabel="MDP-sweeps / s",
        title=f"solve_batch, 1 device, S={S} A={A} {DTYPE}, "
        f"{result['config']['sweeps_fixed']} sweeps",
    )
    ax.grid(True, which="both", lw=0.3)

    ax = axes[1]
    dev = result["device_scaling"]
    cores = result["machine"]["cores"]
    ax.plot(
        [r["devices"] for r in dev],
        [r["fixed_sweeps"]["mdp_sweeps_per_s"] for r in dev],
        "-o",
        label="measured",
    )
    if dev:
        base = dev[0]["fixed_sweeps"]["mdp_sweeps_per_s"] / dev[0]["devices"]
        ds = [r["devices"] for r in dev]
        ax.plot(
            ds,
            [base * min(d, cores) for d in ds],
            ":",
            color="grey",
            label=f"linear up to {cores} cores",
        )
    ax.axvline(cores, color="r", lw=0.6, label=f"{cores} cores")
    ax.set(
        xscale="log",
        xlabel="XLA host devices",
        ylabel="MDP-sweeps / s",
        title=f"B={result['config']['devices_batch']} (>cores = oversubscribed)",
    )
    ax.set_xticks([r["devices"] for r in dev], [str(r["devices"]) for r in dev])
    ax.minorticks_off()
    ax.legend(fontsize=8)

    ax = axes[2]
    ax.plot(
        [r["B"] for r in pts],
        [r["maxrss_bytes"]["peak"] / 2**20 for r in pts],
        "-o",
        label="peak RSS (ru_maxrss)",
    )
    ax.plot(
        [r["B"] for r in pts],
        [r["P_bytes"] / 2**20 for r in pts],
        "--x",
        label="bytes of P",
    )
    harness.log_axes(
        ax,
        xlabel="batch B",
        ylabel="MiB",
        title="memory per configuration (own process)",
    )
    ax.legend(fontsize=8)
    fig.suptitle(harness.run_title("solve_batch scaling", result))
    fig.tight_layout()
    return fig
