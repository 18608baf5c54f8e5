"""Benchmark: hvd_keras against what users would run instead, side by side in one run.

Two models on synthetic data, the same global batch and the same total
TensorFlow threads for every system (2 intra-op + 2 inter-op: one process with
2 + 2, or two processes with 1 + 1 each, each pinned to its own core), SGD
with momentum, one timed `fit` epoch after a warm-up epoch:

- `mlp`: communication-bound (85k parameters, a few ms per step);
- `cnn`: compute-bound (a small convnet on 32x32x3 images).

Systems: plain Keras in 1 process; hvd_keras on 2 ranks over Gloo and over
MPI; `tf.distribute.MirroredStrategy` over 2 logical CPU devices in one
process; `tf.distribute.MultiWorkerMirroredStrategy` with 2 local workers
(`TF_CONFIG`); Horovod's own `horovod.tensorflow.keras` on `tf_keras` with
`TF_USE_LEGACY_KERAS=1`, over Gloo and over MPI, with Horovod's defaults
(needs the `tf_keras` package matching TensorFlow; `make bench` installs it).
A system that fails is listed with its error line. Every round launches every
system once, the order reversed every other round; samples/s are medians with
min-max, and scaling efficiency is a 2-process system's samples/s over plain
Keras's in the same round.

    .venv/bin/python bench/peers.py [--models mlp,cnn] [--rounds 3] [--systems keras,hvd-gloo,...]
"""

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402

SYSTEMS = ["keras", "hvd-gloo", "hvd-mpi", "mirrored", "multi-worker", "horovod-gloo", "horovod-mpi"]
SETTINGS = {"mlp": {"global_batch": 128, "steps": 400, "warmup": 50},
            "cnn": {"global_batch": 64, "steps": 30, "warmup": 5}}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="mlp,cnn")
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-pin", action="store_true", help="leave the 2-process systems' placement to the kernel")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--model", default="mlp", help=argparse.SUPPRESS)
    return p.parse_args()


# --- worker side -------------------------------------------------------------

def build_model(keras, name):
    keras.utils.set_random_seed(0)
    if name == "mlp":
        return keras.Sequential([keras.Input((64,)), keras.layers.Dense(256, activation="relu"),
                                 keras.layers.Dense(256, activation="relu"), keras.layers.Dense(10)])
    return keras.Sequential([
        keras.Input((32, 32, 3)),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(128, 3, padding="same", activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10),
    ])


def make_data(np, name, samples, rank, size):
    rng = np.random.default_rng(0)
    shape = (64,) if name == "mlp" else (32, 32, 3)
    x = rng.normal(size=(samples, *shape)).astype("float32")
    y = rng.integers(0, 10, size=(samples,)).astype("int32")
    per = samples // size
    return x[rank * per:(rank + 1) * per], y[rank * per:(rank + 1) * per]


def timed_fit(model, x, y, batch, settings, keras, global_batch):
    timer = _harness.epoch_timer(keras)
    warm = settings["warmup"] * batch
    model.fit(x[:warm], y[:warm], batch_size=batch, epochs=1, shuffle=False, verbose=0)
    model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0, callbacks=[timer])
    return settings["steps"] * global_batch / timer.elapsed


def _pin(local_rank):
    if os.environ.get("HVD_KERAS_BENCH_PIN", "1") == "1":
        _harness.pin_to_core(local_rank)


