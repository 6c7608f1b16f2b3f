"""The error of the unrolled hyper-gradient vs the number of unrolled sweeps ``K``."""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from _hypergrad.cost import (
    REF_TOL,
    A,
    Problem,
    make_problem,
    rel_err,
    upper_policy,
    upper_value,
)
from bilevel_rl.implicit import adjoint_weights, soft_optimal_solution
from bilevel_rl.rewards import tanh_reward
from bilevel_rl.soft import soft_value_iteration_unrolled

OBJECTIVES = ("policy", "value")
UNROLLED_MDPS = {
    "dirichlet": "dirichlet_mdp(concentration=1): dense rows, |lambda_2| small",
    "garnet_b2": "garnet_mdp(branching=2): sparse rows, slower mixing",
}


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
            errs = {obj: [] for obj in OBJECTIVES}
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
            for obj in OBJECTIVES:
                slope, slope_k, fitted = fit_slope(ks, errs[obj], floor)
                rec[obj] = {
                    "rel_err": errs[obj],
                    "slope": slope,
                    "slope_log_err_over_K": slope_k,
                    "fitted_K": fitted,
                }
            out[kind][str(gamma)] = rec
    return out
