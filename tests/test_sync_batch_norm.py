"""Synchronised batch normalization: 2 ranks equal 1 process on the global batch; plain BatchNorm does not."""

import numpy as np
import pytest
from conftest import load_ranks, run_workers


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("bn-single"))
    run_workers("sync_bn.py", ["--layer", "plain", "--out", out], np_=1)
    return load_ranks(out, 1)[0]


@pytest.mark.parametrize("layer", ["sync", "flag"])
def test_two_ranks_equal_one_process_on_the_global_batch(tmp_path, controller, single, layer):
    # flag: keras.layers.BatchNormalization(synchronized=True), which only tf.distribute synchronised before.
    run_workers("sync_bn.py", ["--layer", layer, "--out", str(tmp_path)], controller=controller)
    r0, r1 = load_ranks(str(tmp_path), 2)
    assert str(r0["layer_class"]) == "SyncBatchNormalization"
    for key in ("weights", "moving", "predicted"):
        np.testing.assert_array_equal(r0[key], r1[key])
        assert np.abs(r0[key] - single[key]).max() < 1e-5, key


def test_plain_batch_norm_keeps_each_ranks_statistics(tmp_path, single):
    run_workers("sync_bn.py", ["--layer", "plain", "--out", str(tmp_path)])
    r0, r1 = load_ranks(str(tmp_path), 2)
    assert np.abs(r0["moving"] - r1["moving"]).max() > 1e-3  # each rank's own batches
    assert np.abs(r0["weights"] - single["weights"]).max() > 1e-4


def test_xla_falls_back_without_splitting_and_still_equals_one_process(tmp_path, single):
    run_workers("sync_bn.py", ["--layer", "sync", "--jit", "auto-gpu", "--out", str(tmp_path)])
    r0, r1 = load_ranks(str(tmp_path), 2)
    assert not bool(r0["xla_split"])
    assert np.abs(r0["weights"] - single["weights"]).max() < 1e-5


def test_explicit_xla_is_refused_in_one_line(tmp_path):
    proc = run_workers("sync_bn.py", ["--layer", "sync", "--jit", "yes", "--out", str(tmp_path)], check=False)
    assert proc.returncode != 0
    line = next(line for line in (proc.stdout + proc.stderr).splitlines() if "cannot be honoured" in line)
    assert "SyncBatchNormalization" in line and "runs a collective in the forward pass" in line
