"""Learning-rate scaling and warmup, in both forms, on 2 ranks."""

import math

import keras
import numpy as np
import pytest
from conftest import load_ranks, run_workers

import hvd_keras

BASE, STEPS_PER_EPOCH, WARMUP_EPOCHS, EPOCHS, SIZE = 0.2, 4, 2, 3, 2


def expected_rate(step):
    warmup = WARMUP_EPOCHS * STEPS_PER_EPOCH
    initial = BASE / SIZE
    return BASE if step >= warmup else initial + (BASE - initial) * step / warmup


@pytest.mark.parametrize("form", ["schedule", "callback"])
def test_warmup_rate_follows_the_formula_on_two_ranks(tmp_path, form):
    run_workers("lr_warmup.py", ["--out", str(tmp_path), "--form", form])
    r0, r1 = load_ranks(str(tmp_path), 2)
    lrs = r0["lrs"]
    assert len(lrs) == EPOCHS * STEPS_PER_EPOCH
    assert lrs[0] == pytest.approx(BASE / 2, rel=1e-6)  # first step: the single-process rate
    assert lrs[4] == pytest.approx(expected_rate(4), rel=1e-6)  # mid-warmup: 0.15
    assert lrs[4] == pytest.approx(0.15, rel=1e-6)
    assert lrs[8] == pytest.approx(BASE, rel=1e-6)  # after warmup
    np.testing.assert_allclose(lrs, [expected_rate(t) for t in range(len(lrs))], rtol=1e-6)
    np.testing.assert_array_equal(r0["lrs"], r1["lrs"])
    np.testing.assert_array_equal(r0["weights"], r1["weights"])


def test_callback_corrects_sgd_momentum_when_the_rate_changes(tmp_path):
    run_workers("lr_warmup.py", ["--out", str(tmp_path), "--form", "callback"])
    r0 = load_ranks(str(tmp_path), 2)[0]
    lrs, m_begin, m_end = r0["lrs"], r0["m_begin"], r0["m_end"]
    for t in range(1, len(lrs)):
        # The buffer a step starts from is the last step's, scaled by new/old rate.
        np.testing.assert_allclose(m_begin[t], m_end[t - 1] * lrs[t] / lrs[t - 1], rtol=1e-5, atol=1e-7)
    assert abs(lrs[1] / lrs[0] - 1) > 0.05  # the rate did change, so the check has teeth


def test_scale_learning_rate_rules():
    assert hvd_keras.scale_learning_rate(0.1, "linear", size=8) == pytest.approx(0.8)
    assert hvd_keras.scale_learning_rate(0.1, "sqrt", size=4) == pytest.approx(0.2)
    assert hvd_keras.scale_learning_rate(0.1, "none", size=4) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="rule must be one of"):
        hvd_keras.scale_learning_rate(0.1, "cubic")


def test_warmup_wraps_a_schedule_and_serialises():
    base = keras.optimizers.schedules.ExponentialDecay(0.4, decay_steps=10, decay_rate=0.5)
    w = hvd_keras.schedules.Warmup(base, warmup_steps=10, initial_learning_rate=0.1)
    assert float(w(0)) == pytest.approx(0.1)
    assert float(w(5)) == pytest.approx(0.1 + (0.4 * 0.5 ** 0.5 - 0.1) * 0.5, rel=1e-5)
    assert float(w(20)) == pytest.approx(0.4 * 0.25, rel=1e-5)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(w))
    assert isinstance(clone, hvd_keras.schedules.Warmup)
    for step in (0, 3, 10, 15):
        assert float(clone(step)) == pytest.approx(float(w(step)))
    with pytest.raises(ValueError, match="HINT: pass 0 to disable warmup"):
        hvd_keras.schedules.Warmup(0.1, warmup_steps=-1)
    with pytest.raises(ValueError, match="warmup_epochs must be >= 0"):
        hvd_keras.callbacks.LearningRateWarmup(-1, 10)
    assert not math.isnan(float(hvd_keras.schedules.Warmup(0.1, 0)(3)))


def test_old_argument_names_still_work_with_a_warning():
    with pytest.warns(FutureWarning, match="initial_lr= is deprecated.*initial_learning_rate="):
        w = hvd_keras.schedules.Warmup(base=0.4, warmup_steps=4, initial_lr=0.1)
    assert float(w(2)) == pytest.approx(0.25)
    with pytest.warns(FutureWarning, match="lr= is deprecated"):
        assert hvd_keras.scale_learning_rate(lr=0.1, size=2) == pytest.approx(0.2)
    with pytest.warns(FutureWarning, match="Horovod's initial_lr was the rate after the warmup"):
        cb = hvd_keras.callbacks.LearningRateWarmup(1, 10, initial_lr=0.01)
    assert cb.initial_learning_rate == 0.01
    with pytest.raises(TypeError, match="both initial_lr= and initial_learning_rate="):
        hvd_keras.schedules.Warmup(0.4, 4, initial_learning_rate=0.1, initial_lr=0.1)
    # A schedule saved by the previous release (old config keys) still loads.
    old = hvd_keras.schedules.Warmup.from_config({"base": 0.4, "warmup_steps": 4, "initial_lr": 0.1})
    assert float(old(4)) == pytest.approx(0.4)
