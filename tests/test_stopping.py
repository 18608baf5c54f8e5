"""A stop decided on one rank ends every rank after the same step; uneven data is refused before the first step."""

import time

import pytest
from conftest import load_ranks, run_workers


# A request rides in the next step's allreduce, and the agreed flags are read
# one step later still (never the step just dispatched: no host-device sync
# per step), so every rank stops two steps after the request.
@pytest.mark.parametrize("mode,steps,epochs,jit", [
    ("nan", 5, 1, "0"),          # rank 1 sees a NaN at step 3; both stop after step 5
    ("batch", 8 + 6, 2, "0"),    # rank 1's callback stops after step 12 (batch 3 of epoch 1): 14
    ("batch", 8 + 6, 2, "1"),    # the same with the XLA step split around the allreduce
    ("epoch", 8, 1, "0"),        # rank 1's callback stops at the end of epoch 0
])
def test_stop_on_one_rank_stops_every_rank_at_the_same_step(tmp_path, mode, steps, epochs, jit):
    out = str(tmp_path / "res")
    run_workers("stop_one_rank.py", ["--mode", mode, "--jit", jit, "--out", out], timeout=120)
    r0, r1 = load_ranks(out, 2)
    assert int(r0["steps"]) == int(r1["steps"]) == steps
    assert int(r0["epochs"]) == int(r1["epochs"]) == epochs
    # The step returns the agreed flags; they never reach Keras's logs.
    assert r0["keys"] == r1["keys"] == "loss"
    assert int(r0["returned"]) == int(r1["returned"]) == 1


@pytest.mark.parametrize("kind", ["numpy", "dataset", "pydataset"])
def test_uneven_steps_per_epoch_are_one_line_on_every_rank(kind):
    started = time.monotonic()
    proc = run_workers("uneven_steps.py", ["--kind", kind], check=False, timeout=120)
    assert proc.returncode != 0 and time.monotonic() - started < 60
    output = proc.stdout + proc.stderr
    assert "trained a step" not in output
    for r in (0, 1):
        assert (f"[{r}]<stderr>:ValueError: hvd_keras: ranks would run different numbers of steps per epoch "
                "(rank 0: 8, rank 1: 4)") in output, output[-3000:]


def test_evaluate_on_uneven_shards_is_exact_on_every_rank(tmp_path):
    # Exact metrics combine metric states once, at the end: ranks may
    # evaluate different numbers of batches, and the result is the
    # single-process one on the union of their data, so nothing is refused.
    out = str(tmp_path / "res")
    run_workers("uneven_steps.py", ["--kind", "evaluate", "--out", out], timeout=120)
    r0, r1 = load_ranks(out, 2)
    for r in (r0, r1):
        assert abs(float(r["loss"]) - float(r0["union_loss"])) < 1e-6
        assert float(r["accuracy"]) == float(r0["union_accuracy"])
