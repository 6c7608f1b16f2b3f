"""Smoke test: every benchmark script runs end to end at its --quick size.

Benchmarks are not tests (their numbers live in benchmarks/results/); this only keeps
the scripts from rotting as the package changes.
"""

import json
import os
import pathlib
import subprocess
import sys

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
