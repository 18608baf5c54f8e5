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

    def pid_of(self, rank, timeout=30):
        # The live worker whose last committed step it trained as `rank` (its ledger file).
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for path in glob.glob(os.path.join(self.out, "ledger-*.jsonl")):
                with open(path) as f:
                    lines = f.readlines()
                if lines and json.loads(lines[-1])["rank"] == rank:
                    pid = int(os.path.basename(path)[len("ledger-"):-len(".jsonl")])
                    if _alive(pid):
                        return pid
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"no live process of rank {rank}\n{self.output()[-4000:]}")

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


def test_new_hosts_heard_in_the_last_step_of_an_epoch_are_taken_in_the_next(tmp_path):
    # Rank 0 hears of a third slot after the epoch's last step carried its flags: the request must ride in the
    # next epoch's first step (the callbacks of the next fit clear the requests), not be lost.
    out = str(tmp_path)
    job = ElasticJob(out, ["localhost:1", "127.0.0.1:1"], np_=2, min_np=1, max_np=3,
                     args=["--epochs", "2", "--pace", "0.02", "--hosts-at-epoch-end", "localhost:2,127.0.0.1:1"])
    try:
        returncode, output = job.finish()
    finally:
        job.stop()
    assert os.path.exists(os.path.join(out, "hosts-changed")), output[-4000:]
    final = check_job(out, returncode, output, epochs=2)
    (grown,) = recoveries(final)
    assert grown["reason"] == "a change of hosts" and grown["size"] == 3
    assert grown["epoch"] == 1 and grown["offset"] <= 2 * BATCH  # within the first steps of the second epoch


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



def test_preemption_after_a_reset_stops_every_rank_after_the_same_step(tmp_path):
    # After a resize (a reset: new ranks, the train function traced again),
    # SIGTERM to one rank still rides in the step's allreduce: every rank
    # stops after the same step, rank 0 checkpoints, every process exits 75.
    out = str(tmp_path)
    job = ElasticJob(out, ["localhost:1"], np_=1, min_np=1, max_np=2, args=["--epochs", "50"])
    try:
        job.wait_for("training on 1 rank", lambda e, step, size: size == 1 and step >= 5)
        job.set_hosts(["localhost:1", "127.0.0.1:1"])
        job.wait_for("training on 2 ranks", lambda e, step, size: size == 2, timeout=120)
        os.kill(job.pid_of(1), signal.SIGTERM)
        returncode, output = job.finish(timeout=180)
    finally:
        job.stop()
    # horovodrun reports the job's end as a failure: every worker exited 75 (run the command again to resume).
    assert returncode != 0
    assert output.count("exit with status code 75") == 2, output[-4000:]
    assert output.count("hvd_keras: preempted; checkpoint written") == 1
    from hvd_keras import checkpoint

    meta = checkpoint.read_meta(checkpoint.latest_checkpoint(os.path.join(out, "ckpt")))
    assert meta["preempted"] is True and meta["step_in_epoch"] > 0

# --- Horovod 0.28.1's elastic layer on Keras 3: what breaks, and hvd_keras's replacement --------------------------

# What a survivor's step raised when its peer was killed (horovodrun elastic, Gloo; the paths shortened).
GROUPED_ALLREDUCE_FAILURE = (
    "Graph execution error:\n\nDetected at node HorovodGroupedAllreduce_x_0_ones_0 defined at (most recent call "
    "last):\n  File \"train.py\", line 13, in <module>\n\n  File \"horovod/tensorflow/mpi_ops.py\", line 176, in "
    "_grouped_allreduce\n\nHorovod has been shut down. This was caused by an exception on one of the ranks or an "
    "attempt to allreduce, allgather or broadcast a tensor after one of the ranks finished execution.")
BROADCAST_FAILURE = ("{{function_node __wrapped__HorovodBroadcast_device_/job:localhost/replica:0/task:0/device:CPU:0}}"
                     " Horovod has been shut down. [Op:HorovodBroadcast] name: int.sz")


def _compiled_model():
    import keras

    import hvd_keras

    hvd_keras.init()
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(optimizer=hvd_keras.DistributedOptimizer(keras.optimizers.SGD(0.1, momentum=0.9)), loss="mse")
    return model


