"""Mixed precision on several ranks: loss scaling decides alike on every rank."""

import numpy as np
import pytest
from conftest import load_ranks, run_workers
from test_equivalence import GLOBAL_BATCH, STEPS, _single

# float16 compute: 2 ranks and 1 rank differ by rounding (measured 1e-4 float16, 8e-4 bfloat16).
TOLERANCE = {"mixed_float16": 1e-3, "mixed_bfloat16": 5e-3}


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_two_ranks_match_one_rank_under_a_mixed_policy(tmp_path, tmp_path_factory, controller, precision):
    """compile(optimizer=DistributedOptimizer(opt)): Keras wraps it in a LossScaleOptimizer (float16)."""
    common = ["--global-batch", str(GLOBAL_BATCH), "--steps", str(STEPS), "--precision", precision]
    single = _single(str(tmp_path_factory.getbasetemp()), *common)
    out = str(tmp_path / "dist")
    run_workers("train_equivalence.py", ["--out", out, *common], controller=controller)
    r0, r1 = load_ranks(out, 2)
    np.testing.assert_array_equal(r0["weights"], r1["weights"])
    assert int(r0["iterations"]) == int(single["iterations"])
    assert np.abs(r0["weights"] - single["weights"]).max() < TOLERANCE[precision]


@pytest.mark.parametrize("api,jit", [
    ("explicit-outer", "no"), ("explicit-inner", "no"), ("auto", "no"),
    ("explicit-outer", "yes"), ("explicit-inner", "yes"), ("auto", "yes"),
])
def test_overflow_on_one_rank_skips_the_step_on_every_rank(tmp_path, api, jit):
    run_workers("loss_scale_overflow.py", ["--out", str(tmp_path), "--api", api, "--jit", jit], timeout=180)
    r0, r1 = load_ranks(str(tmp_path), 2)
    np.testing.assert_array_equal(r0["weights"], r1["weights"])
    assert float(r0["scale"]) == float(r1["scale"]) == 2.0 ** 15 / 2  # halved once, on both ranks
    assert int(r0["updates"]) == int(r1["updates"]) == 5  # 6 batches, the overflowing one skipped


def test_overflow_agreement_under_mpi(tmp_path):
    run_workers("loss_scale_overflow.py", ["--out", str(tmp_path)], controller="mpi", timeout=180)
    r0, r1 = load_ranks(str(tmp_path), 2)
    np.testing.assert_array_equal(r0["weights"], r1["weights"])
    assert float(r0["scale"]) == float(r1["scale"]) and int(r0["updates"]) == int(r1["updates"]) == 5
