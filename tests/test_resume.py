"""Resume is exact: an interrupted and resumed 2-rank run equals the uninterrupted one."""

import json
import os

import numpy as np
import pytest
from conftest import load_ranks, run_workers

from hvd_keras import checkpoint

MATRIX = {
    # variant: how the first run is interrupted (after epoch E, after step S, SIGTERM after step S)
    "schedule": "epoch:0",      # schedules.Warmup, stopped inside its 12-step ramp (8 steps per epoch)
    "callback": "preempt:5",    # callbacks.LearningRateWarmup, preempted inside the ramp, mid-epoch
    "monitor": "epoch:1",       # monitor=: the best checkpoint and best.json survive the resume
    "accum": "epoch:1",         # backward_passes_per_step=2
    "spe": "epoch:1",           # steps_per_execution=4
    "savefreq": "step:11",      # save_freq=3, killed mid-epoch: resumes from batch 1 of epoch 1
    "dataset": "step:11",       # the same with a tf.data input
}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    cache = {}

    def get(variant):
        if variant not in cache:
            work = tmp_path_factory.mktemp(f"full-{variant}")
            run_workers("resume_run.py", ["--work", str(work), "--out", str(work / "res"), "--variant", variant])
            cache[variant] = (work, load_ranks(str(work / "res"), 2))
        return cache[variant]

    return get


@pytest.mark.parametrize("variant", list(MATRIX))
def test_interrupted_and_resumed_equals_uninterrupted(variant, tmp_path, uninterrupted):
    full_work, (f0, f1) = uninterrupted(variant)
    interrupt = MATRIX[variant]
    first = run_workers("resume_run.py", ["--work", str(tmp_path), "--out", str(tmp_path / "res1"),
                                          "--variant", variant, "--interrupt", interrupt], check=False)
    if interrupt.startswith("preempt"):
        assert first.returncode != 0 and "preempted; checkpoint written" in first.stdout, first.stdout[-3000:]
    else:
        assert first.returncode == 0, first.stderr[-3000:]
    run_workers("resume_run.py", ["--work", str(tmp_path), "--out", str(tmp_path / "res2"), "--variant", variant])
    r0, r1 = load_ranks(str(tmp_path / "res2"), 2)
    np.testing.assert_array_equal(r0["weights"], r1["weights"])
    assert np.abs(r0["weights"] - f0["weights"]).max() < 1e-6
    assert np.abs(r0["optimizer"] - f0["optimizer"]).max() < 1e-6
    assert float(r0["learning_rate"]) == pytest.approx(float(f0["learning_rate"]), rel=1e-6)
    # The resumed run's epochs have the uninterrupted run's history, on every rank
    # (the epoch resumed in its middle too: its metric states were restored).
    for resumed, full in ((r0, f0), (r1, f1)):
        epochs = list(resumed["epochs"])
        assert epochs == list(full["epochs"][-len(epochs):]) and epochs[-1] == 3
        np.testing.assert_allclose(resumed["loss"], full["loss"][epochs[0]:], rtol=1e-6)
        np.testing.assert_allclose(resumed["accuracy"], full["accuracy"][epochs[0]:], rtol=1e-6)
    # Checkpoint names count batches and only grow: the same names as without
    # the interruption, and the newest is the one resume would pick.
    assert list(r0["names"]) == list(f0["names"])
    latest = checkpoint.latest_checkpoint(str(tmp_path / "ckpt"))
    assert os.path.basename(latest) == str(r0["names"][-1])
    assert checkpoint.read_meta(latest)["global_step"] == (30 if variant in ("savefreq", "dataset") else 32)
    if variant == "monitor":
        best = json.loads(str(r0["best"]))
        assert best == json.loads(str(f0["best"])) and best["epoch"] == 0
        assert os.path.isdir(tmp_path / "ckpt" / best["path"])
