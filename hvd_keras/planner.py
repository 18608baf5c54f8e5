"""Scaling planner: predicted step time, samples/s and efficiency of ring-allreduce data parallelism.

Inputs: a `Profile` of the model on one process (compute time of one step at
the per-rank batch, bytes of gradients per step) and a `Link` (the allreduce
cost on the hosts, from `measure_allreduce` or from published figures).
Model of one step at N ranks:

    step(N) = compute + stragglers(N) + allreduce(bytes, N) - min(overlap * allreduce(bytes, N), compute)
    allreduce(bytes, N) = 2 (N - 1) / N * bytes / bandwidth + 2 (N - 1) * latency
    stragglers(N) = spread * E[max of N standard normal values]

Assumptions, stated once: the gradients travel as one fused buffer (Horovod's
tensor fusion; hvd_keras sends one grouped allreduce per step) through a ring
whose slowest link has `bandwidth`; `overlap` is the share of the allreduce
time hidden behind compute. Every step waits for the slowest rank's compute:
with independent, normally distributed step times of standard deviation
`spread` (measured by `profile` on one process), the slowest of N takes
`spread * E[max]` longer than the mean (0.56 spread at 2 ranks, 1.42 at 8,
3.04 at 512). Rare pauses (a garbage collection, a checkpoint) are not in
`spread`; at hundreds of ranks one on any rank stalls them all, which this
leaves out. `profile` times the steps as the host sees them: on a GPU that
is the device's time only where the host waits for each step. hvd_keras reduces after the backward pass, so its
overlap is 0; Horovod's TF1 graph mode started each gradient's allreduce as
soon as the gradient was computed, which hides part of it behind the rest of
the backward pass (about half is the planner's assumption for that mode; it
is not measured here). Per-rank batch fixed (weak scaling): efficiency(N) =
step(1) / step(N).
"""

import dataclasses
import functools
import json
import math
import statistics
import time

#: Sizes a plan reports by default: powers of two up to 512 ranks.
DEFAULT_SIZES = tuple(2 ** k for k in range(10))


class _JsonFile:
    """Saving and loading a dataclass of plain fields as JSON."""

    #: How a file of this kind is made, for the errors of `load`.
    MADE_BY = ""

    def save(self, path):
        with open(path, "w") as f:
            json.dump(dataclasses.asdict(self), f, indent=1)

    @classmethod
    def load(cls, path):
        """The object saved at `path`; a missing, unreadable or foreign file is a one-line error."""
        name = cls.__name__
        try:
            with open(path) as f:
                fields = json.load(f)
        except OSError as e:
            raise OSError(e.errno, f"cannot read the {name} file {path!r}: {e.strerror}. HINT: {cls.MADE_BY}") from None
        except ValueError as e:
            raise ValueError(f"{path!r} is not JSON ({e}). HINT: {cls.MADE_BY}") from None
        expected = [f.name for f in dataclasses.fields(cls)]
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
        if not isinstance(fields, dict) or set(fields) - set(expected) or set(required) - set(fields):
            received = sorted(fields) if isinstance(fields, dict) else type(fields).__name__
            raise ValueError(f"{path!r} is not a {name} file. Received fields: {received}. Expected: "
                             f"{', '.join(required)} (optional: {', '.join(sorted(set(expected) - set(required))) or 'none'}). "
                             f"HINT: {cls.MADE_BY}")
        try:
            return cls(**fields)
        except TypeError as e:  # a field of the wrong type: a string, null
            raise ValueError(f"{path!r} is not a {name} file ({e}). HINT: {cls.MADE_BY}") from None


