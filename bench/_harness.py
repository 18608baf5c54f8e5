"""What every benchmark here shares: interleaved rounds, epoch timing, medians, launching ranks.

Machine noise is larger than the effects measured, so a benchmark never times
variants one after another: each round runs every variant once, the order
alternating between rounds, and the median over rounds is reported with its
min and max. Ratios are taken within a round, then their median.
"""

import json
import os
import statistics
import subprocess
import sys
import time


def interleave(variants, rounds):
    """Runs `variants` ({name: fn() -> value}) `rounds` times, order reversed every other round.

    Returns {name: [value per round]}.
    """
    names = list(variants)
    results = {name: [] for name in names}
    for i in range(rounds):
        for name in names if i % 2 == 0 else names[::-1]:
            results[name].append(variants[name]())
    return results


def spread(values):
    """`median (min-max)` of a list of numbers."""
    return statistics.median(values), min(values), max(values)


def fmt(values, digits=0):
    med, lo, hi = spread(values)
    return f"{med:,.{digits}f} ({lo:,.{digits}f}-{hi:,.{digits}f})"


def ratios(a, b):
    """Per-round a/b, for variants measured in the same rounds."""
    return [x / y for x, y in zip(a, b)]


def epoch_timer(keras):
    """A callback that records the wall time of each epoch (the first batch included)."""

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.elapsed = time.perf_counter() - self.start

    return EpochTimer()


def set_threads(tf, intra, inter):
    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(inter)


def worker_env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_ranks(np_, script, args, controller="gloo", env=None, launcher_args=()):
    """Runs `script --worker args` on `np_` ranks (plain python at 1) and returns rank 0's RESULT."""
    if np_ == 1:
        cmd = [sys.executable, script, "--worker", *args]
    else:
        cmd = [os.path.join(os.path.dirname(sys.executable), "horovodrun"), "-np", str(np_),
               f"--{controller}", *launcher_args, sys.executable, script, "--worker", *args]
    proc = subprocess.run(cmd, env=env or worker_env(), capture_output=True, text=True)
    result = [line.split("RESULT ", 1)[1] for line in proc.stdout.splitlines() if "RESULT " in line]
    if proc.returncode != 0 or not result:
        sys.exit(f"benchmark failed ({proc.returncode}): {' '.join(cmd)}\n"
                 f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    # raw_decode: under MPI another rank's output can follow on the same line.
    return json.JSONDecoder().raw_decode(result[0])[0]


def report(result):
    """The line a worker prints for `run_ranks` to pick up."""
    print("RESULT " + json.dumps(result), flush=True)


def pin_to_core(local_rank):
    """Pins this process to one core of those it may use: local rank k to the k-th (wrapping)."""
    cores = sorted(os.sched_getaffinity(0))
    core = {cores[local_rank % len(cores)]}
    # Every thread already started (TensorFlow's pools, Horovod's background
    # thread), not only the calling one; threads started later inherit it.
    for task in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(task), core)
        except OSError:  # a thread that ended meanwhile
            pass
