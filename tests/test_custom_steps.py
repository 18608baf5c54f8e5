"""Real custom-step patterns run unchanged: a GAN-style model whose own compile keeps two optimizers, under
`import hvd_keras.auto` and the explicit API, and a LossScaleOptimizer built by hand in a custom loop."""

import os

import numpy as np
import pytest
from conftest import load_ranks, run_workers, worker_env


@pytest.fixture(scope="module")
def plain_gan(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("gan-plain"))
    run_workers("custom_gan.py", ["--api", "plain", "--out", out], np_=1)
    return load_ranks(out, 1)[0]


def _same(a, b, tolerance):
    for key in ("weights", "d_loss", "g_loss"):
        assert np.abs(a[key] - b[key]).max() <= tolerance, key
    np.testing.assert_array_equal(a["iterations"], b["iterations"])


def test_one_process_under_auto_is_exactly_plain_keras(tmp_path, plain_gan):
    # It failed before: BroadcastInitialState asked for a built model.
    out = str(tmp_path)
    proc = run_workers("custom_gan.py", ["--api", "auto", "--out", out], np_=1, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _same(load_ranks(out, 1)[0], plain_gan, 0.0)


def test_two_ranks_under_auto_equal_one_process(tmp_path, controller, plain_gan):
    # Both optimizers the train_step applies are distributed (they drifted apart by 1.7e-3 before), and the
    # trackers the step returns are exact. The rates are left as in one process to compare.
    out = str(tmp_path)
    run_workers("custom_gan.py", ["--api", "auto", "--out", out], controller=controller,
                env=worker_env(HVD_KERAS_LR_SCALING="none"))
    r0, r1 = load_ranks(out, 2)
    _same(r0, r1, 0.0)
    _same(r0, plain_gan, 1e-5)


def test_two_ranks_with_the_explicit_api_equal_one_process(tmp_path, plain_gan):
    out = str(tmp_path)
    run_workers("custom_gan.py", ["--api", "explicit", "--wrap", "yes", "--out", out])
    r0, r1 = load_ranks(out, 2)
    _same(r0, r1, 0.0)
    _same(r0, plain_gan, 1e-5)


def test_an_optimizer_that_does_not_average_is_refused_before_any_update(tmp_path, controller):
    proc = run_workers("custom_gan.py", ["--api", "explicit", "--wrap", "no", "--out", str(tmp_path)],
                       controller=controller, check=False, timeout=180)
    assert proc.returncode != 0 and not os.listdir(tmp_path)
    lines = [line for line in proc.stderr.splitlines() if "would apply gradients on 2 ranks" in line]
    assert lines, proc.stderr[-3000:]
    assert "Adam (the model's attribute `d_optimizer`)" in lines[0] and "nothing was updated" in lines[0]
    assert "HINT: self.d_optimizer = hvd_keras.DistributedOptimizer(opt)" in lines[0]


def test_fp16_compression_averages_without_overflow(tmp_path, controller):
    # float16 holds 65,504: the two ranks' 40,000 summed before averaging were inf.
    run_workers("reduce_paths.py", ["--case", "fp16", "--out", str(tmp_path)], controller=controller)
    r0, r1 = load_ranks(str(tmp_path), 2)
    np.testing.assert_array_equal(r0["reduced"], r1["reduced"])
    np.testing.assert_allclose(r0["reduced"], [40004.0, -30000.0, 1.5e-3], rtol=1e-3)


def test_a_loss_scale_optimizer_built_by_hand_skips_an_overflow_on_every_rank(tmp_path, controller):
    # LossScaleOptimizer(DistributedOptimizer(opt)) in a custom loop: the allreduce sat inside the
    # optimizer's cond(finite), so a step that overflowed on one rank only was skipped there alone.
    run_workers("reduce_paths.py", ["--case", "lso-loop", "--out", str(tmp_path)], controller=controller,
                timeout=120)
    r0, r1 = load_ranks(str(tmp_path), 2)
    np.testing.assert_array_equal(r0["kernels"], r1["kernels"])
    np.testing.assert_array_equal(r0["scales"], [1024.0, 512.0, 512.0])  # step 1 skipped everywhere
    np.testing.assert_array_equal(r0["kernels"][0], r0["kernels"][1])
    assert np.abs(r0["kernels"][2] - r0["kernels"][1]).max() > 1e-3
