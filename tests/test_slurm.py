"""Launching under a real single-node Slurm cluster (slurmctld, slurmd, munge)."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, load_ranks
from slurm_cluster import SlurmCluster

from hvd_keras import checkpoint, launcher

PYTHON = sys.executable


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    c.start()
    yield c
    c.stop()


def _sbatch(cluster, template, out_file, script, *args):
    env = dict(cluster.env, HVD_KERAS_PYTHON=PYTHON, HVD_KERAS_SCRIPT=script, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(["sbatch", "--parsable", f"--output={out_file}", f"launch/{template}", *args],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.strip().split(";")[0])


def _wait_for(path, timeout=120):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.2)


def test_single_node_template_trains_the_example(cluster, tmp_path):
    out = tmp_path / "job.out"
    job = _sbatch(cluster, "single_node.sbatch", out, "examples/train_digits.py", "--epochs", "3",
                  "--output", str(tmp_path / "run"))
    assert cluster.wait(job) == "COMPLETED", out.read_text()[-3000:]
    text = out.read_text()
    assert text.count("training on 2 ranks") == 1  # rank 0 alone prints
    accuracy = float(re.search(r"held-out accuracy: ([0-9.]+)", text).group(1))
    assert accuracy > 0.5
    assert checkpoint.latest_checkpoint(str(tmp_path / "run" / "checkpoints")) is not None


def test_hvd_keras_run_inside_salloc_launches_two_ranks(cluster, tmp_path):
    cmd = ["salloc", "-n", "2", os.path.join(os.path.dirname(PYTHON), "hvd-keras"), "run", "--gloo",
           "tests/scripts/ranks.py", "--out", str(tmp_path)]
    env = dict(cluster.env, PATH=os.path.dirname(PYTHON) + os.pathsep + cluster.env["PATH"])
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = load_ranks(str(tmp_path), 2)
    assert [int(r["my_rank"]) for r in ranks] == [0, 1] and all(int(r["size"]) == 2 for r in ranks)


@pytest.mark.parametrize("tasks,cycle", [(2, "0.2"), (1, "1")])
def test_srun_pmix_tasks_get_the_cycle_of_their_job_size(cluster, tmp_path, tasks, cycle):
    # srun --mpi=pmix starts the ranks without mpirun or horovodrun: init()
    # reads the job size from Slurm's step variables (PMIx exports none).
    env = dict(cluster.env, PYTHONPATH=os.path.join(ROOT, "tests", "scripts") + os.pathsep + ROOT,
               TF_CPP_MIN_LOG_LEVEL="3")
    for key in launcher.recommended_env(gpus=False):
        env.pop(key, None)
    cmd = ["srun", "-n", str(tasks), "--mpi=pmix", "--kill-on-bad-exit=1", PYTHON, "tests/scripts/ranks.py",
           "--out", str(tmp_path)]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = load_ranks(str(tmp_path), tasks)
    assert [int(r["size"]) for r in ranks] == [tasks] * tasks
    assert [str(r["cycle"]) for r in ranks] == [cycle] * tasks
    assert [str(r["launcher_ranks"]) for r in ranks] == [str(r["horovod_ranks"]) for r in ranks]


def test_usr1_checkpoints_requeues_and_resumes(cluster, tmp_path):
    out = tmp_path / "job.out"
    job = _sbatch(cluster, "requeue.sbatch", out, "tests/scripts/preempt.py", "--out", str(tmp_path),
                  "--epochs", "12")
    _wait_for(tmp_path / "pid1")
    time.sleep(0.5)
    # What --signal=B:USR1@120 does before the time limit: USR1 to the batch shell.
    subprocess.run(["scancel", "--batch", "--signal=USR1", str(job)], env=cluster.env, check=True, timeout=30)
    # The job checkpoints, exits 75, requeues itself, resumes and completes.
    deadline = time.monotonic() + 200
    while "COMPLETED from initial_epoch" not in (out.read_text() if out.exists() else ""):
        assert time.monotonic() < deadline, out.read_text()[-3000:] + cluster.logs()
        time.sleep(1)
    text = out.read_text()
    assert "preempted; checkpoint written" in text and "requeueing" in text
    resumed_from = int(re.search(r"COMPLETED from initial_epoch (\d+)", text).group(1))
    assert resumed_from >= 0 and "run 1 of job" in text
    assert cluster.wait(job) == "COMPLETED"
    # The second run resumed from the preemption checkpoint (inside an epoch, so
    # maybe still epoch 0); later saves may have pruned that checkpoint since.
    assert re.search(r"hvd_keras: resumed from \S+ \(epoch \d+", text), text[-3000:]


def test_killed_task_fails_the_job_promptly_naming_it(cluster, tmp_path):
    out = tmp_path / "job.out"
    job = _sbatch(cluster, "single_node.sbatch", out, "tests/scripts/preempt.py", "--out", str(tmp_path))
    _wait_for(tmp_path / "pid1")
    os.kill(int((tmp_path / "pid1").read_text()), signal.SIGKILL)
    killed = time.monotonic()
    state = cluster.wait(job, timeout=90)
    assert time.monotonic() - killed < 60
    assert state == "FAILED"
    assert re.search(r"task 1: Killed", out.read_text()), out.read_text()[-2000:]