@dataclasses.dataclass(frozen=True)
class Link(_JsonFile):
    """The allreduce cost of a set of hosts: per-step latency (s) and bus bandwidth (bytes/s)."""

    MADE_BY = "make it with `hvd-keras bench-allreduce -np 2 -o link.json` on the hosts."

    latency: float
    bandwidth: float
    source: str = ""

    def __post_init__(self):
        if not (self.latency >= 0 and self.bandwidth > 0):
            raise ValueError(f"Link needs latency >= 0 and bandwidth > 0. Received: latency={self.latency}, "
                             f"bandwidth={self.bandwidth}. HINT: give seconds and bytes per second.")

    @classmethod
    def from_figures(cls, latency_us, gbit_per_s, source="given figures"):
        """A link from published figures: latency in microseconds, bandwidth in Gbit/s."""
        return cls(latency_us * 1e-6, gbit_per_s * 1e9 / 8, source)

    @classmethod
    def fit(cls, points, n, source="measured"):
        """Fits `allreduce_seconds` to measured `(bytes, seconds)` points at `n` ranks.

        Relative least squares (each point weighs 1 / seconds^2): the sizes
        span decades, and an unweighted fit lets the noise of the largest
        message, where bandwidth dominates, set the latency that small
        messages pay.
        """
        if n < 2 or len(points) < 2:
            raise ValueError(f"Link.fit needs n >= 2 and 2 or more points. Received: n={n}, "
                             f"{len(points)} points. HINT: measure several message sizes on 2 or more ranks.")
        if any(t <= 0 for _, t in points):
            raise ValueError(f"Link.fit needs positive times. Received: {points}. HINT: pass (bytes, seconds) pairs.")
        xs = [b for b, _ in points]
        ys = [t for _, t in points]
        ws = [1 / t ** 2 for t in ys]
        total = sum(ws)
        mx = sum(w * x for w, x in zip(ws, xs)) / total
        my = sum(w * y for w, y in zip(ws, ys)) / total
        spread = sum(w * (x - mx) ** 2 for w, x in zip(ws, xs))
        if spread == 0:
            raise ValueError(f"Link.fit needs 2 or more message sizes. Received: {points}. "
                             "HINT: measure from KB to tens of MB.")
        slope = sum(w * (x - mx) * (y - my) for w, x, y in zip(ws, xs, ys)) / spread
        intercept = my - slope * mx
        if slope <= 0:
            raise ValueError(f"the measured allreduce times do not grow with the message size ({points}). "
                             "HINT: measure larger messages (up to tens of MB) or more repeats.")
        return cls(max(intercept, 0.0) / (2 * (n - 1)), 2 * (n - 1) / n / slope, source)

    def allreduce_seconds(self, nbytes, n):
        """Time of one ring allreduce of `nbytes` over `n` ranks (0 at one rank: nothing is sent)."""
        if n <= 1:
            return 0.0
        return 2 * (n - 1) / n * nbytes / self.bandwidth + 2 * (n - 1) * self.latency


@dataclasses.dataclass(frozen=True)
class Profile(_JsonFile):
    """One process's step: compute seconds at `batch_size` samples, gradient bytes sent per step.

    `step_seconds_spread` is the standard deviation of one step's time (0:
    every step takes the same time), from which the wait for the slowest
    rank is predicted.
    """

    MADE_BY = "make it with hvd_keras.planner.profile(model, x, y, batch_size).save(path) on one process."

    step_seconds: float
    gradient_bytes: int
    batch_size: int
    step_seconds_spread: float = 0.0

    def __post_init__(self):
        if not (self.step_seconds > 0 and self.step_seconds_spread >= 0 and self.gradient_bytes >= 0
                and self.batch_size >= 1):
            raise ValueError(f"Profile needs step_seconds > 0, step_seconds_spread >= 0, gradient_bytes >= 0 and "
                             f"batch_size >= 1. Received: step_seconds={self.step_seconds}, "
                             f"step_seconds_spread={self.step_seconds_spread}, gradient_bytes={self.gradient_bytes}, "
                             f"batch_size={self.batch_size}. HINT: give seconds, bytes and samples per rank, "
                             "as hvd_keras.planner.profile measures them.")


@dataclasses.dataclass(frozen=True)
class Prediction:
    """The predicted figures at `n` ranks."""

    n: int
    step_seconds: float
    allreduce_seconds: float
    samples_per_sec: float
    efficiency: float
    straggler_seconds: float = 0.0


class ScalingPlan(list):
    """The predictions for several sizes, as a list; `str(plan)` is the table."""

    def __init__(self, predictions, profile, link, overlap):
        super().__init__(predictions)
        self.profile, self.link, self.overlap = profile, link, overlap

    def at(self, n):
        """The prediction at `n` ranks (computed if `n` is not in the table)."""
        for p in self:
            if p.n == n:
                return p
        return predict_one(self.profile, self.link, n, self.overlap)

    def __str__(self):
        p, link = self.profile, self.link
        head = (f"model: {p.step_seconds * 1e3:.2f} ms compute per step (spread {p.step_seconds_spread * 1e3:.2f} ms) "
                f"at batch {p.batch_size} per rank, {p.gradient_bytes / 1e6:.2f} MB of gradients; link: latency "
                f"{link.latency * 1e6:.1f} us, bandwidth {link.bandwidth * 8 / 1e9:.2f} Gbit/s ({link.source}); "
                f"overlap {self.overlap:.2f}")
        rows = [head, f"{'ranks':>6} {'step ms':>10} {'allreduce ms':>13} {'stragglers ms':>14} {'samples/s':>12} "
                      f"{'efficiency':>11}"]
        rows += [f"{q.n:>6} {q.step_seconds * 1e3:>10.2f} {q.allreduce_seconds * 1e3:>13.2f} "
                 f"{q.straggler_seconds * 1e3:>14.2f} {q.samples_per_sec:>12.0f} {q.efficiency:>10.0%}" for q in self]
        return "\n".join(rows)


