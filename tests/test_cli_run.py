"""``bilevel-rl run``/``config``/``list``/``bench``: output folder, bad input,
kill-and-resume (SIGKILL at random points) and divergence reports."""

import json
import os
import random
import signal
import subprocess
import sys
import time
import tomllib

import numpy as np
import pytest

from bilevel_rl.cli import main
from bilevel_rl.experiment import checkpoint, load_history
from bilevel_rl.experiment.config import load_config

TINY = [
    "--batch", "3", "--iterations", "20", "--log-every", "5",
    "--checkpoint-every", "10", "--suite-param", "dim=6", "--quiet",
]  # fmt: skip


def run_cli(*args):
    return main(["run", *args])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    assert run_cli(*TINY, "--out", str(out)) == 0
    return out


def test_run_writes_every_file_consistent_with_its_arrays(tiny_run):
    out = tiny_run
    names = sorted(os.listdir(out))
    assert names == [
        "checkpoints",
        "config.toml",
        "convergence.png",
        "history",
        "metrics.json",
    ]
    assert sorted(os.listdir(out / "history")) == ["runs.npz"] + [
        f"segment-{k:09d}-{k + 4:09d}.npz" for k in range(0, 20, 5)
    ]
    assert (out / "convergence.png").stat().st_size > 10_000
    cfg = load_config(str(out / "config.toml"))
    assert (cfg.batch, cfg.iterations, cfg.suite_params["dim"]) == (3, 20, 6)
    metrics = json.loads((out / "metrics.json").read_text())
    arrays = load_history(str(out))
    assert arrays["grad_norm"].shape == (3, 20) and arrays["x"].shape == (3, 6)
    assert list(arrays["iterations"]) == list(range(20))
    assert arrays["finite"].all() and (arrays["diverged_at"] == -1).all()
    for name in ("grad_norm", "f", "exact_grad_norm", "exact_f", "adjoint_residual"):
        stats = metrics["final"][name]
        assert all(np.isfinite(v) for v in stats.values())
        last = arrays[name][:, -1]
        assert stats["median"] == pytest.approx(np.median(last), rel=1e-12)
        assert stats["min"] == last.min() and stats["max"] == last.max()
        # The statistics at every iteration are those of the per-run arrays.
        np.testing.assert_allclose(
            arrays[f"{name}.p90"], np.percentile(arrays[name], 90, axis=0), rtol=1e-14
        )
        assert (arrays[f"{name}.nonfinite"] == 0).all()
    assert metrics["runs"] == 3 and metrics["diverged"] == []
    assert metrics["compile_s"] > 0 and metrics["run_s"] > 0
    gap = np.abs(arrays["exact_f"][:, -1] - arrays["optimum"]).max()
    assert metrics["optimum_gap_max"] == pytest.approx(gap, rel=1e-12)
    # A checkpoint holds the state, not the history.
    for path in checkpoint.list_checkpoints(str(out / "checkpoints")):
        assert os.path.getsize(path) < 8_000


def test_large_batches_record_thinned_histories(tmp_path):
    out = tmp_path / "o"
    args = [*TINY, "--record-every", "4", "--out", str(out)]
    assert run_cli(*args) == 0
    h = load_history(str(out))
    assert list(h["iterations"]) == [3, 7, 11, 15, 19]
    assert h["grad_norm"].shape == (3, 5) and h["grad_norm.p50"].shape == (20,)
    with np.load(out / "history" / "segment-000000015-000000019.npz") as seg:
        np.testing.assert_array_equal(seg["grad_norm"][:, -1], h["grad_norm"][:, -1])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["record_every"] == 4
    assert load_config(str(out / "config.toml")).recording == 4


def test_default_run_prints_no_warnings(tmp_path):
    """The main job's path (float64 config validated before JAX runs in 64 bits)
    with every warning an error."""
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-m", "bilevel_rl.cli", "run", "--batch",
         "2", "--iterations", "3", "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr and "Warning" not in proc.stdout


