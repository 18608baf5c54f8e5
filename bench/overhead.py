"""Benchmark: steps/s of `fit` with hvd_keras against a hand-written Horovod loop.

Both variants train the same model on the same shards inside one
`horovodrun -np 2` job; the rounds interleave them (fit, loop, fit, loop, ...)
so that machine noise hits both alike, and the median of the per-round
ratios is reported.

    .venv/bin/python bench/overhead.py [--np 2] [--rounds 7] [--steps 200]

The hand-written loop is what Horovod's documentation asks users to write:
a `tf.function` step with a `GradientTape`, one `hvd.grouped_allreduce` of
the gradients, and `optimizer.apply`.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--np", type=int, default=2)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--steps", type=int, default=200, help="steps per timed epoch")
    p.add_argument("--batch-size", type=int, default=64, help="per rank")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args()


def launch(args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    cmd = [os.path.join(os.path.dirname(sys.executable), "horovodrun"), "-np", str(args.np), "--gloo",
           sys.executable, os.path.abspath(__file__), "--worker", "--rounds", str(args.rounds),
           "--steps", str(args.steps), "--batch-size", str(args.batch_size)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    result = [line.split("RESULT ", 1)[1] for line in proc.stdout.splitlines() if "RESULT " in line]
    if proc.returncode != 0 or not result:
        sys.exit(f"benchmark failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    data = json.loads(result[0])
    ratios = [f / t for f, t in zip(data["fit"], data["loop"])]
    print(f"{'round':>5} {'fit steps/s':>12} {'loop steps/s':>13} {'ratio':>6}")
    for i, (f, t, r) in enumerate(zip(data["fit"], data["loop"], ratios)):
        print(f"{i:>5} {f:>12.1f} {t:>13.1f} {r:>6.3f}")
    print(f"median ratio fit/loop: {statistics.median(ratios):.3f} "
          f"(np={args.np}, {args.steps} steps x {args.rounds} rounds, per-rank batch {args.batch_size})")


def worker(args):
    import keras
    import numpy as np
    import tensorflow as tf

    import hvd_keras
    from hvd_keras._horovod import hvd

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    hvd_keras.init()
    rng = np.random.default_rng(0)
    n = args.steps * args.batch_size * hvd_keras.size()
    x = rng.normal(size=(n, 64)).astype("float32")
    y = rng.integers(0, 10, size=(n,)).astype("int32")
    xs, ys = hvd_keras.data.shard((x, y))

    def make_model():
        keras.utils.set_random_seed(0)
        return keras.Sequential([
            keras.Input((64,)),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(10),
        ])

    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    fit_model = make_model()
    fit_model.compile(optimizer=hvd_keras.DistributedOptimizer(keras.optimizers.SGD(0.01)), loss=loss_fn)
    hvd_keras.broadcast_state(fit_model)

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.elapsed = time.perf_counter() - self.start

    timer = EpochTimer()

    def run_fit():
        fit_model.fit(xs, ys, batch_size=args.batch_size, epochs=1, shuffle=False, verbose=0,
                      callbacks=[timer])
        return args.steps / timer.elapsed

    loop_model = make_model()
    loop_opt = keras.optimizers.SGD(0.01)
    loop_opt.build(loop_model.trainable_variables)
    hvd_keras.broadcast_variables(loop_model.variables + loop_opt.variables)
    dataset = tf.data.Dataset.from_tensor_slices((xs, ys)).batch(args.batch_size).prefetch(2)

    @tf.function
    def loop_step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, loop_model(xb, training=True))
        grads = tape.gradient(loss, loop_model.trainable_variables)
        grads = hvd.grouped_allreduce(grads, op=hvd.Average)
        loop_opt.apply(grads, loop_model.trainable_variables)
        return loss

    def run_loop():
        start = time.perf_counter()
        for xb, yb in dataset:
            loop_step(xb, yb)
        return args.steps / (time.perf_counter() - start)

    run_fit(), run_loop()  # trace and warm up both
    results = {"fit": [], "loop": []}
    for i in range(args.rounds):
        # Alternate which goes first so neither always follows the other.
        order = [("fit", run_fit), ("loop", run_loop)]
        for name, fn in order if i % 2 == 0 else order[::-1]:
            results[name].append(fn())
    if hvd_keras.is_chief():
        print("RESULT " + json.dumps(results), flush=True)


if __name__ == "__main__":
    arguments = parse_args()
    worker(arguments) if arguments.worker else launch(arguments)
