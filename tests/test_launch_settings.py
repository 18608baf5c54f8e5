"""The Horovod settings hvd_keras.init() leaves on every rank, under real launchers."""

import os
import subprocess
import sys

from conftest import SCRIPTS, load_ranks, run_workers, worker_env

from hvd_keras import launcher


def _env_without_settings():
    # The job must start from the user's environment, not from what an earlier
    # in-process init() of this test session left in os.environ.
    env = worker_env()
    for key in launcher.recommended_env(gpus=False):
        env.pop(key, None)
    return env


def test_ranks_of_a_launch_get_the_short_cycle_and_idle_horovod_threads(tmp_path, controller):
    run_workers("ranks.py", ["--out", str(tmp_path)], controller=controller, env=_env_without_settings())
    ranks = load_ranks(str(tmp_path), 2)
    assert [int(r["size"]) for r in ranks] == [2, 2]
    assert [str(r["cycle"]) for r in ranks] == ["0.2", "0.2"]
    # The local rank a GPU is pinned with before Horovod starts is Horovod's own.
    assert [str(r["launcher_ranks"]) for r in ranks] == [str(r["horovod_ranks"]) for r in ranks] == [
        "(0, 0, 2)", "(1, 1, 2)"]
    for r in ranks:
        # Horovod's threads (its background thread, Gloo's loop or MPI's) are
        # SCHED_IDLE; the rank's own (main, TensorFlow's pools) are not.
        assert 1 <= int(r["idle_threads"]) < int(r["threads"]) and not bool(r["main_thread_idle"]), r
        assert not [n for n in str(r["idle_names"]).split(",") if n.startswith("tf_")], r


def test_normal_policy_leaves_every_thread_alone(tmp_path):
    env = dict(_env_without_settings(), HVD_KERAS_HOROVOD_THREADS="normal")
    run_workers("ranks.py", ["--out", str(tmp_path)], env=env)
    assert [int(r["idle_threads"]) for r in load_ranks(str(tmp_path), 2)] == [0, 0]


def test_a_bad_policy_is_one_line_before_horovod_starts(tmp_path):
    env = dict(_env_without_settings(), HVD_KERAS_HOROVOD_THREADS="low")
    proc = run_workers("ranks.py", ["--out", str(tmp_path)], np_=1, env=env, check=False)
    assert proc.returncode != 0
    assert "ValueError: HVD_KERAS_HOROVOD_THREADS must be one of idle, normal. Received: " \
           "HVD_KERAS_HOROVOD_THREADS='low'. HINT: unset it" in proc.stderr


def test_a_rank_computing_alone_outlasts_gloos_timeout(tmp_path):
    # SCHED_IDLE is a small share, not none: rank 0's Horovod threads keep
    # answering the negotiation while its compute holds their core for 3x
    # Gloo's timeout, so rank 1 waits instead of failing.
    env = dict(_env_without_settings(), HOROVOD_GLOO_TIMEOUT_SECONDS="3")
    run_workers("lone_compute.py", ["--out", str(tmp_path), "--seconds", "9"], env=env, timeout=180)
    r0, r1 = load_ranks(str(tmp_path), 2)
    assert float(r0["total"]) == float(r1["total"]) == 3.0
    assert float(r1["waited"]) > 8 and float(r0["waited"]) < 3


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


def test_the_users_cycle_wins(tmp_path):
    env = dict(_env_without_settings(), HOROVOD_CYCLE_TIME="5")
    run_workers("ranks.py", ["--out", str(tmp_path)], np_=1, env=env)
    (r,) = load_ranks(str(tmp_path), 1)
    assert str(r["cycle"]) == "5"
