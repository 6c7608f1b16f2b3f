"""Cost of one hyper-gradient vs ``S``, and the error of the unrolled one vs ``K``.

Problem: a Dirichlet(1) MDP (:func:`bilevel_rl.suites.dirichlet_mdp`), ``A = 8``,
``tau = 0.5``, the reward model ``r_x = tanh(phi x)`` with Gaussian features
``phi: [S, A, d]``, ``d = 16`` (:func:`bilevel_rl.rewards.tanh_reward`), and the upper
objective ``f(x, pi) = 1/2 ||pi - pi_target||_F^2 + lam/2 ||x||^2``.

**Cost vs S** (float64, ``gamma = 0.9``; plus ``gamma = 0.99`` and float32 at
``S = 200``). In one process run, on the same problem and with the same solver
tolerance ``tol``, it times (jitted, compile time separately, then the median of
several steady-state calls interleaved across methods, ``block_until_ready``):

* ``forward``: one soft solve to ``tol``
  (:func:`bilevel_rl.soft.soft_value_iteration`, ``value_iteration`` and
  ``policy_iteration``) at the reward ``r_x``, and ``phi(x) = f(x, pi*_x)``;
* ``implicit``: ``jax.value_and_grad`` through
  :func:`bilevel_rl.implicit.soft_optimal_policy` (``adjoint="dense"`` and
  ``"iterative"``) with the same forward solver and ``tol``;
* ``closed_form``: the explicit adjoint formula
  (:func:`bilevel_rl.hypergrad.value_and_hypergradient`, dense adjoint);
* ``unrolled``: ``jax.value_and_grad`` through ``K = 200`` sweeps in a ``lax.scan``;
* ``adjoint``: the adjoint solve alone (:func:`bilevel_rl.implicit.adjoint_weights`)
  at the solution, to show how the backward pass splits;
* ``...@blas1``: every program that calls LAPACK (the LU of the dense adjoint and
  of policy iteration) once more with SciPy's OpenBLAS, which jaxlib's CPU LAPACK
  uses, set to one thread (:class:`BlasThreads`). By default it runs one thread per
  core; next to XLA's own threads on a 2-core machine that occasionally makes a
  200 x 200 LU take tens of milliseconds instead of half of one.

The acceptance ratio is (implicit hyper-gradient) / (forward solve of the same
``tol`` and the same forward method) at ``S = 200, A = 8`` (target ``<= 3``).
Every gradient is checked against a tight reference (closed form, policy iteration
to round-off).

**Unrolled error vs K** (``S = 64``, float64, ``gamma in {0.9, 0.99}``, the
Dirichlet MDP and a slower-mixing Garnet MDP with branching 2):
``||g_unrolled(K) - g_ref|| / ||g_ref||`` on a geometric grid of ``K`` for two upper
objectives: the policy-only ``f`` above, and ``f + rho^T v`` that also reads ``V``.
A policy is invariant to adding a constant to ``V``, so the slow constant mode of
the error (rate ``gamma``) drops out of the policy-only objective, whose error
decays like ``(gamma |lambda_2|)^K`` (``lambda_2``: second eigenvalue of ``P_pi*``);
the value objective shows the ``gamma^K`` rate. Log-linear slopes are fitted and
reported next to ``log(gamma)`` and ``log(gamma |lambda_2|)``.

Writes ``benchmarks/results/hypergrad.{json,png}``.

Usage::

    python benchmarks/hypergrad.py            # full run, ~2 min on 2 idle cores
    python benchmarks/hypergrad.py --quick    # smoke test, ~30 s (mostly compiles)
    python benchmarks/hypergrad.py --out /tmp/hg   # writes /tmp/hg.{json,png}
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import functools
import json
import os
import platform
import time
from typing import NamedTuple

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from machine import cpu_model  # noqa: E402

from bilevel_rl.hypergrad import value_and_hypergradient  # noqa: E402
from bilevel_rl.implicit import adjoint_weights, soft_optimal_solution  # noqa: E402
from bilevel_rl.rewards import tanh_reward  # noqa: E402
from bilevel_rl.soft import (  # noqa: E402
    soft_value_iteration,
    soft_value_iteration_unrolled,
)
from bilevel_rl.suites import (  # noqa: E402
    dirichlet_mdp,
    garnet_mdp,
    random_reward_features,
)

HERE = os.path.dirname(os.path.abspath(__file__))
A = 8
DIM = 16
TAU = 0.5
LAM = 1e-2
TOL = 1e-8
K_UNROLLED = 200
REF_TOL = 1e-12
HEADLINE_S = 200
BLAS1 = "@blas1"  # suffix of a timing taken with one OpenBLAS thread
TARGET_RATIO = 3.0


class Problem(NamedTuple):
    mdp: object
    features: jax.Array
    x: jax.Array
    target: jax.Array


def make_problem(S, gamma, dtype, seed=0, kind="dirichlet") -> Problem:
    """The benchmark problem: MDP, reward features, leader variable, target policy."""
    keys = jax.random.split(jax.random.key(1000 * seed + S), 4)
    if kind == "dirichlet":
        mdp = dirichlet_mdp(keys[0], S, A, gamma=gamma, tau=TAU, dtype=dtype)
    else:
        mdp = garnet_mdp(keys[0], S, A, 2, gamma=gamma, tau=TAU, dtype=dtype)
    features = random_reward_features(keys[1], S, A, DIM, dtype=dtype).features
    x = jax.random.normal(keys[2], (DIM,), dtype)
    target = jax.nn.softmax(2.0 * jax.random.normal(keys[3], (S, A), dtype), axis=-1)
    return Problem(mdp, features, x, target)


def upper_policy(target, x, policy):
    """``f(x, pi) = 1/2 ||pi - target||^2 + lam/2 ||x||^2``."""
    return 0.5 * jnp.sum((policy - target) ** 2) + 0.5 * LAM * jnp.sum(x * x)


def upper_value(target, rho, x, policy, v):
    """``f(x, pi) + rho^T v``: also reads the soft value (keeps the gamma^K mode)."""
    return upper_policy(target, x, policy) + rho @ v


# ---------------------------------------------------------------- the timed programs


def program_forward_solve(method):
    def fn(p: Problem):
        reward = tanh_reward(p.features, p.x)
        sol = soft_value_iteration(p.mdp, reward, tol=TOL, method=method)
        return sol.policy, sol.iterations, sol.residual

    return fn


def program_forward_phi(method):
    def fn(p: Problem):
        reward = tanh_reward(p.features, p.x)
        sol = soft_value_iteration(p.mdp, reward, tol=TOL, method=method)
        return upper_policy(p.target, p.x, sol.policy)

    return fn


def program_hypergrad(method, solver="value_iteration", adjoint="dense", tol=TOL):
    def fn(p: Problem):
        return value_and_hypergradient(
            functools.partial(upper_policy, p.target),
            functools.partial(tanh_reward, p.features),
            p.x,
            p.mdp,
            method=method,
            num_unrolled=K_UNROLLED,
            tol=tol,
            solver_method=solver,
            adjoint=adjoint,
        )

    return fn


def program_unrolled_forward(p: Problem):
    reward = tanh_reward(p.features, p.x)
    sol = soft_value_iteration_unrolled(p.mdp, reward, K_UNROLLED)
    return upper_policy(p.target, p.x, sol.policy)


def program_adjoint(adjoint):
    def fn(p: Problem, policy, grad_policy):
        return adjoint_weights(p.mdp, policy, grad_policy, adjoint=adjoint, tol=TOL)

    return fn


def compile_program(fn, *args):
    """AOT-compiles ``jax.jit(fn)`` for ``args``; returns (compiled, seconds)."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - t0


