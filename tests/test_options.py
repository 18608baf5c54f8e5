"""DistributedOptimizer's options on 2 ranks against the single-process result, each with its tolerance."""

import numpy as np
import pytest
from conftest import load_ranks, run_workers


def _run(tmp_path, name, args, np_, controller="gloo"):
    out = str(tmp_path / name)
    run_workers("train_equivalence.py", ["--out", out, *args], np_=np_, controller=controller)
    return load_ranks(out, np_)


def _check(tmp_path, dist_args, single_args, tol, controller="gloo", common=("--global-batch", "16", "--steps", "6")):
    (single,) = _run(tmp_path, "single", [*common, *single_args], 1)
    r0, r1 = _run(tmp_path, "dist", [*common, *dist_args], 2, controller)
    np.testing.assert_array_equal(r0["weights"], r1["weights"])
    assert int(r0["iterations"]) == int(single["iterations"])
    error = np.abs(r0["weights"] - single["weights"]).max()
    assert error < tol, error
    return error


@pytest.mark.parametrize("objects", ["no", "yes"])
def test_fp16_compression(tmp_path, objects):
    # float16 keeps ~3 decimal digits of each averaged gradient.
    _check(tmp_path, ["--compression", "fp16", "--horovod-objects", objects], [], tol=2e-3)


@pytest.mark.parametrize("objects", ["no", "yes"])
def test_op_sum_is_the_single_process_step_with_twice_the_rate(tmp_path, objects):
    _check(tmp_path, ["--op", "sum", "--horovod-objects", objects], ["--lr-mult", "2"], tol=1e-5)


def test_adasum_of_equal_gradients_is_that_gradient(tmp_path):
    # Adasum(a, a) = a: both ranks train on all the data, as one process does.
    _check(tmp_path, ["--op", "adasum", "--same-data", "yes"], [], tol=1e-5, controller="mpi",
           common=("--global-batch", "8", "--steps", "6"))


def test_sparse_as_dense_embedding_gradients(tmp_path):
    _check(tmp_path, ["--model", "embed"], ["--model", "embed"], tol=1e-5)


def test_backward_passes_per_step_matches_one_rank_with_the_whole_effective_batch(tmp_path):
    # 2 ranks x 2 batches of 8 per update = one process with batches of 32.
    _check(tmp_path, ["--global-batch", "16", "--steps", "6", "--accum", "2"],
           ["--global-batch", "32", "--steps", "3"], tol=1e-5, common=())


def test_sum_of_aggregated_gradients_as_horovod_does_by_default(tmp_path):
    _check(tmp_path, ["--global-batch", "16", "--steps", "6", "--accum", "2", "--sum-aggregated", "yes"],
           ["--global-batch", "32", "--steps", "3", "--lr-mult", "2"], tol=1e-5, common=())