def predict_one(profile, link, n, overlap=0.0):
    """The `Prediction` at `n` ranks."""
    if not 0.0 <= overlap <= 1.0:
        raise ValueError(f"overlap must be in [0, 1]. Received: overlap={overlap}. "
                         "HINT: 0 for hvd_keras (allreduce after the backward pass).")
    compute = profile.step_seconds
    allreduce = link.allreduce_seconds(profile.gradient_bytes, n)
    stragglers = profile.step_seconds_spread * expected_max_of_normals(n)
    step = compute + stragglers + allreduce - min(overlap * allreduce, compute)
    return Prediction(n, step, allreduce, n * profile.batch_size / step, compute / step, stragglers)


@functools.lru_cache(maxsize=None)
def expected_max_of_normals(n):
    """E[max of `n` independent standard normal values]: 0 at 1, 0.564 at 2, 1.424 at 8, 3.04 at 512."""
    if n <= 1:
        return 0.0
    # The integral of x * n * pdf(x) * cdf(x)^(n-1), by the midpoint rule on [-9, 9].
    steps, lo, hi = 18000, -9.0, 9.0
    h = (hi - lo) / steps
    total = 0.0
    for i in range(steps):
        x = lo + (i + 0.5) * h
        cdf = 0.5 * (1 + math.erf(x / math.sqrt(2)))
        total += x * math.exp(-x * x / 2) * cdf ** (n - 1)
    return n * total * h / math.sqrt(2 * math.pi)


def predict(profile, link, sizes=DEFAULT_SIZES, overlap=0.0):
    """A `ScalingPlan`: the predictions for every size in `sizes`."""
    return ScalingPlan([predict_one(profile, link, int(n), overlap) for n in sizes], profile, link, overlap)


def gradient_bytes(model, bytes_per_value=None):
    """Bytes of gradients one step sends: every trainable weight, in its variable's dtype.

    `bytes_per_value=2` models fp16 compression (`Compression.fp16`).
    """
    import numpy as np

    total = 0
    for v in model.trainable_weights:
        size = int(np.prod(v.shape))
        total += size * (bytes_per_value or np.dtype(v.dtype).itemsize)
    return total


def profile(model, x, y, batch_size, steps=20, warmup=3, bytes_per_value=None):
    """Profiles one training step of a compiled `model` on this process; its weights are restored.

    Run it on one process. One batch of `x`, `y` is repeated through `fit`
    (so the time is `fit`'s per step, its callbacks and loop included):
    `warmup` steps (tracing) in a first epoch, then the mean of `steps` timed
    steps, and their spread (a standard deviation estimated from the
    interquartile range, so that a rare pause does not count as every
    step's variation). The spread needs 8 timed calls of the train
    function: at least 8 k steps are timed, k being `steps_per_execution`.
    Weights and optimizer state are put back afterwards.

    Example:

    ```python
    prof = hvd_keras.planner.profile(model, x, y, batch_size=64)
    prof.save("prof.json")  # for `hvd-keras plan --profile prof.json --link link.json`
    ```
    """
    from hvd_keras._horovod import keras, tf

    if getattr(model, "optimizer", None) is None:
        raise ValueError("profile needs a compiled model. HINT: call model.compile(...) first.")
    xb, yb = x[:batch_size], y[:batch_size]
    if len(xb) < batch_size:
        raise ValueError(f"profile needs one full batch. Received: {len(xb)} samples for "
                         f"batch_size={batch_size}. HINT: pass at least batch_size samples.")
    batches = tf.data.Dataset.from_tensors((xb, yb)).repeat()
    if not model.built:
        model(xb[:1])
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    weights = model.get_weights()
    opt_vars = [v.numpy() for v in model.optimizer.variables]
    model.fit(batches, steps_per_epoch=warmup, epochs=1, verbose=0, shuffle=False)
    # With steps_per_execution k a batch begins every k steps, and every one
    # of those k steps waits for the slowest rank: the spread of one step is
    # that of k independent ones divided by sqrt(k). robust_spread needs 8
    # intervals, so 8 calls at least are timed.
    per_call = max(int(getattr(model, "steps_per_execution", 1) or 1), 1)
    steps = max(int(steps), MIN_SPREAD_SAMPLES * per_call)
    starts = []

    # Batch beginnings only: a batch-end hook would make Keras dispatch every
    # batch end synchronously and change the step being timed.
    class Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            starts.append(time.perf_counter())

        def on_epoch_end(self, epoch, logs=None):
            starts.append(time.perf_counter())

    model.fit(batches, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False, callbacks=[Timer()])
    model.set_weights(weights)
    for v, value in zip(model.optimizer.variables, opt_vars):
        v.assign(value)
    durations = [b - a for a, b in zip(starts, starts[1:])]
    return Profile((starts[-1] - starts[0]) / steps, gradient_bytes(model, bytes_per_value), int(batch_size),
                   robust_spread(durations) / math.sqrt(per_call))


