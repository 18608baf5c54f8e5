"""XLA on several ranks: the step compiles around the allreduce, and 2 ranks equal 1 rank.

On a GPU machine Keras's default jit_compile="auto" is XLA; here the same code
path runs on the CPU, with jit_compile=True or with TensorFlow's device list
reporting a GPU.
"""

import numpy as np
import pytest
from conftest import load_ranks, run_workers, worker_env
from test_equivalence import GLOBAL_BATCH, STEPS, _single


def _compare_xla(tmp_path, tmp_path_factory, controller, optimizer, *extra, env=None):
    common = ["--global-batch", str(GLOBAL_BATCH), "--steps", str(STEPS), "--optimizer", optimizer]
    # The reference: one process, the whole step compiled by XLA (nothing to reduce).
    single = _single(str(tmp_path_factory.getbasetemp()), *common, "--jit", "yes")
    out = str(tmp_path / "dist")
    run_workers("train_equivalence.py", ["--out", out, *common, *extra], np_=2, controller=controller, env=env)
    r0, r1 = load_ranks(out, 2)
    assert bool(r0["xla_split"]) and bool(r1["xla_split"])
    assert int(r0["iterations"]) == STEPS
    np.testing.assert_array_equal(r0["weights"], r1["weights"])
    assert np.abs(r0["weights"] - single["weights"]).max() < 1e-5
    assert np.abs(r0["optimizer"] - single["optimizer"]).max() < 1e-5


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_jit_compile_true_two_ranks_match_one_rank(tmp_path, tmp_path_factory, controller, optimizer):
    _compare_xla(tmp_path, tmp_path_factory, controller, optimizer, "--jit", "yes")


def test_xla_with_accumulation_reduces_on_update_steps_only(tmp_path, tmp_path_factory, controller):
    # backward_passes_per_step=2: 6 micro-batches, 3 updates, 3 allreduces (it was one per micro-batch).
    common = ["--global-batch", str(GLOBAL_BATCH), "--steps", str(STEPS), "--optimizer", "sgd", "--accum", "2"]
    single = _single(str(tmp_path_factory.getbasetemp()), *common, "--jit", "yes")
    out = str(tmp_path / "dist")
    run_workers("train_equivalence.py", ["--out", out, *common, "--jit", "yes", "--count-allreduces", "yes"],
                np_=2, controller=controller)
    r0, r1 = load_ranks(out, 2)
    assert bool(r0["xla_split"]) and int(r0["allreduces"]) == STEPS // 2 == int(r1["allreduces"])
    np.testing.assert_array_equal(r0["weights"], r1["weights"])
    assert np.abs(r0["weights"] - single["weights"]).max() < 1e-5


def test_default_jit_compile_on_a_gpu_machine_uses_xla_and_matches(tmp_path, tmp_path_factory):
    """jit_compile="auto" with a GPU listed resolves to XLA (it crashed at step 1 before)."""
    _compare_xla(tmp_path, tmp_path_factory, "gloo", "sgd", "--jit", "auto-gpu")


def test_import_wrapper_with_xla(tmp_path, tmp_path_factory):
    # The wrapper scales the learning rate by default; the 1-rank reference does not.
    _compare_xla(tmp_path, tmp_path_factory, "gloo", "adam", "--jit", "yes", "--api", "auto",
                 env=worker_env(HVD_KERAS_LR_SCALING="none"))


def test_explicit_jit_that_cannot_be_split_is_one_line(tmp_path):
    proc = run_workers("xla_unsplittable.py", ["--jit", "yes", "--out", str(tmp_path)], check=False, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "TRAINED" not in out
    line = next(line for line in out.splitlines() if "cannot be honoured" in line)
    assert "jit_compile=True cannot be honoured on 2 ranks" in line
    assert "apply 2 times" in line and "HINT: compile with jit_compile=False" in line


@pytest.mark.parametrize("api", ["fit", "train_on_batch"])
def test_auto_jit_that_cannot_be_split_trains_without_xla(tmp_path, api):
    proc = run_workers("xla_unsplittable.py", ["--jit", "auto-gpu", "--api", api, "--out", str(tmp_path)],
                       timeout=120)
    notes = [line for line in proc.stdout.splitlines() if "training without XLA" in line]
    assert len(notes) == 1 and notes[0].startswith("[0]")  # one line, rank 0 only
    r0, r1 = load_ranks(str(tmp_path), 2)
    assert not bool(r0["xla_split"])
    np.testing.assert_array_equal(r0["weights"], r1["weights"])
