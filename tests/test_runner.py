"""``experiment.run``: checkpoint/resume, determinism, divergence masking."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilevel_rl.algorithms import m_sobirl, stoc_sobirl
from bilevel_rl.experiment import (
    checkpoint,
    diverged_at,
    history,
    load_history,
    run,
    runner,
)
from bilevel_rl.suites import shaping_problem, sobirl_synthetic

SOLVER = m_sobirl.make(
    optimizer={"learning_rate": 8e-3}, inner_steps=3, track_exact=False
)
KEYS = jax.random.split(jax.random.key(7), 4)
PROBLEMS = jax.vmap(lambda k: sobirl_synthetic(k, dim=6))(KEYS)
ITERS = 12


def leaves_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def assert_close(a, b):
    """float64 agreement to 1e-12 relative; residuals (differences of O(1)
    values) to round-off absolute."""
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


@pytest.fixture(scope="module")
def reference():
    """Uninterrupted checkpointed run (segments of 4) and a plain one-segment run."""
    return run(SOLVER, PROBLEMS, KEYS, ITERS, segment_length=4)


def test_segmented_run_equals_one_segment(reference):
    state, hist = run(SOLVER, PROBLEMS, KEYS, ITERS)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(reference[0])):
        if jnp.issubdtype(a.dtype, jnp.inexact):
            assert_close(a, b)
    for name in hist:
        assert_close(hist[name], reference[1][name])


def test_resume_after_interruption_is_bitwise_identical(tmp_path, reference):
    folder = str(tmp_path / "ckpt")
    # "Interrupted" after 8 of 12 iterations: the run stops, a new call resumes.
    run(SOLVER, PROBLEMS, KEYS, 8, checkpoint_dir=folder, checkpoint_every=4)
    assert [os.path.basename(p) for p in checkpoint.list_checkpoints(folder)] == [
        "ckpt-000000004.npz",
        "ckpt-000000008.npz",
    ]
    seen = []
    state, hist = run(
        SOLVER,
        PROBLEMS,
        KEYS,
        ITERS,
        checkpoint_dir=folder,
        checkpoint_every=4,
        callback=seen.append,
    )
    assert [p.iteration for p in seen] == [12] and seen[0].resumed_from == 8
    leaves_equal(state, reference[0])
    leaves_equal(hist, reference[1])
    # Calling again with the finished checkpoint returns the same result at once.
    state2, hist2 = run(SOLVER, PROBLEMS, KEYS, ITERS, checkpoint_dir=folder)
    leaves_equal((state2, hist2), (state, hist))


def test_truncated_checkpoint_falls_back_to_the_previous_one(tmp_path, reference):
    folder = str(tmp_path / "ckpt")
    run(SOLVER, PROBLEMS, KEYS, 8, checkpoint_dir=folder, checkpoint_every=4)
    newest = checkpoint.list_checkpoints(folder)[-1]
    size = os.path.getsize(newest)
    with open(newest, "r+b") as fh:
        fh.truncate(size // 2)
    # A write killed before its rename leaves a .tmp file: ignored.
    with open(os.path.join(folder, ".ckpt-000000012.npz.tmp"), "wb") as fh:
        fh.write(b"partial")
    seen = []
    state, hist = run(
        SOLVER,
        PROBLEMS,
        KEYS,
        ITERS,
        checkpoint_dir=folder,
        checkpoint_every=4,
        callback=seen.append,
    )
    assert seen[0].resumed_from == 4
    leaves_equal((state, hist), reference)


def test_every_checkpoint_damaged_is_an_error(tmp_path):
    folder = str(tmp_path / "ckpt")
    run(SOLVER, PROBLEMS, KEYS, 4, checkpoint_dir=folder, checkpoint_every=4)
    for path in checkpoint.list_checkpoints(folder):
        with open(path, "wb") as fh:
            fh.write(b"not a zip")
    with pytest.raises(checkpoint.CheckpointError, match="no intact checkpoint"):
        run(SOLVER, PROBLEMS, KEYS, 8, checkpoint_dir=folder, checkpoint_every=4)


def test_checkpoint_of_another_problem_or_key_is_refused(tmp_path):
    folder = str(tmp_path / "ckpt")
    run(SOLVER, PROBLEMS, KEYS, 4, checkpoint_dir=folder, checkpoint_every=4)
    other = jax.random.split(jax.random.key(8), 4)
    with pytest.raises(checkpoint.CheckpointError, match="different problem or key"):
        run(SOLVER, PROBLEMS, other, 8, checkpoint_dir=folder, checkpoint_every=4)
    small = jax.tree.map(lambda a: a[:2], PROBLEMS)
    with pytest.raises(checkpoint.CheckpointError, match="different run"):
        run(SOLVER, small, KEYS[:2], 8, checkpoint_dir=folder, checkpoint_every=4)


def test_same_seed_gives_identical_results(reference):
    again = run(SOLVER, PROBLEMS, KEYS, ITERS, segment_length=4)
    leaves_equal(again, reference)


@pytest.mark.parametrize("chunk_size", [1, 3])
def test_instance_alone_equals_instance_in_a_batch(chunk_size, reference):
    _, hist = run(
        SOLVER, PROBLEMS, KEYS, ITERS, segment_length=4, chunk_size=chunk_size
    )
    for name in hist:
        assert_close(hist[name], reference[1][name])
    for i in (0, 3):
        single = jax.tree.map(lambda a: a[i], PROBLEMS)
        state, h = run(SOLVER, single, KEYS[i], ITERS, segment_length=4)
        for name in h:
            assert_close(h[name], reference[1][name][i])
        assert_close(state.x, reference[0].x[i])


def test_stochastic_solver_is_deterministic_per_instance():
    keys = jax.random.split(jax.random.key(1), 3)
    problems = jax.vmap(
        lambda k: shaping_problem(k, num_states=3, num_actions=2, dim=3, horizon=3)
    )(keys)
    solver = stoc_sobirl.make(num_samples=2, num_rollouts=1, rollout_length=3)
    _, batch = run(solver, problems, keys, 5)
    _, again = run(solver, problems, keys, 5)
    leaves_equal(batch, again)
    alone = run(solver, jax.tree.map(lambda a: a[2], problems), keys[2], 5)[1]
    for name in alone:
        assert_close(alone[name], batch[name][2])


def test_diverging_instance_is_masked_and_the_others_keep_going():
    # Instance 1's quadratic form is scaled by 1e8: its step overflows.
    data = PROBLEMS.data.replace(M=PROBLEMS.data.M.at[1].multiply(1e150))
    problems = PROBLEMS.replace(data=data)
    state, hist = run(SOLVER, problems, KEYS, ITERS)
    where = diverged_at(hist)
    assert where[1] >= 0 and list(where[[0, 2, 3]]) == [-1, -1, -1]
    finite = np.asarray(hist["finite"][1])
    assert finite[: where[1]].all() and not finite[where[1] :].any()
    # The diverged instance holds its last finite state ...
    assert all(np.isfinite(np.asarray(x[1])).all() for x in (state.x, state.follower.v))
    # ... and the others are exactly what they are without it.
    _, clean = run(SOLVER, PROBLEMS, KEYS, ITERS)
    for name in hist:
        np.testing.assert_array_equal(hist[name][[0, 2, 3]], clean[name][[0, 2, 3]])


def test_checkpoints_hold_the_state_not_the_history(tmp_path):
    """A checkpoint stays <= 2x the solver state however long the run (the history
    is in append-only segment files beside it)."""
    keys = jax.random.split(jax.random.key(3), 64)
    problems = jax.vmap(lambda k: sobirl_synthetic(k, dim=20))(keys)
    folder = str(tmp_path / "ckpt")
    state, _ = run(
        SOLVER, problems, keys, 40, checkpoint_dir=folder, checkpoint_every=4
    )
    state_bytes = sum(
        (jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
         else x).nbytes
        for x in jax.tree.leaves(state)
    )  # fmt: skip
    sizes = [os.path.getsize(p) for p in checkpoint.list_checkpoints(folder)]
    assert len(sizes) == 2 and max(sizes) <= 2 * state_bytes, (sizes, state_bytes)
    assert [s[:2] for s in history.segments(os.path.join(folder, "history"))] == [
        (k, k + 3) for k in range(0, 40, 4)
    ]


def test_history_folder_thinned_with_exact_statistics_and_divergence(tmp_path):
    # Instance 1 diverges (see below); per-run values every 5th iteration only.
    data = PROBLEMS.data.replace(M=PROBLEMS.data.M.at[1].multiply(1e150))
    problems = PROBLEMS.replace(data=data)
    _, full = run(SOLVER, problems, KEYS, ITERS)
    folder = str(tmp_path / "hist")
    seen = []
    _, small = run(
        SOLVER, problems, KEYS, ITERS, segment_length=4, record_every=5,
        history_dir=folder, callback=seen.append,
    )  # fmt: skip
    assert sorted(os.listdir(folder)) == [
        "segment-000000000-000000003.npz",
        "segment-000000004-000000007.npz",
        "segment-000000008-000000011.npz",
    ]
    assert seen[0].history["grad_norm"].shape == (4, 0)  # iterations 0-3: none
    loaded = load_history(folder)
    assert list(loaded["iterations"]) == [4, 9, 11]  # every 5th and the last
    for name in full:
        np.testing.assert_array_equal(loaded[name], full[name][:, [4, 9, 11]])
    # diverged_at is exact although the iteration it names is not recorded.
    where = diverged_at(full)
    assert where[1] >= 0 and where[1] not in (4, 9, 11)
    np.testing.assert_array_equal(loaded["diverged_at"], where)
    np.testing.assert_array_equal(diverged_at(small), where)
    # Statistics at every iteration over the runs still finite there.
    finite = full["finite"]
    for name in ("grad_norm", "f", "adjoint_residual"):
        values = np.where(finite, full[name], np.nan)
        for stat, fn in (("p10", lambda v: np.nanpercentile(v, 10, axis=0)),
                         ("p50", lambda v: np.nanmedian(v, axis=0)),
                         ("p90", lambda v: np.nanpercentile(v, 90, axis=0)),
                         ("min", lambda v: np.nanmin(v, axis=0)),
                         ("max", lambda v: np.nanmax(v, axis=0))):  # fmt: skip
            np.testing.assert_allclose(
                small[f"{name}.{stat}"], fn(values), rtol=1e-15, err_msg=name
            )
        np.testing.assert_array_equal(
            small[f"{name}.nonfinite"], (~np.isfinite(full[name])).sum(axis=0)
        )
    np.testing.assert_array_equal(small["finite.nonfinite"], (~finite).sum(axis=0))
    # In memory, the same thinning.
    _, thinned = run(SOLVER, problems, KEYS, ITERS, record_every=5)
    np.testing.assert_array_equal(thinned["grad_norm"], loaded["grad_norm"])
    np.testing.assert_array_equal(thinned["diverged_at"], where)


def test_exact_metrics_only_at_the_recorded_iterations(tmp_path):
    # Iterations not recorded take the step without track_exact's exact solve:
    # the same states bitwise, the same recorded values, no statistics elsewhere.
    tracked = m_sobirl.make(optimizer={"learning_rate": 8e-3}, inner_steps=3)
    assert tracked.untracked_step is not None and SOLVER.untracked_step is None
    state, full = run(tracked, PROBLEMS, KEYS, ITERS)
    folder = str(tmp_path / "hist")
    thin_state, stats = run(
        tracked, PROBLEMS, KEYS, ITERS, segment_length=6, record_every=5,
        history_dir=folder,
    )  # fmt: skip
    leaves_equal(thin_state, state)
    loaded = load_history(folder)
    assert list(loaded["iterations"]) == [4, 9, 11]
    for name in full:
        np.testing.assert_array_equal(loaded[name], full[name][:, [4, 9, 11]])
    recorded = np.isin(np.arange(ITERS), [4, 9, 11])
    for name in ("exact_f", "exact_grad_norm"):
        median = stats[f"{name}.p50"]
        assert np.isnan(median[~recorded]).all()
        np.testing.assert_allclose(
            median[recorded], np.median(full[name][:, recorded], axis=0), rtol=1e-15
        )
        np.testing.assert_array_equal(stats[f"{name}.nonfinite"], 0)
    np.testing.assert_allclose(
        stats["grad_norm.p50"], np.median(full["grad_norm"], axis=0), rtol=1e-15
    )
    # The segments 0-5 and 6-11 as blocks of untracked steps and a tracked one.
    assert runner._blocks([False] * 4 + [True, False]) == [(1, 4, 1), (1, 1, 0)]
    assert runner._blocks([False, True, True, True]) == [(1, 1, 1), (2, 0, 1)]
    assert runner._blocks(([False] * 4 + [True]) * 2 + [False]) == [
        (2, 4, 1), (1, 1, 0)
    ]  # fmt: skip


def test_resume_rewrites_the_history_past_the_checkpoint(tmp_path):
    folder, hist = str(tmp_path / "ckpt"), str(tmp_path / "hist")
    kwargs = dict(
        segment_length=2, record_every=3, history_dir=hist, checkpoint_dir=folder
    )
    run(SOLVER, PROBLEMS, KEYS, ITERS, checkpoint_every=8, **kwargs)
    reference = load_history(hist)
    # As if killed before the final checkpoint: the segments past the one at 8
    # are on disk, and a half-written one; the resumed run replaces them.
    os.remove(checkpoint.list_checkpoints(folder)[-1])
    assert history.segments(hist)[-1][:2] == (10, 11)
    with open(os.path.join(hist, ".segment-000000010-000000011.npz.tmp"), "wb") as fh:
        fh.write(b"partial")
    seen = []
    run(SOLVER, PROBLEMS, KEYS, ITERS, callback=seen.append, **kwargs)
    assert seen[0].resumed_from == 8
    again = load_history(hist)
    assert sorted(again) == sorted(reference)
    for name in reference:
        np.testing.assert_array_equal(again[name], reference[name], err_msg=name)
    assert not [n for n in os.listdir(hist) if n.endswith(".tmp")]
    # Another record_every, or a lost segment, cannot resume.
    with pytest.raises(checkpoint.CheckpointError, match="recorded every 3"):
        run(SOLVER, PROBLEMS, KEYS, ITERS, checkpoint_dir=folder, history_dir=hist)
    os.remove(history.segments(hist)[1][2])
    with pytest.raises(checkpoint.CheckpointError, match="do not cover"):
        run(SOLVER, PROBLEMS, KEYS, ITERS, **kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_iters=0), "num_iters: must be finite and > 0"),
        (dict(segment_length=0), "segment_length: must be finite and > 0"),
        (dict(checkpoint_every=-1), "checkpoint_every: must be finite and > 0"),
        (dict(checkpoint_seconds=float("nan")), "checkpoint_seconds: must be finite"),
        (dict(chunk_size=0), "chunk_size: must be finite and > 0"),
        (dict(record_every=0), "record_every: must be finite and > 0"),
        (
            dict(key=jax.random.split(jax.random.key(0), 3)),
            "key: expected one key or 4",
        ),
    ],
)
def test_bad_run_settings_are_rejected(kwargs, message):
    args = dict(key=KEYS, num_iters=3) | kwargs
    with pytest.raises(ValueError, match=message):
        run(SOLVER, PROBLEMS, args.pop("key"), args.pop("num_iters"), **args)
