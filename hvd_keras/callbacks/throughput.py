"""Throughput callback."""

import json
import time

from hvd_keras import _compat
from hvd_keras._horovod import hvd, keras
from hvd_keras.optimizer import allreduce_seconds, enable_step_option, primary_optimizer
from hvd_keras.runtime import is_chief, size


class Throughput(keras.callbacks.Callback):
    """Reports global samples per second, per-rank step time and allreduce share.

    At each epoch end rank 0 prints one line and, if `path` is given, writes
    the numbers of every epoch as JSON. The allreduce share is the fraction of
    the epoch each rank spent in the gradient allreduce, waiting for slower
    ranks included (timestamps around the allreduce in the compiled step,
    added only while this callback is used; not available, and reported as
    None, under `tf.config.experimental.enable_op_determinism()`). Given the samples per second of
    a single-rank run, it also reports the scaling efficiency,
    `global / (size * baseline)`; given a scaling plan (`hvd_keras.plan`),
    the efficiency it predicted at this size next to the measured one (the
    plan's one-rank samples/s is then the baseline unless one is given).

    Args:
        batch_size: samples per step on each rank.
        path: JSON file for the results (written by rank 0), or None.
        baseline_samples_per_sec: single-rank throughput, or None.
        plan: a `hvd_keras.planner.ScalingPlan`, or None.

    Example:

    ```python
    model.fit(x, y, batch_size=32, callbacks=[hvd_keras.callbacks.Throughput(32, "throughput.json")])
    ```
    """

    def __init__(self, batch_size, path=None, baseline_samples_per_sec=None, plan=None):
        super().__init__()
        self.batch_size = int(batch_size)
        self.path = path
        self.plan = plan
        if baseline_samples_per_sec is None and plan is not None:
            baseline_samples_per_sec = plan.at(1).samples_per_sec
        self.baseline = baseline_samples_per_sec
        self.epochs = []

    def on_train_begin(self, logs=None):
        # tf.timestamp is refused under op determinism: then no share is reported.
        self._timed = primary_optimizer(self.model) is not None and size() > 1 and not _compat.is_op_determinism_enabled()
        if self._timed:
            enable_step_option(self.model, "_hvd_timing")

    def on_epoch_begin(self, epoch, logs=None):
        self._batches = 0
        allreduce_seconds().assign(0.0)
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1

    def on_epoch_end(self, epoch, logs=None):
        elapsed = time.perf_counter() - self._start
        mine = {"step_time": elapsed / max(self._batches, 1), "batches": self._batches,
                "allreduce_share": float(allreduce_seconds().numpy()) / elapsed if self._timed else None,
                "elapsed": elapsed}
        everyone = hvd.allgather_object(mine, name="hvd_keras.throughput") if size() > 1 else [mine]
        slowest = max(r["elapsed"] for r in everyone)
        samples = sum(r["batches"] for r in everyone) * self.batch_size
        record = {
            "epoch": epoch,
            "global_samples_per_sec": samples / slowest,
            "step_time_per_rank": [r["step_time"] for r in everyone],
            "allreduce_share_per_rank": [r["allreduce_share"] for r in everyone],
        }
        if self.baseline:
            record["scaling_efficiency"] = record["global_samples_per_sec"] / (size() * self.baseline)
        if self.plan is not None:
            record["predicted_scaling_efficiency"] = self.plan.at(size()).efficiency
        self.epochs.append(record)
        if is_chief():
            line = (f"throughput epoch {epoch + 1}: {record['global_samples_per_sec']:.0f} samples/s, step "
                    + "/".join(f"{t * 1000:.1f}" for t in record["step_time_per_rank"]) + " ms, allreduce "
                    + "/".join("n/a" if s is None else f"{s:.0%}" for s in record["allreduce_share_per_rank"]))
            if self.baseline:
                line += f", scaling efficiency {record['scaling_efficiency']:.0%}"
            if self.plan is not None:
                line += f" (predicted {record['predicted_scaling_efficiency']:.0%})"
            print(line, flush=True)
            if self.path:
                from hvd_keras.checkpoint import write_json_atomic

                write_json_atomic(self.path, {"size": size(), "batch_size": self.batch_size,
                                              "epochs": self.epochs})

