"""The watchdog: each rank's deadline on its train steps and hvd_keras's own collectives."""

import time

import pytest
from conftest import run_workers, worker_env

from hvd_keras import watchdog


def _dog(**kwargs):
    fired = []
    dog = watchdog.Watchdog(kwargs.pop("timeout", 0.4), describe=lambda: ("node7", 3), on_stall=fired.append,
                            interval=0.05, **kwargs)
    return dog, fired


def test_a_step_past_its_deadline_fires_once_with_host_and_rank():
    dog, fired = _dog()
    step = dog.guard(lambda _: time.sleep(0.05))
    step(None)  # the first call (tracing) has its own allowance
    step(None)
    slow = dog.guard(lambda _: time.sleep(1.0))
    slow(None)  # the first call of this function: allowance 0 here, so the floor applies
    time.sleep(0.2)
    dog.stop()
    assert len(fired) == 1
    assert fired[0].startswith("hvd_keras: rank 3 on host node7: train step 3 has not completed after")
    assert "HVD_KERAS_STEP_TIMEOUT" in fired[0] and f"exit code {watchdog.STALLED_EXIT_CODE}" in fired[0]


def test_fast_steps_a_long_first_call_and_slow_models_do_not_fire():
    dog, fired = _dog(first_call=2.0)
    step = dog.guard(lambda seconds: time.sleep(seconds))
    step(0.8)                  # the first call (tracing, XLA): within its 2 s allowance
    for _ in range(30):
        step(0.02)             # steps of 0.02 s: 10 of them stay under the floor
    assert dog.deadline() == pytest.approx(0.4)
    dog.typical = 0.1          # steps of 0.1 s: a call may take 10 of them
    assert dog.deadline() == pytest.approx(1.0)
    dog.stop()
    assert fired == []


def test_own_collectives_are_timed_too(monkeypatch):
    dog, fired = _dog()
    monkeypatch.setitem(watchdog._state, "watchdog", dog)
    with watchdog.timed("hvd_keras.stop_training"):
        time.sleep(0.7)
    dog.stop()
    assert len(fired) == 1 and "collective hvd_keras.stop_training has not completed" in fired[0]


@pytest.mark.parametrize("environ,controller,seconds", [
    ({}, "mpi", 30.0), ({}, None, 30.0), ({}, "gloo", 60.0), ({"HOROVOD_GLOO_TIMEOUT_SECONDS": "10"}, "gloo", 20.0),
    ({"HVD_KERAS_STEP_TIMEOUT": "120"}, "mpi", 120.0), ({"HVD_KERAS_STEP_TIMEOUT": "0"}, "gloo", 0.0),
])
def test_the_deadline_setting(environ, controller, seconds):
    assert watchdog.step_timeout(environ, controller) == seconds


@pytest.mark.parametrize("value", ["-1", "soon", "inf"])
def test_a_bad_setting_is_one_line(value):
    with pytest.raises(ValueError) as e:
        watchdog.step_timeout({"HVD_KERAS_STEP_TIMEOUT": value})
    assert f"Received: HVD_KERAS_STEP_TIMEOUT={value!r}" in str(e.value) and "HINT" in str(e.value)


def test_a_rank_that_stops_answering_ends_the_job_with_one_line():
    # MPI: no transport timeout of its own. Rank 1 sleeps inside a batch; rank 0 waits in the allreduce.
    started = time.monotonic()
    proc = run_workers("hang_one_rank.py", [], controller="mpi", check=False, timeout=120,
                       env=worker_env(HVD_KERAS_STEP_TIMEOUT="5"))
    assert proc.returncode != 0 and "TRAINED" not in proc.stdout
    lines = [line for line in proc.stdout.splitlines() + proc.stderr.splitlines() if "has not completed after" in line]
    assert lines and "rank 0 on host" in lines[0] and "train step 4" in lines[0], proc.stderr[-2000:]
    assert time.monotonic() - started < 60
