"""Checkpoints: resume equals an uninterrupted run, preemption, atomicity, rank 0 only."""

import os
import random
import re
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from conftest import SCRIPTS, load_ranks, run_workers, worker_env

import hvd_keras
from hvd_keras import checkpoint


def test_interrupted_and_resumed_run_matches_uninterrupted(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    run_workers("checkpoint_resume.py", ["--work", str(full), "--out", str(full / "res"), "--epochs", "4"])
    run_workers("checkpoint_resume.py", ["--work", str(part), "--out", str(part / "res1"), "--epochs", "2"])
    run_workers("checkpoint_resume.py", ["--work", str(part), "--out", str(part / "res2"), "--epochs", "4",
                                         "--resume", "yes"])
    f0, f1 = load_ranks(str(full / "res"), 2)
    p0, p1 = load_ranks(str(part / "res2"), 2)
    assert int(p0["initial_epoch"]) == int(p1["initial_epoch"]) == 2
    assert np.abs(p0["weights"] - f0["weights"]).max() < 1e-6
    np.testing.assert_array_equal(p0["weights"], p1["weights"])
    # Only rank 0 wrote: rank 1's working directory is empty.
    for work in (full, part):
        assert sorted(os.listdir(work / "rank0")) == ["best.keras", "log.csv"]
        assert os.listdir(work / "rank1") == []
    # keep_last=2 plus the best one; each loads with plain Keras, no hvd_keras.
    found = checkpoint.list_checkpoints(str(full / "ckpt"))
    assert 2 <= len(found) <= 3
    assert os.path.exists(full / "ckpt" / "best.json")
    meta = checkpoint.read_meta(found[-1])
    assert meta["initial_epoch"] == 4 and meta["global_step"] == 16
    assert set(meta["versions"]) == {"hvd_keras", "tensorflow", "keras", "horovod"}
    code = f"import keras; m = keras.saving.load_model({found[-1] + '/model.keras'!r}); print(int(m.optimizer.iterations.numpy()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=worker_env())
    assert out.stdout.strip().endswith("16"), out.stderr[-2000:]


def test_resume_without_checkpoint_changes_nothing(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    before = [w.copy() for w in model.get_weights()]
    assert hvd_keras.resume(model, str(tmp_path / "nothing")) == 0
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_sigterm_to_one_rank_checkpoints_and_exits_all(tmp_path, controller):
    out = tmp_path
    script = os.path.join(SCRIPTS, "preempt.py")
    cmd = [os.path.join(os.path.dirname(sys.executable), "horovodrun"), "-np", "2", f"--{controller}",
           sys.executable, script, "--out", str(out)]
    proc = subprocess.Popen(cmd, env=worker_env(), cwd=SCRIPTS, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not (out / "pid1").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.2)
    time.sleep(random.uniform(0.1, 0.5))
    os.kill(int((out / "pid1").read_text()), signal.SIGTERM)
    signalled = time.monotonic()
    output, _ = proc.communicate(timeout=60)
    assert time.monotonic() - signalled < 30
    assert "preempted; checkpoint written" in output
    # horovodrun (gloo) and mpirun each report the ranks' exit code their own way.
    assert re.search(r"(status code|Exit code:)\s+75", output), output[-3000:]
    latest = checkpoint.latest_checkpoint(str(out / "ckpt"))
    meta = checkpoint.read_meta(latest)
    assert meta["preempted"] is True
    assert (out / "ended0").exists() and (out / "ended1").exists()  # later callbacks ended too
    # The same command again resumes and completes.
    for f in ("pid0", "pid1"):
        os.remove(out / f)
    again = run_workers("preempt.py", ["--out", str(out), "--epochs", str(meta["initial_epoch"] + 1)],
                        controller=controller)
    assert f"COMPLETED from initial_epoch {meta['initial_epoch']}" in again.stdout


def test_kill_during_save_always_leaves_a_loadable_checkpoint(tmp_path):
    directory = str(tmp_path / "ckpt")
    rng = random.Random(0)
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, os.path.join(SCRIPTS, "save_forever.py"), "--dir", directory],
                                env=worker_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert proc.stdout.readline().strip() == "saving"
        time.sleep(rng.uniform(0.3, 2.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        latest = checkpoint.latest_checkpoint(directory)
        if latest is None:
            continue
        model = keras.saving.load_model(os.path.join(latest, "model.keras"))
        assert model.count_params() > 0
        assert checkpoint.read_meta(latest)["global_step"] >= 1
    assert len(checkpoint.list_checkpoints(directory)) >= 3
    checkpoint.remove_stale_temporaries(directory)
    assert not [n for n in os.listdir(directory) if n.startswith(".tmp-")]


def test_plot_history_writes_a_png(tmp_path):
    history = {"loss": [1.0, 0.6, 0.4], "val_loss": [1.1, 0.8, 0.7], "accuracy": [0.5, 0.7, 0.8],
               "val_accuracy": [0.45, 0.6, 0.7]}
    path = hvd_keras.plot_history(history, str(tmp_path / "h.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(path) > 10_000


def test_resume_passes_over_damaged_checkpoints_to_the_newest_intact_one(tmp_path, capsys):
    directory = str(tmp_path / "ckpt")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.ones((8, 3), "float32"), np.zeros((8, 2), "float32")
    saved = []
    for epoch in range(3):
        model.fit(x, y, epochs=1, verbose=0)
        checkpoint.save_checkpoint(model, directory, initial_epoch=epoch + 1, global_step=epoch + 1)
        saved.append([w.copy() for w in model.get_weights()])
    first, second, newest = checkpoint.list_checkpoints(directory)
    assert checkpoint.damage(newest) is None
    with open(os.path.join(newest, "model.keras"), "r+b") as f:
        f.truncate(100)  # as a failed copy or a full disk leaves it
    with open(os.path.join(second, "model.keras"), "r+b") as f:  # a bad sector: same size, one byte off
        f.seek(os.path.getsize(os.path.join(second, "model.keras")) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    fresh = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    fresh.compile(optimizer="sgd", loss="mse")
    assert hvd_keras.resume(fresh, directory) == 1
    for a, b in zip(fresh.get_weights(), saved[0]):
        np.testing.assert_array_equal(a, b)
    out = capsys.readouterr().out
    assert "ckpt-0000000003 is damaged (model.keras has 100 bytes" in out
    assert "ckpt-0000000002 is damaged (model.keras does not match the checksum" in out
    assert "resumed from" in out and "ckpt-0000000001" in out


def test_unwritable_directory_stops_every_rank_before_the_first_step():
    started = time.monotonic()
    proc = run_workers("ckpt_unwritable.py", check=False, timeout=120)
    assert proc.returncode != 0 and time.monotonic() - started < 60
    output = proc.stdout + proc.stderr
    assert "trained a step" not in output
    for r in (0, 1):
        line = f"[{r}]<stderr>:OSError: hvd_keras: Checkpoint cannot write to '/proc/hvd_keras_no_such_dir'"
        assert line in output, output[-3000:]


def test_a_full_disk_ends_every_rank_and_keeps_the_previous_checkpoint(tmp_path):
    fs = tmp_path / "fs"
    fs.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(fs)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        directory = str(fs / "ckpt")
        started = time.monotonic()
        proc = run_workers("ckpt_disk_full.py", ["--dir", directory], check=False, timeout=120)
        assert proc.returncode != 0 and time.monotonic() - started < 60
        output = proc.stdout + proc.stderr
        assert "finished fit" not in output and "ended epoch 1" not in output
        for r in (0, 1):
            line = (f"[{r}]<stderr>:OSError: hvd_keras: Checkpoint could not save "
                    f"'{directory}/ckpt-0000000008' on rank 0: No space left on device (errno 28)")
            assert line in output, output[-3000:]
        os.remove(fs / "filler")
        assert [os.path.basename(p) for p in checkpoint.list_checkpoints(directory)] == ["ckpt-0000000004"]
        assert checkpoint.damage(checkpoint.latest_checkpoint(directory)) is None
        assert not [n for n in os.listdir(directory) if n.startswith(".tmp-")]
        keras.saving.load_model(os.path.join(checkpoint.latest_checkpoint(directory), "model.keras"))
    finally:
        subprocess.run(["umount", str(fs)], check=False)