class BlasThreads:
    """Sets the thread count of the OpenBLAS that JAX's CPU LAPACK calls use.

    jaxlib's LU / triangular solves (``jnp.linalg.solve``, hence the dense adjoint
    and policy iteration) call the LAPACK of SciPy's bundled OpenBLAS, which by
    default runs one thread per core and busy-waits; on a shared, loaded 2-core
    machine that can be many times slower than one thread. This finds that library
    among the loaded ones and calls its ``*_set_num_threads`` (what threadpoolctl
    does), so both settings can be timed in the same process run. ``available`` is
    False when no such library is loaded (then nothing is changed).
    """

    def __init__(self):
        self.lib, self.path, self.default = None, None, None
        try:
            with open("/proc/self/maps") as fh:
                paths = {line.split()[-1] for line in fh if "openblas" in line}
        except OSError:
            paths = set()
        # SciPy's library (cython_lapack, used by jaxlib), not NumPy's ``64_`` one.
        for path in sorted(paths):
            name = os.path.basename(path)
            if "scipy_openblas" in name and "64_" not in name:
                lib = ctypes.CDLL(path)
                if hasattr(lib, "scipy_openblas_set_num_threads"):
                    self.lib, self.path = lib, path
                    self.default = int(lib.scipy_openblas_get_num_threads())
                    break

    @property
    def available(self) -> bool:
        return self.lib is not None

    def set(self, n):
        if self.lib is not None:
            self.lib.scipy_openblas_set_num_threads(int(n or self.default))


