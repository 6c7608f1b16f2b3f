"""The figure of ``hypergrad``: cost vs ``S``, unrolled error vs ``K``."""

from __future__ import annotations

import harness
import numpy as np

from _hypergrad.cost import K_UNROLLED, A

TARGET_RATIO = 3.0

METHOD_STYLE = {
    "forward_vi": ("forward solve (VI)", "k-o"),
    "forward_pi": ("forward solve (PI)", "k--s"),
    "implicit_dense_vi": ("implicit, dense adjoint (VI)", "C0-o"),
    "implicit_iterative_vi": ("implicit, iterative adjoint (VI)", "C1-o"),
    "implicit_dense_pi": ("implicit, dense adjoint (PI)", "C0--s"),
    "implicit_iterative_pi": ("implicit, iterative adjoint (PI)", "C1--s"),
    "closed_form_dense_vi": ("closed form (VI, dense)", "C2:^"),
    "unrolled_K200": (f"unrolled K={K_UNROLLED}", "C3-v"),
    "adjoint_only_dense": ("adjoint solve only, dense", "C4:."),
}


def plot(result):
    """Cost vs ``S`` (left) and unrolled error vs ``K`` (right)."""
    plt = harness.pyplot()
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(15, 5))
    sweep = result["sweep"]
    sizes = [r["S"] for r in sweep]
    for name, (label, style) in METHOD_STYLE.items():
        pts = [
            (r["S"], r["times"][name]["median_s"]) for r in sweep if name in r["times"]
        ]
        if pts:
            s, t = zip(*pts, strict=True)
            ax0.loglog(s, np.asarray(t) * 1e3, style, label=label, ms=4, lw=1.5)
    fwd = np.array([r["times"]["forward_vi"]["median_s"] for r in sweep])
    ax0.loglog(
        sizes,
        TARGET_RATIO * fwd * 1e3,
        color="gray",
        lw=0.8,
        alpha=0.6,
        label=f"{TARGET_RATIO:g} x forward (VI)",
    )
    ax0.set_xlabel("S (A = 8)")
    ax0.set_ylabel("time per call [ms]")
    cfg = result["config"]
    ax0.set_title(f"one hyper-gradient, float64, γ={cfg['gamma']}, tol={cfg['tol']:g}")
    ax0.legend(fontsize=6.5)
    ax0.grid(True, which="both", alpha=0.3)

    colors = {"0.9": "C0", "0.99": "C3"}
    inset = ax1.inset_axes([0.5, 0.6, 0.47, 0.36])
    curves = (
        ("dirichlet", "value", "-o", 1.5, "Dirichlet, f(π)+ρᵀv"),
        ("dirichlet", "policy", "--s", 1.5, "Dirichlet, f(π)"),
        ("garnet_b2", "policy", "-.", 1.0, "Garnet b=2, f(π)"),
    )
    for kind, obj, style, lw, name in curves:
        for g, rec in result["unrolled_error"].get(kind, {}).items():
            ks = np.asarray(rec["K"])
            err = np.maximum(np.asarray(rec[obj]["rel_err"]), 1e-17)
            slope = rec[obj]["slope"]
            lbl = f"γ={g}, {name}"
            if slope is not None:
                lbl += f": slope {slope:.3f}"
                if obj == "policy":
                    lbl += f" (log γ|λ₂| = {rec['log_gamma_abs_lambda2']:.3f})"
            for ax in (ax1, inset):
                ax.semilogy(ks, err, style, color=colors.get(g), lw=lw, ms=3, label=lbl)
    for g, rec in result["unrolled_error"].get("dirichlet", {}).items():
        ks, gamma = np.asarray(rec["K"]), float(g)
        e0 = rec["value"]["rel_err"]
        anchor = int(np.argmin(np.abs(ks - 20)))
        ref = 3.0 * e0[anchor] * gamma ** (ks - ks[anchor])
        ax1.semilogy(
            ks,
            ref,
            ":",
            color=colors.get(g),
            lw=1.2,
            label=f"∝ γ^K (log γ = {np.log(gamma):.3f})",
        )
    ax1.set_ylim(1e-16, 1e2)
    ax1.set_xlabel("unrolled sweeps K")
    ax1.set_ylabel("‖g_K − g_closed‖ / ‖g_closed‖")
    ax1.set_title(f"unrolled hyper-gradient error, S={result['unrolled_S']}, A={A}")
    ax1.legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    inset.set_xlim(0, 60)
    inset.set_ylim(1e-16, 1e1)
    inset.text(
        0.97, 0.45, "zoom: K ≤ 60", transform=inset.transAxes, ha="right", fontsize=7
    )
    inset.tick_params(labelsize=6)
    inset.grid(True, which="major", alpha=0.3)
    ax1.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig
