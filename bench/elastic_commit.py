"""Benchmark: what committing an elastic job's state costs, as a share of the step (target <= 1% at the default cadence).

Three variants train the same MLP on 2 ranks inside one job (Gloo, the only
controller of elastic mode), the rounds interleaved (order reversed every
other round) as bench/_harness.py does, one epoch per variant per round:

- `elastic`: `hvd_keras.elastic.fit` with the default cadence
  (`commit_every=DEFAULT_COMMIT_EVERY`, plus the epoch's end);
- `elastic, epoch commits`: the same with `commit_every=0` (only the
  epoch-end commit, which lies outside the timed steps);
- `fit`: plain `model.fit` with `hvd_keras.DistributedOptimizer` on a shard.

Steps/s are timed from the start of step 20 to the end of the epoch's last
step. Reported: the median over rounds of `1 - elastic / elastic, epoch
commits` (what the commits inside the epoch cost, the target) and of
`1 - elastic, epoch commits / fit` (what elastic.fit's per-batch callback
costs without commits), each with its distribution-free 95% interval; and
directly, the median commit time over the median step time and the cadence.

    .venv/bin/python bench/elastic_commit.py [--rounds 9] [--steps 400] [--commit-every 50]
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--np", type=int, default=2)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--steps", type=int, default=400, help="steps per timed epoch")
    p.add_argument("--batch-size", type=int, default=64, help="per rank")
    p.add_argument("--commit-every", type=int, default=None, help="default: hvd_keras.elastic.DEFAULT_COMMIT_EVERY")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rounds < 1 or args.steps < 40:
        p.error(f"--rounds must be >= 1 and --steps >= 40. Received: --rounds {args.rounds} --steps {args.steps}. "
                "HINT: the defaults, 9 and 400.")
    return args


def worker(args):
    import keras
    import numpy as np
    import tensorflow as tf

    import hvd_keras
    import hvd_keras.elastic as elastic

    _harness.set_threads(tf, 1, 1)
    hvd_keras.init()
    _harness.pin_to_core(hvd_keras.local_rank())
    cadence = elastic.DEFAULT_COMMIT_EVERY if args.commit_every is None else args.commit_every
    size = hvd_keras.size()
    rng = np.random.default_rng(0)
    n = args.steps * args.batch_size * size
    x = rng.normal(size=(n, 64)).astype("float32")
    y = rng.integers(0, 10, size=(n,)).astype("int32")
    xs, ys = hvd_keras.data.shard((x, y))
    skip = 20
    timer = _harness.epoch_timer(keras, skip=skip)

    def make_model():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(256, activation="relu"),
                                  keras.layers.Dense(256, activation="relu"), keras.layers.Dense(10)])
        model.compile(optimizer=hvd_keras.DistributedOptimizer(keras.optimizers.SGD(0.01, momentum=0.9)),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        hvd_keras.exact_metrics(model)
        return model

    def make_elastic(commit_every):
        model = make_model()
        state = elastic.KerasState(model, seed=1)
        epochs = [0]

        def run():
            epochs[0] += 1
            elastic.fit(model, x, y, batch_size=args.batch_size * size, epochs=epochs[0], verbose=0,
                        callbacks=[timer], commit_every=commit_every, state=state)
            return timer.steps / timer.elapsed

        return run, state

    def make_fit():
        model = make_model()
        hvd_keras.broadcast_state(model)

        def run():
            model.fit(xs, ys, batch_size=args.batch_size, epochs=1, shuffle=False, verbose=0, callbacks=[timer])
            return timer.steps / timer.elapsed

        return run

    default, default_state = make_elastic(cadence)
    epoch_only, epoch_state = make_elastic(0)
    variants = {"elastic": default, "elastic, epoch commits": epoch_only, "fit": make_fit()}
    for run in variants.values():
        run()  # trace and warm up
    default_state.commit_seconds.clear()
    epoch_state.commit_seconds.clear()
    results = _harness.interleave(variants, args.rounds)
    # The default variant commits `steps // cadence` times inside each epoch and once at its end.
    inside = args.steps // cadence if cadence else 0
    per_epoch = inside + 1
    seconds = default_state.commit_seconds
    results["commit_inside_s"] = [s for i, s in enumerate(seconds) if i % per_epoch != per_epoch - 1]
    results["commit_epoch_end_s"] = [s for i, s in enumerate(seconds) if i % per_epoch == per_epoch - 1]
    results["cadence"] = cadence
    results["steps"] = args.steps
    if hvd_keras.is_chief():
        _harness.report(results)


def main(args):
    forwarded = ["--rounds", str(args.rounds), "--steps", str(args.steps), "--batch-size", str(args.batch_size)]
    if args.commit_every is not None:
        forwarded += ["--commit-every", str(args.commit_every)]
    started = time.monotonic()
    results = _harness.run_ranks(args.np, os.path.abspath(__file__), forwarded, controller="gloo")
    cadence, inside, end = results.pop("cadence"), results.pop("commit_inside_s"), results.pop("commit_epoch_end_s")
    steps = results.pop("steps")
    rounds = len(results["fit"])
    print(f"np={args.np} gloo, {steps} steps x {rounds} rounds, per-rank batch {args.batch_size}, commit every "
          f"{cadence} steps; median (min-max); {time.monotonic() - started:.0f} s")
    for name, values in results.items():
        print(f"  {name:<24} steps/s {_harness.fmt(values, 1)}")

    def share(label, a, b):
        costs = [1 - r for r in _harness.ratios(results[a], results[b])]
        low, high = _harness.median_interval(costs)
        print(f"  {label:<24} {_harness.fmt([100 * c for c in costs], 2)} % of the step rate; 95% interval of "
              f"the median {100 * low:.2f} to {100 * high:.2f} %")

    share("commits inside epochs", "elastic", "elastic, epoch commits")
    share("elastic.fit, no commits", "elastic, epoch commits", "fit")
    step = 1 / statistics.median(results["elastic, epoch commits"])
    if inside:
        commit = statistics.median(inside)
        print(f"  one commit              {1e3 * commit:.2f} ms (median of {len(inside)}) = "
              f"{100 * commit / (cadence * step):.2f} % of {cadence} steps of {1e3 * step:.2f} ms")
    if end:
        print(f"  epoch-end commit        {1e3 * statistics.median(end):.2f} ms = "
              f"{100 * statistics.median(end) / (steps * step):.3f} % of a {steps}-step epoch")


if __name__ == "__main__":
    arguments = parse_args()
    worker(arguments) if arguments.worker else main(arguments)