def test_horovods_keras_state_fails_on_keras_3_and_keras_state_commits_and_restores():
    import horovod.tensorflow as hvd

    import hvd_keras.elastic as elastic

    model = _compiled_model()
    model.optimizer.build(model.trainable_variables)
    with pytest.raises(TypeError, match="not callable"):  # optimizer.variables() on a Keras 3 list
        hvd.elastic.TensorFlowKerasState(model, model.optimizer)
    state = elastic.KerasState(model, seed=5, note="kept")
    variables = list(model.variables) + list(model.optimizer.variables)
    x, y = np.ones((8, 4), "float32"), np.zeros((8, 3), "float32")

    def values():
        return [np.array(v.numpy()) for v in variables]

    start = values()
    model.train_on_batch(x, y)
    assert any(not np.array_equal(a, b) for a, b in zip(start, values()))  # weights, momentum, iteration, ...
    state.restore()
    assert all(np.array_equal(a, b) for a, b in zip(start, values()))
    model.train_on_batch(x, y)
    state.epoch, state.offset, state.note = 1, 48, "changed"
    state.commit()
    committed = values()
    model.train_on_batch(x, y)
    state.epoch, state.note = 7, "lost"
    state.restore()
    assert all(np.array_equal(a, b) for a, b in zip(committed, values()))
    assert (state.epoch, state.offset, state.note, state.seed) == (1, 48, "changed", 5)
    assert len(state.commit_seconds) == 1


def test_horovods_error_mapping_swallows_the_grouped_allreduce_failure_and_hvd_keras_raises_it():
    import horovod.tensorflow as hvd
    import tensorflow as tf
    from horovod.common.elastic import ObjectState

    import hvd_keras.elastic as elastic

    failure = tf.errors.UnknownError(None, None, GROUPED_ALLREDUCE_FAILURE)
    calls = []

    def train(state):
        calls.append(state)
        raise failure

    state = ObjectState(bcast_object=lambda obj: obj, get_rank=lambda: 0)
    # Horovod's wrapper knows HorovodAllreduce/Allgather/Broadcast only: it
    # returns None, so a survivor would leave training and exit 0.
    assert hvd.elastic.run(train)(state) is None and len(calls) == 1
    for message in (GROUPED_ALLREDUCE_FAILURE, BROADCAST_FAILURE, "[Op:HorovodAllgather] peer closed"):
        error = tf.errors.UnknownError(None, None, message)
        assert isinstance(elastic.classify(error), elastic.HorovodInternalError)
        with pytest.raises(elastic.HorovodInternalError):
            with elastic.collective_failures():
                raise error
    # Anything else is raised as it is, never swallowed: a user's own error,
    # and a collective refused for a user error (it would fail again after a reset).
    other = tf.errors.UnknownError(None, None, "error in a py_function")
    mismatch = tf.errors.InvalidArgumentError(None, None, "Mismatched HorovodAllreduce tensor shapes")
    assert elastic.classify(other) is None and elastic.classify(mismatch) is None
    assert elastic.classify(ValueError("HorovodAllreduce")) is None

    def fails(state):
        raise other

    with pytest.raises(tf.errors.UnknownError, match="py_function"):
        elastic.run(fails)(ObjectState(bcast_object=lambda obj: obj, get_rank=lambda: 0))


def test_keras_3_has_neither_set_value_nor_lr_and_rescale_moves_rate_and_momentum():
    import keras

    import hvd_keras.elastic as elastic

    model = _compiled_model()
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    # Horovod's elastic Keras example: K.set_value(model.optimizer.lr, lr * hvd.size())
    assert not hasattr(keras.backend, "set_value") and not hasattr(optimizer, "lr")
    for m in optimizer.momentums:
        m.assign(np.ones(m.shape, "float32"))
    elastic.rates.rescale(optimizer, 3 / 2)
    assert elastic.rates.learning_rate(optimizer) == pytest.approx(0.15)
    assert all(np.allclose(m.numpy(), 1.5) for m in optimizer.momentums)
    scheduled = keras.optimizers.SGD(keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.9))
    with pytest.raises(ValueError, match="batch_mode=\"global\""):
        elastic.rates.rescale(scheduled, 2)