def worker(system, name):
    settings = SETTINGS[name]
    gb, steps = settings["global_batch"], settings["steps"]
    if system.startswith("horovod-"):
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import numpy as np
    import tensorflow as tf

    two_processes = system not in ("keras", "mirrored")
    _harness.set_threads(tf, 1 if two_processes else 2, 1 if two_processes else 2)
    if system in ("hvd-gloo", "hvd-mpi"):
        import keras

        import hvd_keras

        hvd_keras.init()
        _pin(hvd_keras.local_rank())
        x, y = make_data(np, name, steps * gb, hvd_keras.rank(), 2)
        model = build_model(keras, name)
        model.compile(optimizer=hvd_keras.DistributedOptimizer(keras.optimizers.SGD(0.01, momentum=0.9)),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        hvd_keras.broadcast_state(model)
        value = timed_fit(model, x, y, gb // 2, settings, keras, gb)
        if hvd_keras.is_chief():
            _harness.report({"samples_per_sec": value})
        return
    if system.startswith("horovod-"):
        import horovod.tensorflow.keras as hvd
        import tf_keras as keras

        hvd.init()
        _pin(hvd.local_rank())
        x, y = make_data(np, name, steps * gb, hvd.rank(), 2)
        model = build_model(keras, name)
        model.compile(optimizer=hvd.DistributedOptimizer(keras.optimizers.SGD(0.01, momentum=0.9)),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        timer = _harness.epoch_timer(keras)
        warm = settings["warmup"] * gb // 2
        broadcast = hvd.callbacks.BroadcastGlobalVariablesCallback(0)
        model.fit(x[:warm], y[:warm], batch_size=gb // 2, epochs=1, shuffle=False, verbose=0,
                  callbacks=[broadcast])
        model.fit(x, y, batch_size=gb // 2, epochs=1, shuffle=False, verbose=0, callbacks=[timer])
        if hvd.rank() == 0:
            _harness.report({"samples_per_sec": steps * gb / timer.elapsed})
        return
    import keras

    if system == "keras":
        x, y = make_data(np, name, steps * gb, 0, 1)
        model = build_model(keras, name)
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        _harness.report({"samples_per_sec": timed_fit(model, x, y, gb, settings, keras, gb)})
        return
    if system == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        rank, chief = 0, True
        x, y = make_data(np, name, steps * gb, 0, 1)
    else:  # multi-worker: TF_CONFIG set by the launcher
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        rank = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
        chief = rank == 0
        _pin(rank)
        x, y = make_data(np, name, steps * gb, 0, 1)  # each worker feeds the global batch; TF shards it
    with strategy.scope():
        model = build_model(keras, name)
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    value = timed_fit(model, x, y, gb, settings, keras, gb)
    if chief:
        _harness.report({"samples_per_sec": value})


# --- launcher side -----------------------------------------------------------

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _error_line(text):
    # The worker's own exception, not the launcher's "a process exited" that follows it.
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if re.search(r"^(\[\d+\]<stderr>:)?\w*(Error|Exception): ", line)]
    errors = [e for e in errors if "Horovod detected that one or more processes exited" not in e] or errors
    return (errors or lines or ["no output"])[0][:300]


def launch(system, name, pin=True, extra_env=None):
    """Samples/s of one system on one model, or the error line it ended with."""
    script = os.path.abspath(__file__)
    args = [script, "--worker", system, "--model", name]
    env = _harness.worker_env(HVD_KERAS_BENCH_PIN="1" if pin else "0", **(extra_env or {}))
    if system in ("keras", "mirrored"):
        procs = [subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)]
    elif system == "multi-worker":
        ports = [_free_port(), _free_port()]
        cluster = {"worker": [f"localhost:{p}" for p in ports]}
        procs = [subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=dict(env, TF_CONFIG=json.dumps(
                                      {"cluster": cluster, "task": {"type": "worker", "index": i}})))
                 for i in range(2)]
    else:
        controller = "--mpi" if system.endswith("-mpi") else "--gloo"
        horovodrun = os.path.join(os.path.dirname(sys.executable), "horovodrun")
        procs = [subprocess.Popen([horovodrun, "-np", "2", controller, sys.executable, *args], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    outputs = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=900)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            return {"error": "timed out after 900 s"}
        outputs.append((proc.returncode, out, err))
    for code, out, _ in outputs:
        result = _harness.read_result(out)
        if result is not None:
            return result
    text = outputs[0][2] + outputs[0][1]
    if "No module named 'tf_keras'" in text or "Keras cannot be imported" in text:
        return {"error": "needs the tf_keras package matching TensorFlow (pip install tf_keras~=<TF version>)"}
    return {"error": _error_line(text)}


def main(args):
    models = args.models.split(",")
    systems = args.systems.split(",")
    unknown = sorted(set(systems) - set(SYSTEMS)) + sorted(set(models) - set(SETTINGS))
    if unknown:
        sys.exit(f"peers.py: unknown {unknown}. Expected systems from {SYSTEMS} and models from {list(SETTINGS)}.")
    started = time.time()
    print(_harness.machine_line())
    for name in models:
        samples = {s: [] for s in systems}
        errors = {}
        for i in range(args.rounds):
            for system in systems if i % 2 == 0 else systems[::-1]:
                if system in errors:
                    continue
                result = launch(system, name, pin=not args.no_pin)
                if "error" in result:
                    errors[system] = result["error"]
                else:
                    samples[system].append(result["samples_per_sec"])
        s = SETTINGS[name]
        print(f"\n{name}: global batch {s['global_batch']}, {s['steps']} timed steps, {args.rounds} rounds; "
              "samples/s median (min-max); efficiency = samples/s over plain Keras's in the same round")
        print(f"| system | samples/s | vs plain Keras |\n| --- | --- | --- |")
        for system in systems:
            if system in errors:
                print(f"| {system} | failed: {errors[system]} | |")
                continue
            eff = ""
            if "keras" in samples and system != "keras" and samples["keras"]:
                eff = _harness.fmt(_harness.ratios(samples[system], samples["keras"]), 3)
            print(f"| {system} | {_harness.fmt(samples[system])} | {eff} |")
    print(f"\n({time.time() - started:.0f} s)")


if __name__ == "__main__":
    arguments = parse_args()
    worker(arguments.worker, arguments.model) if arguments.worker else main(arguments)