BLAS = None  # a BlasThreads, built after JAX has loaded LAPACK (see main)


def time_interleaved(programs, repeats):
    """Times every ``name -> (compiled, args, blas_threads)`` round-robin.

    Interleaving the repeats across methods makes a load spike from another process
    hit every method alike. ``blas_threads`` is the OpenBLAS thread count for that
    program (``None``: the library default). Returns ``name -> dict`` with the
    first (warm-up) call, every steady-state wall time, the median, the minimum and
    the process-CPU / wall ratio.
    """
    out = {}

    def call(compiled, args, blas_threads):
        if BLAS is not None:
            BLAS.set(blas_threads)
        c0, t0 = time.process_time(), time.perf_counter()
        jax.block_until_ready(compiled(*args))
        wall = time.perf_counter() - t0
        return wall, (time.process_time() - c0) / wall

    for name, prog in programs.items():
        out[name] = {"first_call_s": call(*prog)[0], "all_s": [], "cpu": []}
    for _ in range(repeats):
        for name, prog in programs.items():
            wall, cpu = call(*prog)
            out[name]["all_s"].append(wall)
            out[name]["cpu"].append(cpu)
    if BLAS is not None:
        BLAS.set(None)
    for rec in out.values():
        rec["median_s"] = float(np.median(rec["all_s"]))
        rec["min_s"] = float(np.min(rec["all_s"]))
        rec["cpu_over_wall_median"] = float(np.median(rec.pop("cpu")))
    return out


def _to_f64(a):
    return a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a


def rel_err(g, ref):
    g, ref = np.asarray(g, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(g - ref) / np.linalg.norm(ref))


