"""Benchmark: `fit` on a process confined to one core, tf.data's autotuning on and off.

One process pinned to one core trains an MLP for several epochs per round
(so that iterators are made and destroyed, as in any training), over two
datasets built alike from the same arrays: one as hvd_keras leaves it there
(`hvd_keras.pipeline.adjust`: autotuning off), one with
`options.autotune.enabled = True` set, which hvd_keras leaves alone. Rounds
interleave the two; the whole `fit` is timed, and the epochs alone beside it.

    .venv/bin/python bench/pipeline.py [--rounds 7] [--epochs 4] [--steps 1000]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--steps", type=int, default=1000, help="steps per epoch")
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args()

    import keras
    import numpy as np
    import tensorflow as tf

    import hvd_keras

    machine = _harness.machine_line()
    _harness.set_threads(tf, 1, 1)
    _harness.pin_to_core(0)
    rng = np.random.default_rng(0)
    n = args.steps * args.batch_size
    x = rng.normal(size=(n, 64)).astype("float32")
    y = rng.integers(0, 10, size=(n,)).astype("int32")

    def dataset(autotune):
        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(args.batch_size).prefetch(tf.data.AUTOTUNE)
        if autotune:
            options = tf.data.Options()
            options.autotune.enabled = True
            data = data.with_options(options)
        return data

    timer = _harness.epoch_timer(keras)

    class Epochs(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.total = 0.0

        def on_epoch_end(self, epoch, logs=None):
            self.total += timer.elapsed

    epochs = Epochs()

    def variant(autotune):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(256, activation="relu"),
                                  keras.layers.Dense(256, activation="relu"), keras.layers.Dense(10)])
        model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        data = dataset(autotune)
        model.fit(data, epochs=1, verbose=0)  # trace

        def run():
            start = time.perf_counter()
            model.fit(data, epochs=args.epochs, verbose=0, callbacks=[timer, epochs])
            return time.perf_counter() - start, epochs.total

        return run

    if hvd_keras.pipeline.adjust(dataset(False)).options().autotune.enabled is not False:
        sys.exit("hvd_keras did not turn autotuning off on one core: nothing to compare")
    variants = {"autotuning off (hvd_keras)": variant(False), "autotuning on": variant(True)}
    results = _harness.interleave(variants, args.rounds)
    print(f"{machine}\none process on one core, {args.epochs} epochs x {args.steps} steps "
          f"per fit, {args.rounds} interleaved rounds; seconds, median (min-max)")
    for name, values in results.items():
        print(f"  {name:<28} fit {_harness.fmt([v[0] for v in values], 2)} s, "
              f"its epochs {_harness.fmt([v[1] for v in values], 2)} s")
    off, on = ([v[0] for v in values] for values in results.values())
    print(f"  fit time, on / off           {_harness.fmt(_harness.ratios(on, off), 3)}")


if __name__ == "__main__":
    main()
