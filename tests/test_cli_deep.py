"""``bilevel-rl deep``: outputs, bad input named before compiling, and a resume
from an earlier checkpoint that ends bitwise equal to the uninterrupted run."""

import json
import os
import shutil

import numpy as np
import pytest

pytest.importorskip("gymnax")

from bilevel_rl.cli import main  # noqa: E402

TINY = [
    "--env", "CartPole-v1", "--seeds", "2", "--steps", "256", "--queries", "16",
    "--checkpoint-every", "2", "--estimator", "branch", "--quiet",
    "--ppo", "num_envs=4", "--ppo", "num_steps=16", "--ppo", "num_minibatches=2",
    "--ppo", "update_epochs=1", "-p", "fragment_length=5", "-p", "buffer_size=16",
    "-p", "reward_batch=8", "-p", "branch_length=3", "-p", "momentum=storm",
    "-p", "momentum_weight=0.5",
]  # fmt: skip
"""4 iterations of 64 steps, 4 queries each; checkpoints after 2 and 4 (one
compiled block of 2 iterations); deep Stoc-SoBiRL (STORM on the score term), so
the resume also restores the momentum."""


def test_outputs_and_a_resume_from_an_earlier_checkpoint(tmp_path):
    """One run (its outputs checked), then a copy cut back to its first checkpoint
    and resumed: bitwise equal to the uninterrupted run. One test, so the compiled
    blocks are built in one worker."""
    tiny = tmp_path / "out"
    assert main(["deep", *TINY, "--out", str(tiny)]) == 0
    assert sorted(os.listdir(tiny)) == [
        "checkpoints", "config.json", "metrics.npz", "returns.png", "summary.json",
    ]  # fmt: skip
    cfg = json.loads((tiny / "config.json").read_text())
    assert cfg["env"] == "CartPole-v1" and cfg["rlhf"]["estimator"] == "branch"
    assert cfg["rlhf"]["momentum"] == "storm"
    assert cfg["ppo"]["num_envs"] == 4
    with np.load(tiny / "metrics.npz") as m:
        metrics = dict(m)
    assert metrics["mean_return"].shape == (2, 4)
    np.testing.assert_array_equal(metrics["env_steps"][0], 64 * np.arange(1, 5))
    np.testing.assert_array_equal(metrics["queries"][0], 4 * np.arange(1, 5))
    assert metrics["finite"].all()
    summary = json.loads((tiny / "summary.json").read_text())
    assert summary["queries"] == 16 and summary["env_steps"] == 256
    assert summary["method"] == "sobirl" and summary["nonfinite_seeds"] == []
    assert summary["final_return_mean"] == pytest.approx(
        metrics["mean_return"][:, -1].mean()
    )
    assert sorted(os.listdir(tiny / "checkpoints")) == [
        "ckpt-000000002.npz", "ckpt-000000004.npz",
    ]  # fmt: skip

    cut = tmp_path / "cut"
    shutil.copytree(tiny, cut)
    for name in ("metrics.npz", "summary.json", "returns.png"):
        os.remove(cut / name)
    os.remove(cut / "checkpoints" / "ckpt-000000004.npz")  # killed after 2 of 4
    assert main(["deep", "--resume", str(cut), "--quiet"]) == 0
    for name in ("metrics.npz", "checkpoints/ckpt-000000004.npz"):
        with np.load(tiny / name) as a, np.load(cut / name) as b:
            assert sorted(a.files) == sorted(b.files)
            for k in a.files:
                np.testing.assert_array_equal(a[k], b[k], err_msg=f"{name}:{k}")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--env", "Breakout"], "--env: unknown environment 'Breakout'"),
        (["--env", "Pendulum-v1"], "Box action space"),
        (["-p", "fragment_length=200"], "--param fragment_length: 200 is longer"),
        (["-p", "queries_per_iteration=0"], "queries_per_iteration: must be"),
        (["-p", "tempo=1"], "--param: unknown option(s) ['tempo']"),
        (["--ppo", "num_envs=0"], "--ppo num_envs: must be"),
        (["--env-param", "speed=2"], "--env-param: CartPole-v1 has no parameter"),
        (["--steps", "10"], "--steps: 10 is less than one iteration"),
        (["--method", "rlhf"], "method: must be one of"),
        (["--method", "drlhf", "-p", "momentum=storm"], "momentum: only method"),
    ],
)
def test_bad_input_exits_2_naming_the_setting(args, message, tmp_path, capsys):
    out = tmp_path / "bad"
    base = ["--env", "CartPole-v1", "--quiet", "--out", str(out)]
    assert main(["deep", *base, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (out / "config.json").exists()  # nothing written, nothing compiled


def test_zero_queries_and_resume_conflicts_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["deep", "--queries", "0"])
    assert exit_.value.code == 2
    assert "--queries" in capsys.readouterr().err
    assert main(["deep", "--resume", str(tmp_path), "--seeds", "3"]) == 2
    assert "drop --seeds" in capsys.readouterr().err
