"""The Horovod settings hvd_keras.init() leaves on every rank, under real launchers."""

import os
import subprocess
import sys

import pytest
from conftest import SCRIPTS, load_ranks, run_workers, worker_env

from hvd_keras import launcher


def _env_without_settings():
    # The job must start from the user's environment, not from what an earlier
    # in-process init() of this test session left in os.environ.
    env = worker_env()
    for key in launcher.recommended_env(gpus=False):
        env.pop(key, None)
    return env


def test_ranks_of_a_launch_get_the_short_cycle(tmp_path, controller):
    run_workers("ranks.py", ["--out", str(tmp_path)], controller=controller, env=_env_without_settings())
    ranks = load_ranks(str(tmp_path), 2)
    assert [int(r["size"]) for r in ranks] == [2, 2]
    assert [str(r["cycle"]) for r in ranks] == ["0.2", "0.2"]


def test_mpirun_ranks_get_the_short_cycle(tmp_path):
    cmd = ["mpirun", "-np", "2", "-x", "PATH", "-x", "PYTHONPATH", sys.executable,
           os.path.join(SCRIPTS, "ranks.py"), "--out", str(tmp_path)]
    proc = subprocess.run(cmd, env=_env_without_settings(), cwd=SCRIPTS, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [str(r["cycle"]) for r in load_ranks(str(tmp_path), 2)] == ["0.2", "0.2"]


def test_a_single_process_keeps_horovods_cycle(tmp_path):
    # Nothing to negotiate at size 1: the short cycle would only wake
    # Horovod's background thread (12-20% of a pinned core's step, measured).
    run_workers("ranks.py", ["--out", str(tmp_path)], np_=1, env=_env_without_settings())
    (r,) = load_ranks(str(tmp_path), 1)
    assert int(r["size"]) == 1 and str(r["cycle"]) == "1"


@pytest.mark.parametrize("value", ["5"])
def test_the_users_cycle_wins(tmp_path, value):
    env = dict(_env_without_settings(), HOROVOD_CYCLE_TIME=value)
    run_workers("ranks.py", ["--out", str(tmp_path)], np_=1, env=env)
    (r,) = load_ranks(str(tmp_path), 1)
    assert str(r["cycle"]) == value