def bench_size(S, gamma, dtype, repeats, with_pi=True, with_unrolled=True):
    """All timings for one ``(S, gamma, dtype)``; returns a JSON-ready dict."""
    p = make_problem(S, gamma, dtype)
    programs = {
        "forward_vi": program_forward_solve("value_iteration"),
        "forward_phi_vi": program_forward_phi("value_iteration"),
        "implicit_dense_vi": program_hypergrad("implicit", adjoint="dense"),
        "implicit_iterative_vi": program_hypergrad("implicit", adjoint="iterative"),
        "closed_form_dense_vi": program_hypergrad("closed_form", adjoint="dense"),
    }
    if with_pi:
        pi = "policy_iteration"
        programs.update(
            {
                "forward_pi": program_forward_solve(pi),
                "implicit_dense_pi": program_hypergrad("implicit", pi, "dense"),
                "implicit_iterative_pi": program_hypergrad("implicit", pi, "iterative"),
            }
        )
    if with_unrolled:
        programs["unrolled_K200"] = program_hypergrad("unrolled")
        programs["unrolled_forward_K200"] = program_unrolled_forward

    # the adjoint solve alone, at the solution of this problem
    sol = jax.jit(program_forward_solve("value_iteration"))(p)
    policy = sol[0]
    grad_policy = jax.grad(upper_policy, argnums=2)(p.target, p.x, policy)

    compiled, compile_s = {}, {}
    for name, fn in programs.items():
        compiled[name], compile_s[name] = compile_program(fn, p)
    timed = {name: (compiled[name], (p,), None) for name in programs}
    for adj in ("dense", "iterative"):
        name = f"adjoint_only_{adj}"
        args = (p, policy, grad_policy)
        compiled[name], compile_s[name] = compile_program(program_adjoint(adj), *args)
        timed[name] = (compiled[name], args, None)
    # the programs that call LAPACK (LU solves), once more with 1 OpenBLAS thread
    if BLAS is not None and BLAS.available and BLAS.default != 1:
        for name in list(timed):
            if "dense" in name or name.endswith("_pi"):
                timed[f"{name}{BLAS1}"] = (*timed[name][:2], 1)

    times = time_interleaved(timed, repeats)
    for name in times:
        times[name]["compile_s"] = compile_s[name.removesuffix(BLAS1)]

    # accuracy: every gradient against a tight reference
    # (in float64 whatever the benchmark dtype)
    ref_fn = program_hypergrad("closed_form", "policy_iteration", "dense", tol=REF_TOL)
    ref_val, ref_grad = jax.jit(ref_fn)(jax.tree.map(_to_f64, p))
    accuracy = {}
    for name in programs:
        if name.startswith(("implicit", "closed_form", "unrolled_K")):
            val, grad = compiled[name](p)
            accuracy[name] = {
                "grad_rel_err": rel_err(grad, ref_grad),
                "value_abs_err": float(abs(val - ref_val)),
            }
    fwd = {
        "vi_iterations": int(sol[1]),
        "vi_residual": float(sol[2]),
    }
    if with_pi:
        sol_pi = compiled["forward_pi"](p)
        fwd.update(pi_iterations=int(sol_pi[1]), pi_residual=float(sol_pi[2]))

    ratios, ratios_of_min = {}, {}
    for name in times:
        if name.startswith(("implicit", "closed_form")):
            blas1 = name.endswith(BLAS1)
            solver = name.removesuffix(BLAS1).rsplit("_", 1)[1]
            fwd_name = f"forward_{solver}"
            if blas1 and fwd_name + BLAS1 in times:
                fwd_name += BLAS1
            ratios[name] = times[name]["median_s"] / times[fwd_name]["median_s"]
            ratios_of_min[name] = times[name]["min_s"] / times[fwd_name]["min_s"]
    if with_unrolled:
        ratios["unrolled_K200_over_forward_vi"] = (
            times["unrolled_K200"]["median_s"] / times["forward_vi"]["median_s"]
        )
    ratios["phi_implicit_dense_vi_over_forward_phi_vi"] = (
        times["implicit_dense_vi"]["median_s"] / times["forward_phi_vi"]["median_s"]
    )
    backward = {}
    for s in ("vi", "pi") if with_pi else ("vi",):
        for adj in ("dense", "iterative"):
            backward[f"implicit_{adj}_{s}_minus_forward_{s}_s"] = (
                times[f"implicit_{adj}_{s}"]["median_s"]
                - times[f"forward_{s}"]["median_s"]
            )
    return {
        "S": S,
        "A": A,
        "gamma": gamma,
        "dtype": jnp.dtype(dtype).name,
        "repeats": repeats,
        "forward": fwd,
        "times": times,
        "ratios": ratios,
        "ratios_of_min_times": ratios_of_min,
        "backward_estimate": backward,
        "accuracy": accuracy,
    }


# ---------------------------------------------------------- unrolled error vs K


def second_eigenvalue(mdp, policy):
    P_pi = np.asarray(jnp.einsum("sa,sat->st", policy, mdp.P))
    ev = np.sort(np.abs(np.linalg.eigvals(P_pi)))[::-1]
    return float(ev[1])


