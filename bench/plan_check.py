"""Benchmark: the scaling planner's predicted 2-rank efficiency against the measured one, on this machine.

For each controller (Gloo, MPI): the link is measured as users measure it
(`measure_allreduce` on 2 ranks, fitted); for each model, one process
profiles it with `hvd_keras.planner.profile` and times `fit` at the per-rank
batch, then 2 ranks time the same `fit` per rank. Every process runs one
TensorFlow thread pinned to its own core, so one rank of the 2-rank job has
what the single process had. Measured efficiency = 1-process step time /
2-rank step time (per-rank batch fixed); predicted = the planner's at 2 ranks.

Models, communication-bound to compute-bound: `mlp` (85k weights, ms steps),
`wide` (a 2-layer MLP of 1M weights), `cnn` (a small convnet, ~100 ms steps).
Each round measures the link, the 1-process profile and the 2-rank run anew
(separate launches); the table has the medians over the rounds of compute,
link, predicted and measured efficiency. A launch's speed varies by up to
30% on a shared 2-core machine: take 5 rounds or more.

    .venv/bin/python bench/plan_check.py [--rounds 5] [--controllers gloo,mpi] [--models mlp,wide,cnn]
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402

BATCH = {"mlp": 64, "wide": 64, "cnn": 32}
STEPS = {"mlp": 300, "wide": 100, "cnn": 30}
SKIP = 3  # steps at the start of each epoch that fill the input pipeline, left out of the timing


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--controllers", default="gloo,mpi")
    p.add_argument("--models", default="mlp,wide,cnn")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--model", default="mlp", help=argparse.SUPPRESS)
    return p.parse_args()


def build(keras, name):
    keras.utils.set_random_seed(0)
    if name == "mlp":
        layers = [keras.Input((64,)), keras.layers.Dense(256, activation="relu"),
                  keras.layers.Dense(256, activation="relu"), keras.layers.Dense(10)]
    elif name == "wide":
        layers = [keras.Input((512,)), keras.layers.Dense(1024, activation="relu"),
                  keras.layers.Dense(512, activation="relu"), keras.layers.Dense(10)]
    else:
        layers = [keras.Input((32, 32, 3)), keras.layers.Conv2D(64, 3, activation="relu"),
                  keras.layers.Conv2D(64, 3, activation="relu"), keras.layers.MaxPooling2D(),
                  keras.layers.Conv2D(128, 3, activation="relu"), keras.layers.GlobalAveragePooling2D(),
                  keras.layers.Dense(10)]
    return keras.Sequential(layers)


def worker(kind, name):
    import keras
    import numpy as np
    import tensorflow as tf

    import hvd_keras

    _harness.set_threads(tf, 1, 1)
    hvd_keras.init()
    _harness.pin_to_core(hvd_keras.local_rank())
    if kind == "link":
        n, points = hvd_keras.planner.measure_allreduce(
            sizes_bytes=(4 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20), repeats=20)
        if hvd_keras.is_chief():
            link = hvd_keras.planner.Link.fit(points, n)
            _harness.report({"latency": link.latency, "bandwidth": link.bandwidth})
        return
    batch, steps = BATCH[name], STEPS[name]
    shape = (32, 32, 3) if name == "cnn" else ((512,) if name == "wide" else (64,))
    rng = np.random.default_rng(hvd_keras.rank())
    x = rng.normal(size=(steps * batch, *shape)).astype("float32")
    y = rng.integers(0, 10, size=(steps * batch,)).astype("int32")
    model = build(keras, name)
    model.compile(optimizer=hvd_keras.DistributedOptimizer(keras.optimizers.SGD(0.01, momentum=0.9)),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    hvd_keras.broadcast_state(model)
    result = {}
    if kind == "profile":
        prof = hvd_keras.planner.profile(model, x, y, batch, steps=max(steps // 2, 10))
        result.update(step_seconds=prof.step_seconds, gradient_bytes=prof.gradient_bytes,
                      step_seconds_spread=prof.step_seconds_spread)
    timer = _harness.epoch_timer(keras, skip=SKIP)
    model.fit(x[:3 * batch], y[:3 * batch], batch_size=batch, epochs=1, shuffle=False, verbose=0)
    times = []
    for _ in range(3):
        model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0, callbacks=[timer])
        times.append(timer.elapsed / timer.steps)
    result["fit_step_seconds"] = statistics.median(times)
    if hvd_keras.is_chief():
        _harness.report(result)


def main(args):
    from hvd_keras import planner

    script = os.path.abspath(__file__)
    rows = []
    for controller in args.controllers.split(","):
        for name in args.models.split(","):
            predicted, measured, computes, latencies, bandwidths = [], [], [], [], []
            for _ in range(args.rounds):
                link = _harness.run_ranks(2, script, ["link"], controller=controller)
                link = planner.Link(link["latency"], link["bandwidth"])
                one = _harness.run_ranks(1, script, ["profile", "--model", name])
                two = _harness.run_ranks(2, script, ["measure", "--model", name],
                                         controller=controller)
                prof = planner.Profile(one["step_seconds"], one["gradient_bytes"], BATCH[name],
                                       one["step_seconds_spread"])
                predicted.append(planner.predict_one(prof, link, 2).efficiency)
                measured.append(one["fit_step_seconds"] / two["fit_step_seconds"])
                computes.append(prof.step_seconds)
                latencies.append(link.latency)
                bandwidths.append(link.bandwidth)
                print(f"{controller} {name}: 1 process {one['fit_step_seconds'] * 1e3:.2f} ms (profile "
                      f"{one['step_seconds'] * 1e3:.2f}, spread {one['step_seconds_spread'] * 1e3:.2f}), link "
                      f"{link.latency * 1e6:.0f} us {link.bandwidth * 8 / 1e9:.2f} Gbit/s, "
                      f"2 ranks {two['fit_step_seconds'] * 1e3:.2f} ms, "
                      f"predicted {predicted[-1]:.3f}, measured {measured[-1]:.3f}", flush=True)
                time.sleep(1)
            p, m = statistics.median(predicted), statistics.median(measured)
            link = planner.Link(statistics.median(latencies), statistics.median(bandwidths))
            rows.append((controller, name, one["gradient_bytes"], statistics.median(computes), link, p, m))
    print(f"2 ranks vs 1 process, one TF thread pinned per process, {args.rounds} round(s), medians")
    print("| controller | model | gradients | compute/step | link (latency, bandwidth) | predicted | measured "
          "| relative error |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for controller, name, nbytes, step, link, p, m in rows:
        print(f"| {controller} | {name} | {nbytes / 1e6:.2f} MB | {step * 1e3:.2f} ms | "
              f"{link.latency * 1e6:.0f} us, {link.bandwidth * 8 / 1e9:.2f} Gbit/s | {p:.3f} | {m:.3f} | "
              f"{(p - m) / m:+.1%} |")


if __name__ == "__main__":
    arguments = parse_args()
    worker(arguments.worker, arguments.model) if arguments.worker else main(arguments)
