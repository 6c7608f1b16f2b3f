"""The benchmark problem and the cost of one hyper-gradient at one ``(S, gamma)``."""

from __future__ import annotations

import functools
from typing import NamedTuple

import harness
import jax
import jax.numpy as jnp
import numpy as np

from bilevel_rl.hypergrad import value_and_hypergradient
from bilevel_rl.implicit import adjoint_weights
from bilevel_rl.rewards import tanh_reward
from bilevel_rl.soft import soft_value_iteration, soft_value_iteration_unrolled
from bilevel_rl.suites import dirichlet_mdp, garnet_mdp, random_reward_features

A = 8
DIM = 16
TAU = 0.5
LAM = 1e-2
TOL = 1e-8
K_UNROLLED = 200
REF_TOL = 1e-12


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


def rel_err(g, ref):
    g, ref = np.asarray(g, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(g - ref) / np.linalg.norm(ref))


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


def _to_f64(a):
    return a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a


def bench_size(S, gamma, dtype, repeats, with_pi=True, with_unrolled=True):
    """All timings for one ``(S, gamma, dtype)``; returns a JSON-ready dict.

    Every program is compiled ahead of time (``compile_s``), then timed
    round-robin (:func:`harness.interleaved`).
    """
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
    args = {name: (p,) for name in programs}

    # the adjoint solve alone, at the solution of this problem
    sol = jax.jit(program_forward_solve("value_iteration"))(p)
    grad_policy = jax.grad(upper_policy, argnums=2)(p.target, p.x, sol[0])
    for adj in ("dense", "iterative"):
        programs[f"adjoint_only_{adj}"] = program_adjoint(adj)
        args[f"adjoint_only_{adj}"] = (p, sol[0], grad_policy)

    compiled, compile_s = {}, {}
    for name, fn in programs.items():
        compiled[name], compile_s[name] = harness.aot_compile(fn, *args[name])
    recs = harness.interleaved(
        {name: functools.partial(compiled[name], *args[name]) for name in programs},
        repeats,
    )
    times = {}
    for name, rec in recs.items():
        rec["compile_s"] = compile_s[name]
        times[name] = harness.public(rec, samples=True)

    # accuracy: every gradient against a tight reference
    # (in float64 whatever the benchmark dtype)
    ref_fn = program_hypergrad("closed_form", "policy_iteration", "dense", tol=REF_TOL)
    ref_val, ref_grad = jax.jit(ref_fn)(jax.tree.map(_to_f64, p))
    accuracy = {}
    for name in programs:
        if name.startswith(("implicit", "closed_form", "unrolled_K")):
            val, grad = recs[name]["_out"]
            accuracy[name] = {
                "grad_rel_err": rel_err(grad, ref_grad),
                "value_abs_err": float(abs(val - ref_val)),
            }
    fwd = {"vi_iterations": int(sol[1]), "vi_residual": float(sol[2])}
    if with_pi:
        _, its, res = recs["forward_pi"]["_out"]
        fwd.update(pi_iterations=int(its), pi_residual=float(res))

    ratios, ratios_of_min = {}, {}
    for name in times:
        if name.startswith(("implicit", "closed_form")):
            fwd_name = "forward_" + name.rsplit("_", 1)[1]
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