def test_config_example_round_trips_and_options_override_it(tmp_path, tiny_run):
    path = tmp_path / "run.toml"
    assert main(["config", "--example", "--out", str(path)]) == 0
    values = tomllib.loads(path.read_text())
    assert values["algorithm"] == "m_sobirl" and values["batch"] == 256
    # The file's own settings, with options on top; same result as the tiny run.
    out = tmp_path / "out"
    assert run_cli("--config", str(path), *TINY, "--out", str(out)) == 0
    a, b = load_history(str(out)), load_history(str(tiny_run))
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_progress_lines_when_not_a_terminal(tmp_path, capfd):
    args = [a for a in TINY if a != "--quiet"]
    assert run_cli(*args, "--out", str(tmp_path / "o")) == 0
    err = capfd.readouterr().err
    assert "compiled in" in err and "[20/20 it 100.0%]" in err and "median_grad=" in err


def test_seeds_repeat_instances_with_different_keys(tmp_path):
    out = tmp_path / "o"
    assert run_cli(*TINY, "--seeds", "2", "-p", "w0=normal", "--out", str(out)) == 0
    h = load_history(str(out))
    assert list(h["instance"]) == [0, 0, 1, 1, 2, 2]
    assert list(h["seed_index"]) == [0, 1, 0, 1, 0, 1]
    # Same instance, different w0 draws: different paths, same problem.
    assert not np.array_equal(h["adjoint_residual"][0], h["adjoint_residual"][1])
    assert h["optimum"][0] == h["optimum"][1]


def test_diverging_runs_exit_1_and_keep_finite_results(tmp_path, capsys):
    out = tmp_path / "o"
    code = run_cli(*TINY, "-p", "optimizer.learning_rate=1e30", "--out", str(out))
    assert code == 1
    text = capsys.readouterr().out
    assert "diverged: run 0" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["diverged"]) == 3
    h = load_history(str(out))
    assert (h["diverged_at"] >= 0).all()
    assert np.isfinite(h["x"]).all()  # the last finite iterates are kept