def fit_slope(ks, errs, floor):
    """Least-squares slope of ``log(err)`` vs ``K`` on the points above ``floor``."""
    ks, errs = np.asarray(ks, float), np.asarray(errs, float)
    keep = (errs > floor) & (ks >= 4) & np.isfinite(errs)
    if keep.sum() < 2:
        return None, None, []
    kk, le = ks[keep], np.log(errs[keep])
    slope = float(np.polyfit(kk, le, 1)[0])
    # err ~ C K gamma^K: the slope of log(err / K) removes the K prefactor
    slope_over_k = float(np.polyfit(kk, le - np.log(kk), 1)[0])
    return slope, slope_over_k, [int(k) for k in kk]


def _solution(p: Problem, x):
    return soft_optimal_solution(
        p.mdp,
        tanh_reward(p.features, x),
        tol=REF_TOL,
        method="policy_iteration",
        adjoint="dense",
    )


OBJECTIVES = ("policy", "value")


def _objective(p: Problem, obj: str, solve):
    """``x -> f(x, pi_x)`` (``obj="policy"``) or ``f + rho^T v_x`` (``"value"``)."""

    def phi(x):
        sol = solve(p, x)
        if obj == "policy":
            return upper_policy(p.target, x, sol.policy)
        return upper_value(p.target, p.mdp.rho, x, sol.policy, sol.v)

    return phi


@jax.jit
def reference_grads(p: Problem):
    """Tight references: closed form (explicit adjoint) and implicit (custom_vjp)."""
    sol = _solution(p, p.x)
    g_x, g_pi = jax.grad(upper_policy, argnums=(1, 2))(p.target, p.x, sol.policy)
    _, reward_vjp = jax.vjp(lambda x: tanh_reward(p.features, x), p.x)
    w_pol = adjoint_weights(p.mdp, sol.policy, g_pi, adjoint="dense")
    w_val = adjoint_weights(p.mdp, sol.policy, g_pi, grad_v=p.mdp.rho, adjoint="dense")
    closed = {
        "policy": g_x + reward_vjp(w_pol)[0],
        "value": g_x + reward_vjp(w_val)[0],
    }
    implicit = {obj: jax.grad(_objective(p, obj, _solution))(p.x) for obj in closed}
    return sol.policy, closed, implicit


@functools.partial(jax.jit, static_argnums=1)
def unrolled_grads(p: Problem, K: int):
    """``jax.grad`` through ``K`` scanned sweeps, for both upper objectives."""

    def solve(p, x):
        return soft_value_iteration_unrolled(p.mdp, tanh_reward(p.features, x), K)

    return {obj: jax.grad(_objective(p, obj, solve))(p.x) for obj in OBJECTIVES}


UNROLLED_MDPS = {
    "dirichlet": "dirichlet_mdp(concentration=1): dense rows, |lambda_2| small",
    "garnet_b2": "garnet_mdp(branching=2): sparse rows, slower mixing",
}


def unrolled_error(S, gammas, ks):
    """Relative error of the unrolled hyper-gradient vs ``K``, per MDP and gamma."""
    out = {}
    floor = 1e3 * float(jnp.finfo(jnp.float64).eps)
    for kind in UNROLLED_MDPS:
        out[kind] = {}
        for gamma in gammas:
            p = make_problem(S, gamma, jnp.float64, seed=1, kind=kind)
            t0 = time.perf_counter()
            policy, closed, implicit = reference_grads(p)
            errs = {"policy": [], "value": []}
            for K in ks:
                grads = unrolled_grads(p, int(K))
                for obj in errs:
                    errs[obj].append(rel_err(grads[obj], closed[obj]))
            lam2 = second_eigenvalue(p.mdp, policy)
            rec = {
                "S": S,
                "A": A,
                "mdp": UNROLLED_MDPS[kind],
                "K": [int(k) for k in ks],
                "log_gamma": float(np.log(gamma)),
                "abs_lambda2": lam2,
                "log_gamma_abs_lambda2": float(np.log(gamma * lam2)),
                "fit_floor": floor,
                "wall_s": time.perf_counter() - t0,
                "implicit_vs_closed_form_rel": {
                    obj: rel_err(implicit[obj], closed[obj]) for obj in closed
                },
            }
            for obj in ("policy", "value"):
                slope, slope_k, fitted = fit_slope(ks, errs[obj], floor)
                rec[obj] = {
                    "rel_err": errs[obj],
                    "slope": slope,
                    "slope_log_err_over_K": slope_k,
                    "fitted_K": fitted,
                }
            out[kind][str(gamma)] = rec
    return out


