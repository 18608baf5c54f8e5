"""Benchmark: what the watchdog adds to each train step, as a share of the MLP's step.

The watchdog times every call of the train function (two clock reads and a
tuple stored) and wakes once a second in a thread of its own. Measured on one
process pinned to one core: the MLP's compiled train step (plan_check's and
overhead.py's model, per-rank batch 64) called through the guard and
directly, interleaved over rounds; the median of the per-round ratios.

    .venv/bin/python bench/watchdog.py [--rounds 15] [--steps 2000]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--steps", type=int, default=2000)
    args = p.parse_args()

    import keras
    import numpy as np
    import tensorflow as tf

    from hvd_keras import watchdog

    machine = _harness.machine_line()
    _harness.set_threads(tf, 1, 1)
    _harness.pin_to_core(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 64)).astype("float32")
    y = rng.integers(0, 10, size=(64,))
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(256, activation="relu"),
                              keras.layers.Dense(256, activation="relu"), keras.layers.Dense(10)])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy")
    model.make_train_function()
    data = (tf.constant(x), tf.constant(y))
    step = tf.function(model.train_step)
    plain = lambda batch: step(batch)  # noqa: E731
    dog = watchdog.Watchdog(timeout=30.0, on_stall=lambda line: None)
    guarded = dog.guard(plain)
    for function in (plain, guarded):
        for _ in range(50):
            function(data)

    ratios, per_step = [], {plain: [], guarded: []}
    for r in range(args.rounds):
        order = (plain, guarded) if r % 2 == 0 else (guarded, plain)
        seconds = {}
        for function in order:
            start = time.perf_counter()
            for _ in range(args.steps):
                function(data)
            seconds[function] = (time.perf_counter() - start) / args.steps
            per_step[function].append(seconds[function])
        ratios.append(seconds[guarded] / seconds[plain])
    dog.stop()
    median = sorted(ratios)[len(ratios) // 2]
    step_us = 1e6 * sorted(per_step[plain])[args.rounds // 2]
    print(machine)
    print(f"MLP train step, one core, {args.steps} steps x {args.rounds} rounds, interleaved")
    print(f"  step without the watchdog   {step_us:.1f} us (median)")
    print(f"  with / without              {median:.4f} (min {min(ratios):.4f}, max {max(ratios):.4f}): "
          f"{100 * (median - 1):+.2f}% of the step")


if __name__ == "__main__":
    main()
