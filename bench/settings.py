"""Benchmark: one of hvd_keras's recommended settings against other values, side by side.

hvd_keras on 2 ranks, Gloo and MPI, on bench/peers.py's communication-bound
MLP and compute-bound CNN (same models, batches and threads: one intra-op and
one inter-op TensorFlow thread per rank), with the variable set to each value
in turn. Each round launches every value once, the order reversed every
other round; samples/s medians (min-max) and the median of the per-round
ratios of the first value over each other one. The defaults compare
Horovod's threads scheduled SCHED_IDLE (hvd_keras's choice on CPUs) with
the normal policy.

A third model, `input`, is the case where other threads of the rank want
the cores while it waits for the allreduce: the MLP fed by a `tf.data`
pipeline whose parallel map costs more than the step (input-bound), ranks
unpinned, TensorFlow's default thread pools; samples/s of a whole epoch.

    .venv/bin/python bench/settings.py [--variable HVD_KERAS_HOROVOD_THREADS] [--values idle,normal]
        [--rounds 5] [--models mlp,cnn,input] [--controllers gloo,mpi] [--no-pin]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402
import peers  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variable", default="HVD_KERAS_HOROVOD_THREADS")
    p.add_argument("--values", default="idle,normal", help="comma-separated; the first is compared with the others")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--models", default="mlp,cnn,input")
    p.add_argument("--controllers", default="gloo,mpi")
    p.add_argument("--no-pin", action="store_true", help="leave the ranks' placement to the kernel")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args()


INPUT = {"batch": 64, "steps": 150, "map_rows": 200}


def input_worker():
    """The `input` model on this rank; rank 0 reports samples/s of the timed epoch."""
    import numpy as np
    import tensorflow as tf

    import keras

    import hvd_keras

    hvd_keras.init()
    batch, steps = INPUT["batch"], INPUT["steps"]
    rng = np.random.default_rng(hvd_keras.rank())
    x = rng.normal(size=(steps * batch, 64)).astype("float32")
    y = rng.integers(0, 10, size=(steps * batch,)).astype("int32")

    def heavy(a, b):  # preprocessing that costs more per batch than the step itself
        m = tf.random.normal([INPUT["map_rows"], 64])
        return a + 0.0 * tf.reduce_mean(tf.tanh(m @ tf.transpose(m))), b

    data = (tf.data.Dataset.from_tensor_slices((x, y)).map(heavy, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(batch).prefetch(tf.data.AUTOTUNE))
    model = peers.build_model(keras, "mlp")
    model.compile(optimizer=hvd_keras.DistributedOptimizer(keras.optimizers.SGD(0.01, momentum=0.9)),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    hvd_keras.broadcast_state(model)
    model.fit(data.take(5), epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(data, epochs=1, verbose=0)
    if hvd_keras.is_chief():
        _harness.report({"samples_per_sec": 2 * steps * batch / (time.perf_counter() - start)})


def main(args):
    values = args.values.split(",")
    started = time.time()
    print(_harness.machine_line())
    print(f"{args.variable}: 2 ranks, {'unpinned' if args.no_pin else 'each pinned to its own core'}, "
          f"{args.rounds} rounds; samples/s median (min-max); ratios of {values[0]} over the others")
    print("| model | controller | " + " | ".join(values) + " | " +
          " | ".join(f"{values[0]} / {v}" for v in values[1:]) + " |")
    print("| --- | --- |" + " --- |" * (2 * len(values) - 1))
    for name in args.models.split(","):
        for controller in args.controllers.split(","):
            def run(value):
                if name == "input":
                    return _harness.run_ranks(2, os.path.abspath(__file__), [], controller=controller,
                                              env=_harness.worker_env(**{args.variable: value}))["samples_per_sec"]
                result = peers.launch(f"hvd-{controller}", name, pin=not args.no_pin,
                                      extra_env={args.variable: value})
                if "error" in result:
                    sys.exit(f"{name} {controller} {args.variable}={value}: {result['error']}")
                return result["samples_per_sec"]

            got = _harness.interleave({v: (lambda v=v: run(v)) for v in values}, args.rounds)
            cells = [_harness.fmt(got[v]) for v in values]
            cells += [_harness.fmt(_harness.ratios(got[values[0]], got[v]), 3) for v in values[1:]]
            print(f"| {name} | {controller} | " + " | ".join(cells) + " |", flush=True)
    print(f"\n({time.time() - started:.0f} s)")


if __name__ == "__main__":
    arguments = parse_args()
    input_worker() if arguments.worker else main(arguments)