BAD = [
    (["run", "--algorithm", "nope"], "algorithm: unknown algorithm 'nope'"),
    (["run", "--suite", "nope"], "suite: unknown suite 'nope'"),
    (["run", "--batch", "-3"], "--batch: must be >= 1"),
    (["run", "--iterations", "0"], "--iterations: must be >= 1"),
    (["run", "--batch", "many"], "--batch: expected an integer"),
    (
        ["run", "-p", "optimizer.learning_rate=-1"],
        "algorithm_params.optimizer.learning_rate: must be finite and > 0",
    ),
    (["run", "-p", "gamma=0.5"], "algorithm_params.gamma: unknown parameter"),
    (["run", "-p", "zeta"], "--param: expected NAME=VALUE"),
    (["run", "-p", "inner_steps=2.5"], "algorithm_params.inner_steps: expected int"),
    (["run", "--suite-param", "gamma=1.0"], "suite_params.gamma: must lie in [0, 1)"),
    (["run", "--suite-param", "num_states=0"], "suite_params.num_states: must be >= 1"),
    (["run", "--algorithm", "sobirl"], "suite: sobirl needs a trajectory-level"),
    (["run", "--algorithm", "aihf"], "suite: aihf needs demonstrations and prefer"),
    (["run", "--algorithm", "hpgd", "--suite", "rlhf"], "use one of ['four_rooms']"),
    (["run", "--batch", "1000000000"], "batch: 1000000000 runs x 3000 iterations need"),
    (["run", "--resume", "/nonexistent/run"], "--resume: no run in"),
    (["run", "--resume", ".", "--batch", "2"], "--resume: the settings come from"),
    (["config", "--example", "--algorithm", "x"], "algorithm: unknown algorithm"),
    (["bench", "nope"], "names: unknown benchmark 'nope'"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
]


def exit_code(argv):
    """``main``'s status; argparse's own errors exit through SystemExit."""
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


@pytest.mark.parametrize("argv, message", BAD)
def test_bad_input_exits_2_with_one_line(argv, message, capsys):
    assert exit_code(argv) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "text, message",
    [
        ("batch = ", "is malformed TOML"),
        ("batch = 2\nlearning_rate = 0.1\n", "learning_rate: unknown config key"),
        ('batch = "two"\n', "batch: expected int, got str"),
        ("[algorithm_params]\nzeta = true\n", "algorithm_params.zeta: expected float"),
        ("algorithm_params = 3\n", "algorithm_params: expected a table"),
        ("seed = -1\n", "seed: must be finite and >= 0"),
    ],
)
def test_bad_config_files_exit_2(tmp_path, capsys, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert run_cli("--config", str(path), "--out", str(tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_unwritable_or_occupied_output_exits_2(tmp_path, capsys, tiny_run):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert run_cli(*TINY, "--out", str(blocker / "sub")) == 2
    assert "--out: cannot create" in capsys.readouterr().err
    assert run_cli(*TINY, "--out", str(tiny_run)) == 2
    assert "holds a run already; continue it with --resume" in capsys.readouterr().err
    assert main(["config", "--example", "--out", str(blocker)]) == 2
    assert "exists; not overwriting" in capsys.readouterr().err


@pytest.mark.parametrize(
    "algorithm, suite",
    [("aihf", "alignment"), ("hpgd", "four_rooms"), ("parl", "rlhf")],
)
def test_every_problem_kind_runs_from_the_command_line(tmp_path, algorithm, suite):
    out = tmp_path / "o"
    args = ["--algorithm", algorithm, "--suite", suite, "--batch", "2"]
    args += ["--iterations", "3", "--log-every", "3", "--quiet", "--out", str(out)]
    assert run_cli(*args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["diverged"] == []
    h = load_history(str(out))
    assert np.isfinite(h["exact_f"]).all() and h["exact_f"].shape == (2, 3)


def test_list_and_version(capsys):
    assert main(["list"]) == 0
    text = capsys.readouterr().out
    names = ("m_sobirl", "stoc_sobirl", "exact", "parl", "aihf", "drlhf", "hpgd")
    for name in names + ("shaping", "four_rooms", "rlhf", "alignment"):
        assert f"  {name} " in text
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == "0.1.0"


def test_bench_lists_the_scripts(capsys):
    assert main(["bench", "--list"]) == 0
    assert "soft_vi_throughput" in capsys.readouterr().out.split()


# ------------------------------------------------------------- kill and resume

KILL_ARGS = [
    "--batch", "2", "--iterations", "40", "--log-every", "1",
    "--checkpoint-every", "1", "--suite-param", "dim=6", "--quiet",
]  # fmt: skip


def _cli(*args, env):
    return subprocess.Popen(
        [sys.executable, "-m", "bilevel_rl.cli", "run", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def test_sigkill_at_random_points_then_resume_equals_uninterrupted(tmp_path):
    reference = tmp_path / "reference"
    assert run_cli(*KILL_ARGS, "--out", str(reference)) == 0
    env = dict(
        os.environ,
        JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        OPENBLAS_NUM_THREADS="1",
    )  # XLA_FLAGS kept: the same compile flags as the reference run (bitwise)
    out = tmp_path / "killed"
    rng = random.Random(os.getpid())
    kills = 0
    args = [*KILL_ARGS, "--out", str(out)]
    for _ in range(3):
        proc = _cli(*args, env=env)
        # Let it get past start-up (config written, first checkpoints), then kill
        # at a random moment: with a checkpoint after every iteration most of the
        # time is spent writing checkpoints.
        deadline = time.monotonic() + 120
        while not list(out.glob("checkpoints/ckpt-*.npz")) and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.4))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        args = ["--resume", str(out), "--quiet"]
    assert kills >= 1
    final = _cli(*args, env=env)
    _, err = final.communicate(timeout=300)
    assert final.returncode == 0, err.decode()
    a, b = load_history(str(out)), load_history(str(reference))
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from"] > 0
