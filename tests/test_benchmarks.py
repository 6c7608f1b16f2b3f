"""Smoke test: every benchmark script runs end to end at its --quick size.

Benchmarks are not tests (their numbers live in benchmarks/results/); this only keeps
the scripts from rotting as the package changes.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# benchmarks/harness.py is the shared harness; the scripts' parts live in
# benchmarks/_NAME/ packages, which this glob does not reach.
SCRIPTS = sorted(
    p.stem for p in (ROOT / "benchmarks").glob("*.py") if p.stem != "harness"
)


@pytest.mark.slow  # about 4 minutes on 2 cores: run with `pytest -m slow`
@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_quick_run_writes_its_result_files(name, tmp_path):
    out = tmp_path / name
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    env.pop("XLA_FLAGS", None)
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / f"{name}.py"),
            "--quick",
            "--out",
            str(out),
        ],
        check=True,
        env=env,
        timeout=600,
        capture_output=True,
    )
    result = json.loads(out.with_suffix(".json").read_text())
    assert result  # a non-empty record
    assert out.with_suffix(".png").stat().st_size > 1000
    HEADLINES.get(name, lambda result: None)(result)


def _time_to_solution(result):
    """Every solve stops at tol or its round-off floor, policy iteration in a few
    rounds, and within residual / (1 - gamma) of V* (plus float32 rounding)."""
    for cell in result["grid"]:
        for method in ("value_iteration", "policy_iteration", "auto"):
            rec = cell[method]
            assert rec["status"]["max_iters"] == rec["status"]["non_finite"] == 0
            bound = rec["residual_max"] / (1 - cell["gamma"])
            assert rec["error_max"] <= bound + 1e-3, (cell["S"], method)
        assert cell["policy_iteration"]["iterations_max"] <= 10


def _convergence_rates(result):
    """Methods that claim descent lower the exact f on >= 90% of instances; only
    the theorem configuration's curves carry a fitted slope (the rest are floors)."""
    for name, rec in result["methods"].items():
        assert rec["all_finite"], name
        assert ("slope_avg_sq" in rec) == (not rec["rate_is_floor"]), name
    for name in ("theorem/exact", "theorem/sobirl_deterministic"):
        assert result["methods"][name]["frac_f_decreased"] >= 0.9, name


def _ppo_minatar(result):
    """Every follower variant runs the whole budget; the one-seed probe times the
    default."""
    assert set(result["variants"]) == {"soft", "plain", "plain_wide"}
    for name, rec in result["variants"].items():
        assert rec["params"]["soft"] == (name == "soft"), name
        assert all(np.isfinite(rec["final_return"]["per_seed"])), name
        assert rec["run"]["env_steps_per_seed"] == 40 * 8192, name
    assert result["one_seed"]["seeds"] == 1


def _deep_rlhf(result):
    """Every method stays finite and within its query budget; the oracle asks none;
    the speed ratios are taken against runs timed in the same process."""
    (game,) = result["runs"]
    budget = result["size"]["queries"]
    for name, rec in result["runs"][game].items():
        assert rec["all_finite"], name
        assert (
            rec["queries_per_seed"] == 0
            if name == "oracle"
            else (0 < rec["queries_per_seed"] <= budget + rec["iterations"])
        ), name
    assert result["ppo_loop"][game]["env_steps_per_s"] > 0
    assert set(result["headlines"][game]) == set(result["runs"][game]) - {"oracle"}


HEADLINES = {
    "convergence_rates": _convergence_rates,
    "deep_rlhf": _deep_rlhf,
    "ppo_minatar": _ppo_minatar,
    "time_to_solution": _time_to_solution,
}
"""Per script, assertions on the direction of its headline numbers (not timings:
a --quick run on a shared machine is too short and too noisy for those)."""


@pytest.mark.slow  # about 10 s on 2 cores
def test_scaling_main_job_merges_its_record(tmp_path):
    """``scaling.py --main-job`` measures ``bilevel-rl run`` in a child process and
    merges its record into the result file, keeping the other keys."""
    out = tmp_path / "scaling"
    out.with_suffix(".json").write_text('{"kept": 1}')
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    env.pop("XLA_FLAGS", None)
    script = str(ROOT / "benchmarks" / "scaling.py")
    args = ["--main-job", "--batch", "4", "--iterations", "3", "--out", str(out)]
    subprocess.run(
        [sys.executable, script, *args],
        check=True, env=env, timeout=600, capture_output=True, cwd=ROOT,
    )  # fmt: skip
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["kept"] == 1
    (run,) = result["main_job"]["runs"]
    assert run["exit_status"] == 0 and run["peak_rss_bytes"] > 0
    assert run["io"]["wchar"] >= run["history_bytes"] > 0
    assert run["checkpoint_over_state"] <= 2
