"""What every benchmark here shares: interleaved rounds, epoch timing, medians, launching ranks.

Machine noise is larger than the effects measured, so a benchmark never times
variants one after another: each round runs every variant once, the order
alternating between rounds, and the median over rounds is reported with its
min and max. Ratios are taken within a round, then their median.
"""

import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

# Where a worker's `report` writes its result: a file, since launchers cut a
# rank's output lines (horovodrun's at 4 KB: a 45-round result did not parse).
RESULT_FILE_ENV = "HVD_KERAS_BENCH_RESULT"


def interleave(variants, rounds, more=None):
    """Runs `variants` ({name: fn() -> value}) `rounds` times, order reversed every other round.

    With `more` (a function of the results so far), rounds go on after the
    first `rounds` while it returns True. Returns {name: [value per round]}.
    """
    names = list(variants)
    results = {name: [] for name in names}
    i = 0
    while i < rounds or (more is not None and more(results)):
        for name in names if i % 2 == 0 else names[::-1]:
            results[name].append(variants[name]())
        i += 1
    return results


def median_interval(values, z=1.96):
    """A distribution-free 95% confidence interval of the median of `values`, as (low, high).

    The order statistics of ranks floor((n - z sqrt(n)) / 2) and
    ceil(1 + (n + z sqrt(n)) / 2), counted from 1: no assumption about the
    noise's distribution, which on a shared machine has long tails. Too few
    values for such an interval (under 6) give (-inf, inf).
    """
    ordered = sorted(values)
    n = len(ordered)
    low = math.floor((n - z * math.sqrt(n)) / 2)
    high = math.ceil(1 + (n + z * math.sqrt(n)) / 2)
    if low < 1 or high > n:
        return -math.inf, math.inf
    return ordered[low - 1], ordered[high - 1]


def spread(values):
    """`median (min-max)` of a list of numbers."""
    return statistics.median(values), min(values), max(values)


def fmt(values, digits=0):
    med, lo, hi = spread(values)
    return f"{med:,.{digits}f} ({lo:,.{digits}f}-{hi:,.{digits}f})"


def ratios(a, b):
    """Per-round a/b, for variants measured in the same rounds."""
    return [x / y for x, y in zip(a, b)]


def epoch_timer(keras, skip=0):
    """A callback that times each epoch's steps after the first `skip`, up to the epoch's end.

    `elapsed` is the wall time and `steps` the number of steps it covers. With
    `skip` > 0 the clock starts as step `skip` begins, so the steps that fill
    the input pipeline are left out; the iterator's creation and teardown,
    outside the epoch's callbacks, are never in it (time `fit` as a whole for
    those).
    """

    class EpochTimer(keras.callbacks.Callback):
        # on_train_batch_begin only: overriding on_train_batch_end would make
        # Keras dispatch batch-end callbacks synchronously and change the fit.
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_begin(self, batch, logs=None):
            if batch == skip:
                self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.elapsed = time.perf_counter() - self.start
            self.steps = self.params["steps"] - skip

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
    with result_file(env or worker_env()) as (env, take):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        result = take(proc.stdout)
    if proc.returncode != 0 or result is None:
        sys.exit(f"benchmark failed ({proc.returncode}): {' '.join(cmd)}\n"
                 f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return result


@contextlib.contextmanager
def result_file(env):
    """`with result_file(env) as (env, take)`: `env` names a fresh result file; `take(stdout)` reads the result.

    `take` falls back to a RESULT line in `stdout` (a worker started by hand).
    """
    with tempfile.TemporaryDirectory(prefix="hvd_keras_bench_") as directory:
        path = os.path.join(directory, "result.json")

        def take(stdout=""):
            if os.path.exists(path):
                with open(path) as f:
                    return json.load(f)
            return read_result(stdout)

        yield dict(env, **{RESULT_FILE_ENV: path}), take


def read_result(text):
    """The first RESULT a worker printed in `text`, or None."""
    for line in text.splitlines():
        if "RESULT " in line:
            # raw_decode: under MPI another rank's output can follow on the same line.
            return json.JSONDecoder().raw_decode(line.split("RESULT ", 1)[1])[0]
    return None


def report(result):
    """Hands `result` to `run_ranks`: into its result file (written whole, then renamed), else as a RESULT line."""
    path = os.environ.get(RESULT_FILE_ENV)
    if not path:
        print("RESULT " + json.dumps(result), flush=True)
        return
    with open(path + ".tmp", "w") as f:
        json.dump(result, f)
    os.replace(path + ".tmp", path)


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


def machine_line():
    """Date, CPU and versions, for a result table's caption."""
    from importlib import metadata

    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = []
    for package in ("tensorflow", "tensorflow-cpu", "keras", "tf_keras", "horovod"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            pass
    return (f"{time.strftime('%Y-%m-%d')}, {cpu}, {len(os.sched_getaffinity(0))} cores, "
            f"Python {sys.version.split()[0]}, {', '.join(versions)}")
