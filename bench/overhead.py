"""Benchmark: steps/s of `fit` with hvd_keras against a hand-written Horovod loop.

All variants train the same MLP on the same shards inside one job; the rounds
interleave them (order reversed every other round) so that machine noise hits
each alike, and the median of the per-round ratios is reported with its min
and max. Each rank is pinned to its own core (`--no-pin` to leave placement
to the kernel) and runs one TensorFlow thread, and the first epoch of each
variant (tracing) is excluded. Steps/s are the steady rate, timed alike for
every variant from the start of step 20 (the input pipeline filled) to the
end of the epoch's last step; what each epoch costs beyond that (fit's
set-up, the iterator's creation and teardown) is printed beside it.

    .venv/bin/python bench/overhead.py [--np 2] [--rounds 15] [--precision 0.01] [--max-minutes 10]
        [--steps 200] [--controller mpi|gloo] [--save rounds.json]

After the first `--rounds`, rounds go on until the median's 95% confidence
interval (distribution-free, from order statistics) is within +-1% of the
median fit ratio, for at most `--max-minutes`: a quiet machine stops early,
a noisy one measures longer instead of reporting noise.

Variants:
- `fit`: `model.fit` with `hvd_keras.DistributedOptimizer`, as users run it
  (`RankAgreement`, which hvd_keras adds to every distributed `fit`, included);
- `fit, no agreement`: the same without `RankAgreement`, to measure what
  agreed stopping costs (also reported directly: the time inside its hooks
  and, timed on a trivial step, what returning the flags adds to the step);
- `loop`: what Horovod's documentation asks users to write: a `tf.function`
  step with a `GradientTape`, one `hvd.grouped_allreduce` of the gradients,
  and `optimizer.apply`; at `--np 1` the same without the allreduce; over
  the same input pipeline as fit's;
- `keras fit` (at `--np 1` only): plain Keras `fit` with the bare optimizer,
  against which hvd_keras's `fit` at size 1 must cost nothing.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--np", type=int, default=2)
    p.add_argument("--rounds", type=int, default=15, help="rounds at least")
    p.add_argument("--precision", type=float, default=0.01,
                   help="after --rounds, rounds go on until the 95%% interval of the median fit ratio is within "
                        "+-this share of it (default 0.01), or --max-minutes have passed")
    p.add_argument("--max-minutes", type=float, default=10.0,
                   help="no round starts after this many minutes of rounds, beyond the first --rounds "
                        "(0: exactly --rounds)")
    p.add_argument("--steps", type=int, default=200, help="steps per timed epoch")
    p.add_argument("--batch-size", type=int, default=64, help="per rank")
    p.add_argument("--controller", choices=["gloo", "mpi"], default="mpi")
    p.add_argument("--no-pin", action="store_true", help="do not pin each rank to a core")
    p.add_argument("--save", help="also write every round's figures to this JSON file")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rounds < 1:
        p.error(f"--rounds must be >= 1. Received: --rounds {args.rounds}. HINT: the default 15 is a good start.")
    return args


def worker(args):
    import keras
    import numpy as np
    import tensorflow as tf

    import hvd_keras
    from hvd_keras._horovod import hvd

    _harness.set_threads(tf, 1, 1)
    hvd_keras.init()
    if not args.no_pin:
        _harness.pin_to_core(hvd_keras.local_rank())
    rng = np.random.default_rng(0)
    n = args.steps * args.batch_size * hvd_keras.size()
    x = rng.normal(size=(n, 64)).astype("float32")
    y = rng.integers(0, 10, size=(n,)).astype("int32")
    xs, ys = hvd_keras.data.shard((x, y))
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def make_model():
        keras.utils.set_random_seed(0)
        return keras.Sequential([
            keras.Input((64,)),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(10),
        ])

    class NoAgreement(hvd_keras.callbacks.RankAgreement):
        # Present, so hvd_keras adds no RankAgreement of its own, and with
        # Keras's default hooks: a fit as without it (Keras then dispatches
        # batch-end callbacks asynchronously again).
        on_train_begin = keras.callbacks.Callback.on_train_begin
        on_train_batch_end = keras.callbacks.Callback.on_train_batch_end
        on_epoch_end = keras.callbacks.Callback.on_epoch_end

    class TimedAgreement(hvd_keras.callbacks.RankAgreement):
        # The real one, with the wall time of its hooks (their collectives
        # included) summed: what it adds outside the compiled step.
        seconds, steps = {}, 0

        def _timed(self, hook, *args):
            start = time.perf_counter()
            getattr(super(), hook)(*args)
            TimedAgreement.seconds[hook] = TimedAgreement.seconds.get(hook, 0.0) + time.perf_counter() - start

        def on_train_begin(self, logs=None):
            self._timed("on_train_begin", logs)

        def on_train_batch_end(self, batch, logs=None):
            TimedAgreement.steps += 1
            self._timed("on_train_batch_end", batch, logs)

        def on_epoch_end(self, epoch, logs=None):
            self._timed("on_epoch_end", epoch, logs)

    skip = min(20, args.steps // 10)  # steps that fill the input pipeline, left out of the steady rate
    timer = _harness.epoch_timer(keras, skip=skip)

    def make_fit(extra_callbacks, distributed=True):
        model = make_model()
        optimizer = keras.optimizers.SGD(0.01)
        model.compile(optimizer=hvd_keras.DistributedOptimizer(optimizer) if distributed else optimizer,
                      loss=loss_fn)
        if distributed:
            hvd_keras.broadcast_state(model)

        def run():
            start = time.perf_counter()
            model.fit(xs, ys, batch_size=args.batch_size, epochs=1, shuffle=False, verbose=0,
                      callbacks=[timer, *extra_callbacks])
            return timer.steps / timer.elapsed, time.perf_counter() - start

        return run

    loop_model = make_model()
    loop_opt = keras.optimizers.SGD(0.01)
    loop_opt.build(loop_model.trainable_variables)
    hvd_keras.broadcast_variables(loop_model.variables + loop_opt.variables)
    # The input pipeline fit's iterator gets (hvd_keras.pipeline: tf.data's
    # autotuning off for a rank pinned to one core), so that only the step differs.
    dataset = hvd_keras.pipeline.adjust(
        tf.data.Dataset.from_tensor_slices((xs, ys)).batch(args.batch_size).prefetch(2))

    @tf.function
    def loop_step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, loop_model(xb, training=True))
        grads = tape.gradient(loss, loop_model.trainable_variables)
        if hvd_keras.size() > 1:
            grads = hvd.grouped_allreduce(grads, op=hvd.Average)
        loop_opt.apply(grads, loop_model.trainable_variables)
        return loss

    def run_loop():
        # Timed as fit's timer times it: from the start of step `skip` to the
        # end of the last step; the whole epoch, the iterator's teardown
        # included, separately.
        begin = time.perf_counter()
        iterator = iter(dataset)
        for i, (xb, yb) in enumerate(iterator):
            if i == skip:
                start = time.perf_counter()
            loop_step(xb, yb)
        steady = (args.steps - skip) / (time.perf_counter() - start)
        del iterator
        return steady, time.perf_counter() - begin

    def flags_output_cost(calls=2000, rounds=7):
        # What returning the agreed flags adds inside the train function: one
        # variable read more in the step, one output more, and taking it out
        # of the logs; timed on a trivial step, where nothing hides it.
        from hvd_keras import preemption

        def step(x):
            return {"loss": x * 2.0}

        plain = tf.function(step)
        returning = preemption.taking_agreed_flags(tf.function(preemption.with_agreed_flags(step)))
        x = tf.constant(1.0)
        per_call = {plain: [], returning: []}
        for _ in range(rounds):
            for function in (plain, returning):
                function(x)
                start = time.perf_counter()
                for _ in range(calls):
                    function(x)
                per_call[function].append((time.perf_counter() - start) / calls)
        return 1e6 * (sorted(per_call[returning])[rounds // 2] - sorted(per_call[plain])[rounds // 2])

    if hvd_keras.size() > 1:
        variants = {"fit": make_fit([TimedAgreement()]), "fit, no agreement": make_fit([NoAgreement()]),
                    "loop": run_loop}
    else:  # as users run it at size 1: hvd_keras adds no callback there
        variants = {"fit": make_fit([]), "keras fit": make_fit([], distributed=False), "loop": run_loop}
    for run in variants.values():
        run()  # trace and warm up
    TimedAgreement.seconds, TimedAgreement.steps = {}, 0
    reference = "loop" if hvd_keras.size() > 1 else "keras fit"
    deadline = []  # set when the first --rounds are done

    def more(timings):
        # Rank 0 decides, on its figures and its clock, and every rank
        # follows: each round is a run of collectives.
        ratios = _harness.ratios([r for r, _ in timings["fit"]], [r for r, _ in timings[reference]])
        low, high = _harness.median_interval(ratios)
        median = _harness.spread(ratios)[0]
        deadline[:] = deadline or [time.monotonic() + 60 * args.max_minutes]
        wanted = time.monotonic() < deadline[0] and max(high - median, median - low) > args.precision * median
        return bool(hvd.broadcast_object(wanted, root_rank=0, name="overhead.more")) if hvd_keras.size() > 1 \
            else wanted

    timings = _harness.interleave(variants, args.rounds, more)
    results = {name: [rate for rate, _ in values] for name, values in timings.items()}
    # What an epoch costs beyond its steps at the steady rate: fit's set-up,
    # the iterator's creation and teardown, the first steps.
    results["epoch_extra_ms"] = {name: [1e3 * (whole - args.steps / rate) for rate, whole in values]
                                 for name, values in timings.items()}
    results["agreement_hooks"] = {hook: 1e6 * total / (TimedAgreement.steps if hook == "on_train_batch_end"
                                                        else len(timings["fit"]))
                                  for hook, total in TimedAgreement.seconds.items()}
    results["agreement_hooks"]["in_step"] = flags_output_cost()
    if hvd_keras.is_chief():
        _harness.report(results)


def main(args):
    forwarded = ["--rounds", str(args.rounds), "--precision", str(args.precision), "--max-minutes",
                 str(args.max_minutes), "--steps", str(args.steps), "--batch-size", str(args.batch_size)]
    if args.no_pin:
        forwarded.append("--no-pin")
    results = _harness.run_ranks(args.np, os.path.abspath(__file__), forwarded, controller=args.controller)
    if args.save:
        with open(args.save, "w") as f:
            json.dump(results, f, indent=1)
    hooks = results.pop("agreement_hooks")
    extra = results.pop("epoch_extra_ms")
    rounds = len(results["fit"])
    print(f"np={args.np} {args.controller}, {args.steps} steps x {rounds} rounds, per-rank batch "
          f"{args.batch_size}, {'unpinned' if args.no_pin else 'one core per rank'}; median (min-max)")
    for name, values in results.items():
        print(f"  {name:<22} steps/s {_harness.fmt(values, 1)}, per epoch beyond its steps "
              f"{_harness.fmt(extra[name], 1)} ms")

    def ratio_line(label, reference, note=""):
        ratios = _harness.ratios(results["fit"], results[reference])
        low, high = _harness.median_interval(ratios)
        print(f"  {label:<22} {_harness.fmt(ratios, 3)}; 95% interval of the median {low:.3f}-{high:.3f}{note}")

    ratio_line("fit / loop", "loop")
    if "keras fit" in results:
        ratio_line("fit / keras fit", "keras fit", " (plain Keras: no hvd_keras optimizer, nothing sent at size 1)")
    if "fit, no agreement" not in results:
        return
    agreement = _harness.ratios(results["fit"], results["fit, no agreement"])
    print(f"  agreement A/B          {_harness.fmt([1 - r for r in agreement], 4)} of fit's step rate "
          "(1 - fit / fit without agreement; within the noise unless it exceeds the spread)")
    step_us = 1e6 / _harness.spread(results["fit"])[0]
    per_fit = hooks.get("on_train_begin", 0) + hooks.get("on_epoch_end", 0)
    hook, in_step = hooks.get("on_train_batch_end", 0), hooks.get("in_step", 0)
    per_step = hook + in_step
    print(f"  agreement, per step    {per_step:.1f} us = {per_step / step_us:.5f} of the median fit step "
          f"({step_us:.0f} us): on_train_batch_end {hook:.1f} us, the flags as a step output {in_step:.1f} us; "
          "and 2 floats more in the one fused allreduce")
    print(f"  agreement, per fit     {per_fit / 1e3:.2f} ms (on_train_begin {hooks.get('on_train_begin', 0) / 1e3:.2f}: "
          f"steps allgather; on_epoch_end {hooks.get('on_epoch_end', 0) / 1e3:.2f}: scalar allreduce; waiting for "
          f"the other rank included) = {per_fit / (args.steps * step_us):.4f} of a {args.steps}-step epoch")


if __name__ == "__main__":
    arguments = parse_args()
    worker(arguments) if arguments.worker else main(arguments)
