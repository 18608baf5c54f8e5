"""Exact global metrics: metric states are summed across ranks before `result()`."""

import contextlib
import types

import numpy as np

from hvd_keras import _compat, watchdog
from hvd_keras._horovod import hvd, keras, tf
from hvd_keras.runtime import size

_OPS = {"sum": hvd.Sum, "mean": hvd.Average}


@contextlib.contextmanager
def global_metric_states(metrics):
    """Within the block, every metric holds the state of all ranks together.

    Each state variable is combined across ranks by its Keras `aggregation`
    (`"sum"`, the default for metrics, is summed: totals, counts, confusion
    counts; `"mean"` is averaged); one fused allreduce per kind. On exit the
    local states come back, so accumulation goes on as before. Every rank
    must enter it at the same point. Eager only; a no-op at size 1.

    Args:
        metrics: a list of `keras.metrics.Metric`.
    """
    if size() == 1:
        yield
        return
    groups = {}
    for metric in metrics:
        for v in metric.variables:
            aggregation = _compat.variable_aggregation(v)
            if aggregation in _OPS:
                groups.setdefault(aggregation, []).append(v)
    saved = []
    for aggregation in sorted(groups):
        variables = groups[aggregation]
        local = [tf.identity(tf.convert_to_tensor(v)) for v in variables]
        with watchdog.timed(f"hvd_keras.metrics.{aggregation}"):
            reduced = hvd.grouped_allreduce(local, op=_OPS[aggregation],
                                            name=f"hvd_keras.metrics.{aggregation}")
        for v, value in zip(variables, reduced):
            v.assign(value)
        saved.append((variables, local))
    try:
        yield
    finally:
        for variables, local in saved:
            for v, value in zip(variables, local):
                v.assign(value)


def _to_numpy(results):
    return {k: v.numpy() if hasattr(v, "numpy") else v for k, v in results.items()}


def exact_metrics(model):
    """Makes `model`'s reported metrics exact over all ranks' data.

    After this, the logs that `fit` gives callbacks at each epoch end (training
    and validation) and the results of `evaluate` equal the single-process
    values on the union of the ranks' data, for every metric whose state is a
    sum of counts or totals (loss, accuracy, precision, recall, F1, AUC,
    confusion-matrix metrics). Every rank reports the same numbers, so
    `EarlyStopping`, `ReduceLROnPlateau` and best-model checkpoints decide the
    same on every rank. Per-batch values inside the compiled step stay local:
    nothing is added to the training step, one allreduce per epoch end and per
    `evaluate`.

    Args:
        model: a `keras.Model`; returned for chaining.

    Example:

    ```python
    model = hvd_keras.exact_metrics(model)
    model.compile(optimizer=..., loss=..., metrics=["accuracy", keras.metrics.AUC()])
    ```
    """
    if getattr(model, "_hvd_exact_metrics", False):
        return model
    local_result = model.get_metrics_result

    def get_metrics_result(self):
        # Keras calls this eagerly for epoch and evaluate logs, and while
        # tracing the compiled step, where the values must stay local.
        if not tf.executing_eagerly() or getattr(self, "_hvd_local_metrics", False):
            return local_result()
        with global_metric_states(self.metrics):
            return _to_numpy(local_result())

    def metrics_result_or_logs(self, logs, local_logs):
        # Keras takes the metrics' results where the step's logs have their
        # names, else the last step's logs as they are: a custom train_step
        # returning other names (the guide's {m.name: m.result() for m in
        # self.metrics}, a raw loss) got each rank's own values.
        if not tf.executing_eagerly() or getattr(self, "_hvd_local_metrics", False):
            return local_logs(logs)
        results = self.get_metrics_result()
        if not isinstance(logs, dict) or set(logs) == set(results):
            return results if isinstance(logs, dict) else local_logs(logs)
        return _exact_logs(self, logs)

    model.get_metrics_result = types.MethodType(get_metrics_result, model)
    _compat.wrap_metrics_result_or_logs(model, metrics_result_or_logs)
    model._hvd_exact_metrics = True
    return model


def _reachable_metrics(model):
    """Every metric of the model by name: `model.metrics`, their sub-metrics (compiled ones), and attributes."""
    found = {}
    queue = list(model.metrics) + [v for v in vars(model).values() if isinstance(v, keras.metrics.Metric)]
    while queue:
        metric = queue.pop(0)
        if metric.name not in found:
            found[metric.name] = metric
            queue += [m for m in getattr(metric, "metrics", []) if isinstance(m, keras.metrics.Metric)]
    return found


def _exact_logs(model, logs):
    """The step's logs made exact over all ranks, whatever their names.

    A log named after a metric of the model (a tracker, a compiled metric,
    the "compile_metrics" container) becomes that metric's result on the
    states of all ranks; any other number (a raw loss tensor) becomes its
    mean over the ranks, the global value of a per-batch mean on equal shards.
    """
    metrics = _reachable_metrics(model)
    named = {k: metrics[k] for k in logs if k in metrics}
    others = sorted(k for k in logs if k not in named and _is_number(logs[k]))
    with global_metric_states(list(named.values())):
        exact = {k: _numpy(m.result()) for k, m in named.items()}
    if others and size() > 1:
        values = [tf.cast(tf.convert_to_tensor(logs[k]), tf.float64) for k in others]
        with watchdog.timed("hvd_keras.metrics.logs"):
            averaged = hvd.grouped_allreduce(values, op=hvd.Average, name="hvd_keras.metrics.logs")
        exact.update({k: v.numpy() for k, v in zip(others, averaged)})
    return {k: exact.get(k, logs[k]) for k in logs}


def _is_number(value):
    return tf.is_tensor(value) or isinstance(value, (int, float, np.number, np.ndarray))


def _numpy(result):
    if isinstance(result, dict):
        return {k: _numpy(v) for k, v in result.items()}
    return result.numpy() if hasattr(result, "numpy") else result
