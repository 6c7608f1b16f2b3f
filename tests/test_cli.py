"""The ``bilevel-rl`` command: solve at a tiny size, and bad input exits 2."""

import json
import subprocess
import sys

import numpy as np
import pytest

from bilevel_rl.cli import main


def solve(tmp_path, *extra):
    out = tmp_path / "res.json"
    code = main(
        [
            "solve",
            "--batch",
            "6",
            "--states",
            "5",
            "--actions",
            "3",
            "--blocks",
            "2",
            "--quiet",
            "--out",
            str(out),
            *extra,
        ]
    )
    return code, out


@pytest.mark.parametrize(
    "extra",
    [
        (),
        ("--suite", "garnet", "--branching", "2", "--method", "policy_iteration"),
        ("--suite", "chain", "--dtype", "float64", "--tol", "1e-10"),
        ("--suite", "sobirl", "--gamma", "0.5"),
    ],
)
def test_solve_writes_a_consistent_result_file(tmp_path, capsys, extra):
    code, out = solve(tmp_path, *extra)
    assert code == 0
    report = json.loads(out.read_text())
    assert report["batch"] == 6 and report["all_finite"]
    assert report["converged_fraction"] == 1.0
    assert 1 <= report["iterations_min"] <= report["iterations_max"] < 10_000
    assert np.isfinite(report["residual_max"])
    assert report["residual_median"] <= report["residual_max"]
    if report["dtype"] == "float64":
        assert report["residual_max"] <= report["tol"]
    text = capsys.readouterr().out
    assert "MDPs/s (steady)" in text and str(out) in text


def test_list_suites(capsys):
    assert main(["solve", "--list-suites"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert {"dirichlet", "garnet", "chain", "sobirl", "four_rooms"} <= set(names)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["solve", "--suite", "nope"], "--suite: unknown suite 'nope'"),
        (
            ["solve", "--suite", "garnet", "--states", "3", "--branching", "5"],
            "--branching: must be <= --states",
        ),
        (["solve", "--out", "/proc/forbidden/x.json"], "--out: cannot"),
    ],
)
def test_usage_errors_exit_2_with_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["solve", "--batch", "-3"], "--batch: must be >= 1"),
        (["solve", "--gamma", "1.0"], "--gamma: must lie in [0, 1)"),
        (["solve", "--tau", "0"], "--tau: must be a finite number > 0"),
        (["solve", "--dtype", "int8"], "--dtype: invalid choice"),
        (["solve", "--states", "many"], "--states: expected an integer"),
    ],
)
def test_argument_errors_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_console_script_version():
    out = subprocess.run(
        [sys.executable, "-m", "bilevel_rl.cli", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == __import__("bilevel_rl").__version__