def test_keras_3_only_displays_the_steps_horovods_update_batch_state_callback_shortens():
    import keras
    from horovod.common.elastic import ObjectState
    from horovod.tensorflow.keras.elastic import UpdateBatchStateCallback

    # A run resumed after 3 of 5 batches: Horovod shortens params["steps"] to 2.
    state = ObjectState(bcast_object=lambda obj: obj, get_rank=lambda: 0, batch=3, epoch=0)

    class Count(keras.callbacks.Callback):
        batches = 0

        def on_train_batch_end(self, batch, logs=None):
            Count.batches += 1

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    callback = UpdateBatchStateCallback(state)
    model.fit(np.ones((10, 4)), np.ones((10, 1)), batch_size=2, epochs=1, verbose=0, callbacks=[callback, Count()])
    assert callback.steps_per_epoch == 5 and Count.batches == 5  # every batch ran again
    # hvd_keras.elastic reshards the rest of the epoch instead: exactly the samples not yet trained.
    from hvd_keras.elastic import epoch_order, plan_segment

    segment = plan_segment(epoch_order(10, 0, 0), epoch=0, start=6, global_batch=2, size=1, rank=0)
    assert len(segment.steps) == 2 and sorted(segment.ids) == sorted(epoch_order(10, 0, 0)[6:])


def test_elastic_mode_is_gloo_only_and_mpi_is_refused_in_one_line(tmp_path):
    script = tmp_path / "hosts.sh"
    script.write_text("#!/bin/sh\necho localhost:2\n")
    script.chmod(0o755)
    config = launcher.LaunchConfig(script="train.py", elastic=True, min_np=1, max_np=4, discovery_script=str(script),
                                   network_interface="lo", cooldown_range=(10, 300))
    cmd = launcher.build_elastic_command(config, python="python")
    assert cmd == ["horovodrun", "-np", "1", "--min-np", "1", "--max-np", "4", "--host-discovery-script",
                   str(script), "--blacklist-cooldown-range", "10", "300", "--network-interface", "lo", "python",
                   "train.py"]
    env = launcher.elastic_env(config, {})
    assert env["HVD_KERAS_ELASTIC_MAX_NP"] == "4" and "HOROVOD_FUSION_THRESHOLD" not in env
    import dataclasses

    for change, expected in [({"controller": "mpi"}, "Gloo only"), ({"discovery_script": None}, "--discovery-script"),
                             ({"max_np": 0}, "--max-np must be >= --min-np"), ({"np": 8}, "-np must lie between")]:
        with pytest.raises(launcher.LaunchError, match=expected) as e:
            launcher.build_elastic_command(dataclasses.replace(config, **change))
        assert "\n" not in str(e.value) and "HINT:" in str(e.value)


