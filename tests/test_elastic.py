"""Elastic training (hvd_keras.elastic) under real `horovodrun` elastic runs with Gloo, and the Horovod limitations it works around.

The jobs run tests/scripts/elastic_train.py: a small MLP, SGD with momentum,
240 samples, global batch 6, a short sleep per step so that the test can
change the hosts mid-training. Hosts are `localhost` and `127.0.0.1` (one
machine, two host names: Horovod blacklists the host of a worker that
dies), over the loopback interface; the discovery script prints a file the
test rewrites. Each job is checked for: exit code 0, every epoch completed
once, equal final weights on all ranks, a per-rank sample ledger in which
no committed sample of an epoch appears twice, and weights equal to one
process replaying the committed global batches (< 1e-5).
"""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import BIN, SCRIPTS, run_workers, worker_env

from hvd_keras import launcher

SAMPLES, BATCH = 240, 6


class ElasticJob:
    """A `horovodrun` elastic job of elastic_train.py whose hosts the test changes."""

    def __init__(self, out, hosts, np_, min_np, max_np, args=(), cooldown=None, script="elastic_train.py"):
        self.out = str(out)
        os.makedirs(self.out, exist_ok=True)
        self.hosts_file = os.path.join(self.out, "hosts")
        self.set_hosts(hosts)
        discovery = os.path.join(self.out, "discover.sh")
        with open(discovery, "w") as f:
            f.write(f"#!/bin/sh\ncat {self.hosts_file}\n")
        os.chmod(discovery, 0o755)
        config = launcher.LaunchConfig(
            script=os.path.join(SCRIPTS, script), script_args=("--out", self.out, *args), np=np_,
            elastic=True, min_np=min_np, max_np=max_np, discovery_script=discovery, network_interface="lo",
            cooldown_range=cooldown)
        cmd = launcher.build_elastic_command(config, python=sys.executable)
        cmd[0] = os.path.join(BIN, "horovodrun")
        env = worker_env(**launcher.elastic_env(config, {}), HOROVOD_ELASTIC_TIMEOUT=120)
        self.log_path = os.path.join(self.out, "job.log")
        self.log = open(self.log_path, "w")
        self.started = time.monotonic()
        # A session of its own: what is left of it is ended by its group id.
        self.proc = subprocess.Popen(cmd, env=env, cwd=SCRIPTS, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def set_hosts(self, hosts):
        tmp = self.hosts_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("".join(f"{host}\n" for host in hosts))
        os.replace(tmp, self.hosts_file)

    def progress(self):
        try:
            with open(os.path.join(self.out, "progress")) as f:
                epoch, step, size, _ = f.read().split()
            return int(epoch), int(step), int(size)
        except (OSError, ValueError):
            return None

    def wait_for(self, what, condition, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            progress = self.progress()
            if progress is not None and condition(*progress):
                return progress
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"timed out waiting for {what}; progress {self.progress()}\n{self.output()[-6000:]}")

    def pid_of(self, rank):
        # The worker processes of this job, by their rank in the last ledger lines.
        for path in glob.glob(os.path.join(self.out, "ledger-*.jsonl")):
            with open(path) as f:
                lines = f.readlines()
            if lines and json.loads(lines[-1])["rank"] == rank:
                pid = int(os.path.basename(path)[len("ledger-"):-len(".jsonl")])
                if _alive(pid):
                    return pid
        raise AssertionError(f"no live process of rank {rank}")

    def finish(self, timeout=240):
        try:
            self.proc.wait(timeout=max(1, timeout - (time.monotonic() - self.started)))
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"the job did not finish in {timeout} s\n{self.output()[-6000:]}")
        self.log.close()
        return self.proc.returncode, self.output()

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()

    def output(self):
        with open(self.log_path) as f:
            return f.read()


