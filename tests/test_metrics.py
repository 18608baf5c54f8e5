"""Exact global metrics and what they make possible (EarlyStopping agreement)."""

import json
import os

import numpy as np
import pytest
from conftest import load_ranks, run_workers


def test_per_class_metrics_equal_single_process_values(tmp_path, controller):
    run_workers("metrics_exact.py", ["--out", str(tmp_path / "single"), "--reduce", "single"], np_=1)
    single = load_ranks(str(tmp_path / "single"), 1)[0]
    run_workers("metrics_exact.py", ["--out", str(tmp_path / "exact"), "--reduce", "exact"],
                controller=controller)
    exact = load_ranks(str(tmp_path / "exact"), 2)
    keys = [k for k in single if any(m in k for m in ("precision", "recall", "f1", "auc", "accuracy", "loss"))]
    assert any("val_precision_2" in k for k in keys) and any(k.startswith("eval_recall_0") for k in keys)
    for k in keys:
        for r in exact:
            np.testing.assert_allclose(r[k], single[k], atol=1e-6, err_msg=k)


def test_per_rank_averaging_is_not_exact(tmp_path):
    run_workers("metrics_exact.py", ["--out", str(tmp_path / "single"), "--reduce", "single"], np_=1)
    single = load_ranks(str(tmp_path / "single"), 1)[0]
    run_workers("metrics_exact.py", ["--out", str(tmp_path / "avg"), "--reduce", "average"])
    averaged = load_ranks(str(tmp_path / "avg"), 2)[0]
    worst = max(float(np.max(np.abs(averaged[k] - single[k]))) for k in single
                if k.startswith("fit_val_precision") or k.startswith("fit_val_recall") or k.startswith("fit_f1"))
    assert worst > 1e-2


def test_early_stopping_stops_all_ranks_at_the_same_epoch(tmp_path):
    run_workers("early_stopping.py", ["--out", str(tmp_path)], timeout=180)
    r0, r1 = load_ranks(str(tmp_path), 2)
    assert int(r0["epochs"]) == int(r1["epochs"]) < 60
    np.testing.assert_array_equal(r0["val_loss"], r1["val_loss"])
    # Throughput rode along: one record per epoch, both ranks' step times.
    with open(os.path.join(tmp_path, "throughput.json")) as f:
        report = json.load(f)
    assert report["size"] == 2 and len(report["epochs"]) == int(r0["epochs"])
    last = report["epochs"][-1]
    assert len(last["step_time_per_rank"]) == 2 and all(t > 0 for t in last["step_time_per_rank"])
    assert all(0 < s < 1 for s in last["allreduce_share_per_rank"])
    assert last["scaling_efficiency"] == last["global_samples_per_sec"] / 2000.0


@pytest.mark.parametrize("mode", ["guide", "trackers", "raw"])
def test_custom_train_step_logs_are_exact_whatever_their_names(tmp_path, mode):
    # guide: {m.name: m.result() for m in self.metrics} with compiled metrics (keys "loss", "compile_metrics");
    # raw: the step's own loss tensor. Both gave each rank its own values before (loss 1.381 / 1.107).
    single = str(tmp_path / "single")
    run_workers("custom_logs.py", ["--mode", mode, "--out", single], np_=1)
    out = str(tmp_path / "dist")
    run_workers("custom_logs.py", ["--mode", mode, "--out", out])
    (s,), (r0, r1) = load_ranks(single, 1), load_ranks(out, 2)
    assert set(s) == set(r0) and len(s) >= 2
    for key in s:
        assert float(r0[key]) == float(r1[key]), key
        assert abs(float(r0[key]) - float(s[key])) < 1e-6, key
