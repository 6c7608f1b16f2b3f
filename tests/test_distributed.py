"""Sharded (4 forced host devices) == single device == chunked == two processes
(jax.distributed on localhost, gloo), in float64; the CLI's --distributed flag."""

import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

SCRIPT = textwrap.dedent(
    """
    import os, sys
    count = "--xla_force_host_platform_device_count=" + sys.argv[1]
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " " + count
    import jax
    jax.config.update("jax_enable_x64", True)
    import numpy as np
    from bilevel_rl import devices
    multi = len(sys.argv) > 3  # port, process id: one of two processes
    if multi:
        devices.initialize(f"127.0.0.1:{sys.argv[3]}", 2, int(sys.argv[4]))
    from bilevel_rl import solve_batch, suites
    from bilevel_rl.algorithms import m_sobirl
    from bilevel_rl.experiment import run

    keys = jax.random.split(jax.random.key(0), 7)  # 7: uneven over 4 devices
    mdp = jax.vmap(lambda k: suites.dirichlet_mdp(k, 6, 3, gamma=0.9))(keys)
    reward = jax.random.uniform(jax.random.key(1), (7, 6, 3))
    out = {}
    for chunk in (3,) if multi else (1, 3, 7):
        sol = solve_batch(mdp, reward, tol=1e-12, chunk_size=chunk)
        out[f"v{chunk}"], out[f"it{chunk}"] = np.asarray(sol.v), sol.iterations
    problems = jax.vmap(lambda k: suites.sobirl_synthetic(k, dim=5))(keys)
    solver = m_sobirl.make(inner_steps=3)
    for chunk in (2,) if multi else (1, 2):
        state, hist = run(solver, problems, keys, 25, chunk_size=chunk)
        out[f"x{chunk}"], out[f"g{chunk}"] = state.x, hist["grad_norm"]
    assert len(jax.local_devices()) == int(sys.argv[1])
    if jax.process_index() == 0:
        np.savez(sys.argv[2], **{k: np.asarray(v) for k, v in out.items()})
    """
)


def clean_env():
    """The test environment (its compile flags) with one BLAS thread."""
    return dict(os.environ, OPENBLAS_NUM_THREADS="1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_with_devices(n, path):
    cmd = [sys.executable, "-c", SCRIPT, str(n), str(path)]
    subprocess.run(cmd, check=True, env=clean_env(), timeout=600)
    return dict(np.load(path))


def two_processes(make_cmd, env=None):
    """Runs ``make_cmd(port, process_id)`` as processes 0 and 1; both must succeed."""
    port = free_port()
    procs = [
        subprocess.Popen(make_cmd(port, i), env=env or clean_env()) for i in (0, 1)
    ]
    try:
        codes = [p.wait(timeout=600) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert codes == [0, 0], codes


def test_sharded_equals_single_device_equals_chunked(tmp_path):
    """7 instances over 2 processes x 2 devices (uneven, padded) == one device ==
    chunked."""
    one = run_with_devices(1, tmp_path / "one.npz")
    path = tmp_path / "two_processes.npz"
    script = [sys.executable, "-c", SCRIPT, "2", str(path)]
    two_processes(lambda port, i: [*script, str(port), str(i)])
    two = dict(np.load(path))  # 2 processes x 2 devices
    assert sorted(two) == ["g2", "it3", "v3", "x2"]
    for key in two:
        np.testing.assert_allclose(two[key], one[key], rtol=1e-12, atol=1e-12)
    for name in ("v", "it"):
        for chunk in (3, 7):
            np.testing.assert_allclose(
                one[f"{name}{chunk}"], one[f"{name}1"], rtol=1e-12, atol=1e-12
            )
    np.testing.assert_allclose(one["x2"], one["x1"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(one["g2"], one["g1"], rtol=1e-12, atol=1e-12)


@pytest.mark.slow  # three more processes than the test above, about 2 minutes
def test_four_host_devices_in_one_process_equal_one_device(tmp_path):
    one = run_with_devices(1, tmp_path / "one.npz")
    four = run_with_devices(4, tmp_path / "four.npz")
    for key in one:
        np.testing.assert_allclose(four[key], one[key], rtol=1e-12, atol=1e-12)


@pytest.mark.slow  # three CLI processes, about 2 minutes on 2 cores
def test_cli_distributed_run_equals_single_process(tmp_path):
    args = ["run", "--batch", "5", "--iterations", "6", "--log-every", "3",
            "--suite-param", "dim=4", "--quiet"]  # fmt: skip
    cli = [sys.executable, "-m", "bilevel_rl.cli"]
    subprocess.run(
        [*cli, *args, "--out", str(tmp_path / "one")],
        check=True, env=clean_env(), timeout=600,
    )  # fmt: skip
    env = clean_env()
    count = "--xla_force_host_platform_device_count=2"
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " " + count
    two_processes(
        lambda port, i: [
            *cli, *args, "--out", str(tmp_path / "two"), "--distributed",
            "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
            "--process-id", str(i),
        ],
        env,
    )  # fmt: skip
    from bilevel_rl.experiment import load_history

    a, b = load_history(str(tmp_path / "one")), load_history(str(tmp_path / "two"))
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-12, atol=1e-12)
    assert (tmp_path / "two" / "checkpoints").is_dir()


def test_cli_distributed_flag_errors(capsys):
    from bilevel_rl.cli import main

    assert main(["run", "--process-id", "1"]) == 2
    assert "--process-id: only with --distributed" in capsys.readouterr().err
    code = main(["run", "--distributed", "--coordinator", "127.0.0.1:1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "give all three or none" in err and err.count("\n") == 1
