"""Tests that need NVIDIA GPUs visible to TensorFlow; skipped cleanly elsewhere (`-m gpu` selects them).

Run them on a GPU node after `make setup` (which then installs
tensorflow[and-cuda] and builds horovod with NCCL): `.venv/bin/python -m pytest -m gpu tests`.
"""

import numpy as np
import pytest
from conftest import load_ranks, run_workers

pytestmark = pytest.mark.gpu


def _gpu_count():
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


def test_horovod_was_built_with_nccl():
    from hvd_keras._horovod import hvd

    assert hvd.cuda_built() and hvd.nccl_built()


@pytest.mark.parametrize("precision", ["float32", "mixed_float16"])
def test_two_gpus_match_one_gpu_with_the_default_xla(tmp_path, precision):
    if _gpu_count() < 2:
        pytest.skip("needs 2 GPUs")
    common = ["--global-batch", "32", "--steps", "6", "--jit", "auto", "--threads", "0",
              "--precision", precision, "--optimizer", "adam"]
    run_workers("train_equivalence.py", ["--out", str(tmp_path / "one"), *common], np_=1)
    run_workers("train_equivalence.py", ["--out", str(tmp_path / "two"), *common], np_=2, controller="mpi")
    (single,), (r0, r1) = load_ranks(str(tmp_path / "one"), 1), load_ranks(str(tmp_path / "two"), 2)
    assert bool(r0["xla_split"])  # "auto" is XLA on a GPU machine
    np.testing.assert_array_equal(r0["weights"], r1["weights"])
    assert np.abs(r0["weights"] - single["weights"]).max() < (1e-5 if precision == "float32" else 1e-3)


def test_each_rank_takes_its_own_gpu(tmp_path):
    if _gpu_count() < 2:
        pytest.skip("needs 2 GPUs")
    run_workers("ranks.py", ["--out", str(tmp_path)], np_=2)
    r0, r1 = load_ranks(str(tmp_path), 2)
    assert str(r0["gpu"]) != str(r1["gpu"]) and str(r0["gpu"]) != "None"