# ------------------------------------------------------------------ report, plot


def _jaxlib_version():
    try:
        import jaxlib

        return jaxlib.__version__
    except (ImportError, AttributeError):
        return None


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
    "forward_pi" + BLAS1: ("forward solve (PI), 1 BLAS thread", "C7--x"),
    "implicit_dense_vi" + BLAS1: ("implicit, dense (VI), 1 BLAS thread", "C9-x"),
    "implicit_dense_pi" + BLAS1: ("implicit, dense (PI), 1 BLAS thread", "C9--x"),
}


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(15, 5))
    sweep = result["sweep"]
    sizes = [r["S"] for r in sweep]
    for name, (label, style) in METHOD_STYLE.items():
        pts = [
            (r["S"], r["times"][name]["median_s"]) for r in sweep if name in r["times"]
        ]
        if pts:
            s, t = zip(*pts, strict=True)
            thin = name.endswith(BLAS1)
            ax0.loglog(
                s,
                np.asarray(t) * 1e3,
                style,
                label=label,
                ms=4,
                lw=0.8 if thin else 1.5,
                alpha=0.7 if thin else 1.0,
            )
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
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[16, 64, 200, 512, 1024]
    )
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument(
        "--large-repeats", type=int, default=5, help="repeats for S >= 1024"
    )
    parser.add_argument("--unrolled-size", type=int, default=64)
    parser.add_argument("--kmax", type=int, default=1000)
    parser.add_argument("--num-k", type=int, default=22, help="points in the K grid")
    parser.add_argument(
        "--skip-extra",
        action="store_true",
        help="skip the gamma=0.99 and float32 points",
    )
    parser.add_argument("--skip-unrolled-error", action="store_true")
    parser.add_argument(
        "--no-blas1",
        action="store_true",
        help="do not re-time the LAPACK-calling programs with 1 OpenBLAS thread",
    )
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument(
        "--out",
        default=os.path.join(HERE, "results", "hypergrad"),
        help="output prefix; writes <out>.json and <out>.png",
    )
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.repeats, args.large_repeats = [16], 2, 2
        args.unrolled_size, args.kmax, args.num_k = 16, 40, 5

    global BLAS
    load_start = os.getloadavg()
    jax.block_until_ready(jnp.linalg.solve(jnp.eye(2), jnp.ones(2)))  # loads LAPACK
    BLAS = BlasThreads()
    if args.no_blas1:
        BLAS = None
    started = datetime.datetime.now().isoformat(timespec="seconds")
    t_start = time.perf_counter()
    headline = HEADLINE_S if HEADLINE_S in args.sizes else args.sizes[-1]

    sweep = []
    for S in args.sizes:
        reps = args.large_repeats if S >= 1024 else args.repeats
        t0 = time.perf_counter()
        rec = bench_size(S, 0.9, jnp.float64, reps)
        rec["wall_s"] = time.perf_counter() - t0
        print(
            f"S={S:5d} gamma=0.9 f64 done in {rec['wall_s']:.1f}s: "
            + ", ".join(f"{k}={v:.2f}" for k, v in rec["ratios"].items()),
            flush=True,
        )
        sweep.append(rec)

    extra = []
    extra_cases = () if args.skip_extra else ((0.99, jnp.float64), (0.9, jnp.float32))
    for gamma, dtype in extra_cases:
        t0 = time.perf_counter()
        rec = bench_size(headline, gamma, dtype, args.repeats)
        rec["wall_s"] = time.perf_counter() - t0
        print(
            f"S={headline} gamma={gamma} {jnp.dtype(dtype).name} done in "
            f"{rec['wall_s']:.1f}s",
            flush=True,
        )
        extra.append(rec)

    ks = np.unique(np.round(np.geomspace(1, args.kmax, args.num_k)).astype(int))
    t0 = time.perf_counter()
    gammas = () if args.skip_unrolled_error else (0.9, 0.99)
    unrolled = unrolled_error(args.unrolled_size, gammas, ks)
    print(f"unrolled error vs K done in {time.perf_counter() - t0:.1f}s", flush=True)

    head = next(r for r in sweep if r["S"] == headline)
    ht = head["times"]
    headline_summary = {
        "S": headline,
        "A": A,
        "gamma": 0.9,
        "dtype": "float64",
        "tol": TOL,
        "median_ms": {k: 1e3 * v["median_s"] for k, v in ht.items()},
        "ratio_implicit_over_forward": {
            k: v
            for k, v in head["ratios"].items()
            if k.startswith("implicit") and not k.endswith(BLAS1)
        },
        "ratio_implicit_over_forward_blas1": {
            k.removesuffix(BLAS1): v
            for k, v in head["ratios"].items()
            if k.startswith("implicit") and k.endswith(BLAS1)
        },
        "target_ratio": TARGET_RATIO,
    }
    for key in ("", "_blas1"):
        ratios = headline_summary["ratio_implicit_over_forward" + key]
        if ratios:
            headline_summary["meets_target" + key] = {
                k: bool(v <= TARGET_RATIO) for k, v in ratios.items()
            }
    result = {
        "benchmark": "hypergrad",
        "config": {
            "A": A,
            "d": DIM,
            "tau": TAU,
            "lam": LAM,
            "gamma": 0.9,
            "tol": TOL,
            "reference_tol": REF_TOL,
            "K_unrolled": K_UNROLLED,
            "sizes": args.sizes,
            "repeats": args.repeats,
            "large_repeats": args.large_repeats,
            "mdp": "dirichlet_mdp(concentration=1)",
            "reward_model": "tanh_reward(features [S, A, d], x [d])",
            "upper": "1/2 ||pi - target||^2 + lam/2 ||x||^2 (+ rho^T v for the "
            "value objective of the unrolled-error study)",
            "quick": args.quick,
        },
        "notes": [
            "ratio = median time of jax.value_and_grad through soft_optimal_policy "
            "/ median time of one forward soft solve (soft_value_iteration) with the "
            "same method and tol, same problem, timings interleaved in one process.",
            "ratios_of_min_times: the same ratio from the fastest repeat (robust to "
            "load spikes from other processes).",
            "@blas1: the same compiled program timed with SciPy's OpenBLAS (the "
            "LAPACK behind jnp.linalg.solve on CPU) set to 1 thread; the plain names "
            "use its default (one thread per core).",
            "unrolled_error: rel_err of jax.grad through K scanned sweeps from v=0 vs "
            "the closed form at a policy-iteration solution; slope = least-squares "
            "slope of log(rel_err) vs K over K >= 4 and rel_err > fit_floor.",
        ],
        "headline": headline_summary,
        "sweep": sweep,
        "extra_points": extra,
        "unrolled_S": args.unrolled_size,
        "unrolled_error": unrolled,
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "backend": jax.default_backend(),
            "device": jax.devices()[0].device_kind,
            "jax": jax.__version__,
            "jaxlib": _jaxlib_version(),
            "python": platform.python_version(),
            "openblas_for_lapack": None
            if BLAS is None
            else {"path": BLAS.path, "default_threads": BLAS.default},
            "env": {
                k: os.environ.get(k)
                for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "XLA_FLAGS")
            },
        },
        "load_average_start": list(load_start),
        "load_average_end": list(os.getloadavg()),
        "started": started,
        "total_wall_s": time.perf_counter() - t_start,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as fh:
        json.dump(result, fh, indent=2)
    plot(result, args.out + ".png")
    print(json.dumps(headline_summary, indent=2))
    for kind, recs in unrolled.items():
        for g, rec in recs.items():
            print(
                f"{kind} gamma={g}: log gamma={rec['log_gamma']:.4f}, "
                f"log(gamma|l2|)={rec['log_gamma_abs_lambda2']:.4f}, "
                f"slope value={rec['value']['slope']}, "
                f"policy={rec['policy']['slope']}"
            )
    print(f"total {result['total_wall_s']:.1f}s, load start {load_start}")


if __name__ == "__main__":
    main()