def test_hvd_keras_run_elastic_flags(tmp_path, capsys):
    from hvd_keras import cli

    script = tmp_path / "hosts.sh"
    script.write_text("#!/bin/sh\necho localhost:2\n")
    script.chmod(0o755)
    argv = ["run", "--elastic", "-np", "2", "--min-np", "1", "--max-np", "3", "--discovery-script", str(script),
            "--blacklist-cooldown-range", "5", "60", "--network-interface", "lo", "--dry-run", "train.py", "--epochs",
            "3"]
    assert cli.main(argv) == 0
    line = capsys.readouterr().out.strip()
    assert "HVD_KERAS_ELASTIC_MIN_NP=1 HVD_KERAS_ELASTIC_MAX_NP=3" in line or (
        "HVD_KERAS_ELASTIC_MAX_NP=3" in line and "HVD_KERAS_ELASTIC_MIN_NP=1" in line)
    assert line.endswith(f"horovodrun -np 2 --min-np 1 --max-np 3 --host-discovery-script {script} "
                         f"--blacklist-cooldown-range 5 60 --network-interface lo {sys.executable} train.py --epochs 3")
    assert "HOROVOD_FUSION_THRESHOLD" not in line
    # Refused in one line each: --mpi, elastic flags without --elastic, hosts given as -H.
    for bad, expected in [(["--mpi"], "Gloo only"), (["-H", "localhost:2"], "not -H or --hostfile")]:
        assert cli.main(argv[:1] + bad + argv[1:]) == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and "HINT:" in err and "\n" not in err
    assert cli.main(["run", "-np", "2", "--max-np", "4", "--dry-run", "train.py"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--max-np: for elastic jobs only" in err and "HINT: add --elastic" in err


def test_horovod_skips_the_sync_after_a_removal_and_hvd_keras_always_syncs():
    from horovod.common.elastic import ObjectState
    from horovod.runner.elastic.worker import HostUpdateResult

    import hvd_keras.elastic as elastic

    state = ObjectState(bcast_object=lambda obj: obj, get_rank=lambda: 0)
    state.on_hosts_updated(time.time() + 1, HostUpdateResult.removed)
    with pytest.raises(elastic.HostsUpdatedInterrupt) as e:
        state.commit()
    assert e.value.skip_sync is True  # horovod#3494: the deadlock after a removal
    assert elastic.KerasState.interrupt().skip_sync is False


def test_horovod_crashes_at_a_restart_with_fusion_threshold_and_cycle_time_both_set():
    # Started again under `horovodrun -np 1 --gloo`, as every rank of an elastic job is at a reset.
    common = {"HOROVOD_CYCLE_TIME": "0.2"}
    runs = {}
    for name, extra in {"both": {"HOROVOD_FUSION_THRESHOLD": "134217728"}, "hvd_keras": {}}.items():
        env = worker_env(**common, **extra)
        cmd = [os.path.join(BIN, "horovodrun"), "-np", "1", "--gloo", sys.executable,
               os.path.join(SCRIPTS, "elastic_reinit.py")]
        runs[name] = subprocess.run(cmd, env=env, cwd=SCRIPTS, capture_output=True, text=True, timeout=120)
    assert runs["both"].returncode != 0 and "Exit code: 139" in runs["both"].stdout + runs["both"].stderr
    assert runs["hvd_keras"].returncode == 0 and "RESTARTED size 1" in runs["hvd_keras"].stdout
    # hvd_keras sets only the cycle time in an elastic job, and refuses both when the user sets them.
    assert "HOROVOD_FUSION_THRESHOLD" not in launcher.recommended_env(gpus=False, elastic=True)
    assert "HOROVOD_CYCLE_TIME" in launcher.recommended_env(gpus=False, elastic=True)
    with pytest.raises(launcher.LaunchError, match="segmentation fault"):
        launcher.check_elastic_env({"HOROVOD_FUSION_THRESHOLD": "1", "HOROVOD_CYCLE_TIME": "1"})


def test_each_epoch_is_one_order_cut_into_global_batches_for_the_current_size():
    from hvd_keras.elastic import epoch_order, ledger_batches, plan_segment

    order = epoch_order(100, seed=4, epoch=2)
    assert np.array_equal(order, epoch_order(100, seed=4, epoch=2)) and sorted(order) == list(range(100))
    assert not np.array_equal(order, epoch_order(100, seed=4, epoch=3))
    # 3 ranks from sample 10: 15 global batches of 6, nothing left over.
    segments = [plan_segment(order, 2, 10, 6, 3, r) for r in range(3)]
    assert [s.batch for s in segments[0].steps] == [6] * 15
    assert sorted(np.concatenate([s.ids for s in segments])) == sorted(order[10:])
    # 4 ranks, global batch 8: from sample 0, 12 batches of 8 and a last one of 4 (one sample per rank).
    segment = plan_segment(order, 2, 0, 8, 4, 1)
    assert [s.batch for s in segment.steps] == [8] * 12 + [4] and segment.offset_after(13) == 100
    assert len(segment.ids) == 12 * 2 + 1
    # From sample 3: 12 batches of 8, and the last sample left out (fewer than the 4 ranks).
    segment = plan_segment(order, 2, 3, 8, 4, 1)
    assert [s.batch for s in segment.steps] == [8] * 12 and segment.offset_after(12) == 99
    with pytest.raises(ValueError, match="split evenly over the ranks"):
        plan_segment(order, 2, 0, 6, 4, 0)
    ledger = [[2, 0, 6, 2, 2], [2, 12, 8, 1, 4]]
    assert [ids.tolist() for _, ids in ledger_batches(ledger, 100, 4)] == [
        order[0:6].tolist(), order[6:12].tolist(), order[12:20].tolist()]