def _alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def check_job(out, returncode, output, epochs, mode="global", warmup=None):
    """The checks every elastic job must pass; returns rank 0's final record."""
    assert returncode == 0, output[-8000:]
    finals = sorted(glob.glob(os.path.join(out, "final-*.npz")))
    records = [dict(np.load(path)) for path in finals]
    size = int(records[0]["size"])
    assert len(records) == size and output.count("ELASTIC DONE") == size, output[-4000:]
    # Every rank ends with the same weights.
    for record in records[1:]:
        assert np.array_equal(record["weights"], records[0]["weights"])
    final = dict(np.load(os.path.join(out, "final-0.npz")))
    ledger = final["ledger"].tolist()
    # Every epoch completed once, in order (Horovod's #2844: a wrong epoch after a scale-up).
    assert json.loads(str(final["epochs"])) == list(range(epochs))
    assert len(json.loads(str(final["history"]))["loss"]) == epochs
    committed = {}
    for epoch, start, batch, steps, size_ in ledger:
        for j in range(steps):
            committed[(epoch, start + j * batch)] = (batch, size_)
    # The per-rank sample ledger: each committed step's blocks, from as many
    # ranks as the step had, partition its global batch; no sample of an
    # epoch is committed twice; fewer than `size` samples per epoch are left out.
    blocks = {}
    for path in glob.glob(os.path.join(out, "ledger-*.jsonl")):
        with open(path) as f:
            for line in f:
                entry = json.loads(line)
                key = (entry["epoch"], entry["start"])
                if committed.get(key) == (entry["batch"], entry["size"]):
                    blocks.setdefault(key, {})[entry["rank"]] = entry["ids"]
    assert set(blocks) == set(committed), sorted(set(committed) - set(blocks))[:5]
    seen = {}
    for (epoch, start), by_rank in blocks.items():
        batch, size_ = committed[(epoch, start)]
        assert sorted(by_rank) == list(range(size_))
        ids = [i for r in range(size_) for i in by_rank[r]]
        assert len(ids) == batch
        seen.setdefault(epoch, []).extend(ids)
    for epoch in range(epochs):
        assert len(seen[epoch]) == len(set(seen[epoch])), f"a sample of epoch {epoch} was committed twice"
        assert SAMPLES - len(seen[epoch]) < 3, f"epoch {epoch} left out {SAMPLES - len(seen[epoch])} samples"
    # One process replaying the committed global batches ends with the same weights.
    args = ["--out", out, "--mode", mode] + (["--warmup-epochs", str(warmup)] if warmup else [])
    run_workers("elastic_replay.py", args, np_=1, timeout=180)
    replay = dict(np.load(os.path.join(out, "replay.npz")))
    assert np.abs(replay["weights"] - final["weights"]).max() < 1e-5
    # Exact metrics across resets: each epoch's loss and accuracy are those of all its committed samples.
    history = json.loads(str(final["history"]))
    np.testing.assert_allclose(history["loss"], replay["epoch_loss"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(history["accuracy"], replay["epoch_accuracy"], atol=1e-6)
    assert abs(float(final["learning_rate"]) - float(replay["learning_rate"])) < 1e-7
    # Checkpoint wrote one checkpoint per epoch, named by the committed step counter.
    names = sorted(os.listdir(os.path.join(out, "ckpt")))
    assert names[-1] == f"ckpt-{sum(steps for *_, steps, _ in ledger):010d}"
    return final


def recoveries(final):
    return json.loads(str(final["recoveries"]))


def test_scale_up_two_to_three_then_down_to_one(tmp_path):
    out = str(tmp_path)
    job = ElasticJob(out, ["localhost:2"], np_=2, min_np=1, max_np=3,
                     args=["--epochs", "3", "--warmup-epochs", "1"])
    try:
        job.wait_for("10 committed steps on 2 ranks", lambda e, step, size: step >= 10 and size == 2)
        job.set_hosts(["localhost:2", "127.0.0.1:1"])
        job.wait_for("training on 3 ranks", lambda e, step, size: size == 3, timeout=150)
        job.wait_for("10 more steps on 3 ranks", lambda e, step, size: size == 3 and step >= 60)
        job.set_hosts(["localhost:1"])
        job.wait_for("training on 1 rank", lambda e, step, size: size == 1, timeout=150)
        returncode, output = job.finish()
    finally:
        job.stop()
    final = check_job(out, returncode, output, epochs=3, warmup=1)
    sizes = [size for *_, steps, size in final["ledger"].tolist() for _ in range(steps)]
    assert sizes[0] == 2 and 3 in sizes and sizes[-1] == 1
    assert [r["size"] for r in recoveries(final)] == [3, 1]


def test_kill_a_worker_and_its_host_comes_back_after_the_cooldown(tmp_path):
    # batch_mode="per_rank": each rank keeps 3 samples per step, the global
    # batch and the learning rate follow the size (momentum rescaled with it).
    out = str(tmp_path)
    job = ElasticJob(out, ["localhost:1", "127.0.0.1:1"], np_=2, min_np=1, max_np=2,
                     args=["--epochs", "3", "--mode", "per_rank", "--batch", "3"], cooldown=(1, 3))
    try:
        job.wait_for("10 committed steps on 2 ranks", lambda e, step, size: step >= 10 and size == 2)
        victim = job.pid_of(1)
        os.kill(victim, signal.SIGKILL)
        killed_at = time.time()
        job.wait_for("training on 1 rank", lambda e, step, size: size == 1, timeout=90)
        job.wait_for("the host back after its cooldown", lambda e, step, size: size == 2, timeout=150)
        returncode, output = job.finish()
    finally:
        job.stop()
    final = check_job(out, returncode, output, epochs=3, mode="per_rank")
    sizes = [size for *_, steps, size in final["ledger"].tolist() for _ in range(steps)]
    assert sizes[0] == 2 and 1 in sizes and sizes[-1] == 2
    failure, back = recoveries(final)
    assert failure["reason"] == "a failed collective" and failure["size"] == 1
    assert back["reason"] == "a change of hosts" and back["size"] == 2
    # From the kill to the first step trained without the victim.
    recovery = failure["time"] - killed_at
    print(f"recovery after kill -9 of rank 1: {recovery:.1f} s (reset to first step {failure['seconds']:.1f} s); "
          f"host back: {back['seconds']:.1f} s")
    assert 0 < recovery < 60 and back["seconds"] < 60
    # The rate followed the size: 0.05 per process, times 2 ranks at the end.
    assert abs(float(final["learning_rate"]) - 0.1) < 1e-6


def test_rank_zero_killed_inside_a_commit(tmp_path):
    # Rank 0 SIGKILLs itself inside the commit of step 20, before the
    # commit's allreduce: the survivor fails in that allreduce, rolls back to
    # the commit of step 15, becomes rank 0 and trains on alone.
    out = str(tmp_path)
    job = ElasticJob(out, ["localhost:1", "127.0.0.1:1"], np_=2, min_np=1, max_np=2,
                     args=["--epochs", "2", "--kill-in-commit", "20"])
    try:
        returncode, output = job.finish()
    finally:
        job.stop()
    assert os.path.exists(os.path.join(out, "killed-in-commit")), output[-4000:]
    final = check_job(out, returncode, output, epochs=2)
    with open(os.path.join(out, "killed-in-commit")) as f:
        killed_at = float(f.read())
    (failure,) = recoveries(final)
    assert failure["reason"] == "a failed collective" and failure["size"] == 1
    assert failure["offset"] == 15 * BATCH  # rolled back to the last complete commit
    recovery = failure["time"] - killed_at
    print(f"recovery after rank 0 died inside a commit: {recovery:.1f} s")
    assert 0 < recovery < 60
    ledger = final["ledger"].tolist()
    assert ledger[0] == [0, 0, BATCH, 15, 2] and ledger[1][4] == 1  # steps 16 to 20 trained again, on one rank


def test_auto_fit_started_elastically_grows_from_one_to_two(tmp_path):
    # A plain Keras script with `import hvd_keras.auto`: its fit becomes
    # hvd_keras.elastic.fit (per-rank batch 3, the rate scaled with the size).
    out = str(tmp_path)
    job = ElasticJob(out, ["localhost:1"], np_=1, min_np=1, max_np=2, script="elastic_auto.py")
    try:
        job.wait_for("training on 1 rank", lambda epoch, batch, size: size == 1 and batch >= 5)
        job.set_hosts(["localhost:1", "127.0.0.1:1"])
        job.wait_for("training on 2 ranks", lambda epoch, batch, size: size == 2, timeout=120)
        returncode, output = job.finish()
    finally:
        job.stop()
    assert returncode == 0, output[-6000:]
    records = [dict(np.load(os.path.join(out, f"final-{r}.npz"))) for r in range(2)]
    assert np.array_equal(records[0]["weights"], records[1]["weights"])
    assert json.loads(str(records[0]["epochs"])) == [0, 1, 2]
    assert abs(float(records[0]["learning_rate"]) - 0.1) < 1e-6  # 0.05 per process, 2 ranks at the end