#: Fewest values from which `robust_spread` estimates a spread.
MIN_SPREAD_SAMPLES = 8


def robust_spread(values):
    """The standard deviation of `values` as their interquartile range estimates it (0 for fewer than 8)."""
    if len(values) < MIN_SPREAD_SAMPLES:
        return 0.0
    q1, _, q3 = statistics.quantiles(values, n=4)
    return (q3 - q1) / 1.349


def measure_allreduce(sizes_bytes=(4 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20), repeats=10):
    """Times one fused allreduce per message size on every rank of this job; returns `(n, points)`.

    Runs under a launch (`hvd-keras bench-allreduce` does it); the timed
    function is compiled, like the train step's allreduce, and its time
    includes Horovod's negotiation. Each point is the mean over `repeats`:
    a training run pays the mean, its tail included (a small message's time
    varies several-fold between repeats on a busy host).
    """
    from hvd_keras._horovod import hvd, tf
    from hvd_keras.runtime import barrier, init, size

    init()

    @tf.function
    def reduce(t):
        return hvd.grouped_allreduce([t], op=hvd.Average)[0]

    points = []
    for nbytes in sizes_bytes:
        t = tf.ones([max(int(nbytes) // 4, 1)], tf.float32)
        for _ in range(3):
            reduce(t)
        barrier(f"hvd_keras.bench.{nbytes}")
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            reduce(t).numpy()
            times.append(time.perf_counter() - start)
        points.append((int(nbytes), statistics.fmean(times)))
    return size(), points


def plan(model=None, x=None, y=None, batch_size=None, link=None, profile_=None, sizes=DEFAULT_SIZES,
         overlap=0.0):
    """Predicts step time, samples/s and scaling efficiency of `model` at several numbers of ranks.

    Args:
        model: a compiled Keras model, profiled on one batch of `x`, `y`
            (or pass `profile_`, a `Profile`, instead of the four).
        x, y: at least `batch_size` samples.
        batch_size: samples per step on each rank.
        link: a `Link` (`Link.load("link.json")` from `hvd-keras bench-allreduce`,
            or `Link.from_figures(latency_us, gbit_per_s)`).
        sizes: the numbers of ranks in the table.
        overlap: share of the allreduce hidden behind compute (0 for hvd_keras).

    Example:

    ```python
    link = hvd_keras.planner.Link.from_figures(latency_us=10, gbit_per_s=25)
    print(hvd_keras.plan(model, x, y, batch_size=64, link=link))
    ```
    """
    if link is None:
        raise ValueError("plan needs a link. HINT: run `hvd-keras bench-allreduce -np 2 -o link.json` and pass "
                         "link=Link.load('link.json'), or Link.from_figures(latency_us, gbit_per_s).")
    if profile_ is None:
        if model is None or x is None or y is None or batch_size is None:
            raise ValueError("plan needs model, x, y and batch_size (or profile_). HINT: "
                             "hvd_keras.plan(model, x, y, batch_size=64, link=link).")
        profile_ = profile(model, x, y, batch_size)
    return predict(profile_, link, sizes, overlap)


def measure_main(argv):
    """`measure_allreduce` on every rank; rank 0 fits the link, saves it to `argv[0]` and prints it."""
    from hvd_keras.runtime import is_chief

    n, points = measure_allreduce(repeats=int(argv[1]) if len(argv) > 1 else 10)
    if is_chief():
        link = Link.fit(points, n, source=f"measured at {n} ranks")
        link.save(argv[0])
        for nbytes, seconds in points:
            print(f"allreduce {nbytes / 1e6:10.3f} MB  {seconds * 1e3:9.3f} ms  "
                  f"(fit {link.allreduce_seconds(nbytes, n) * 1e3:9.3f} ms)", flush=True)
        print(f"link: latency {link.latency * 1e6:.1f} us, bandwidth {link.bandwidth * 8 / 1e9:.2f} Gbit/s "
              f"-> {argv[0]}", flush=True)

