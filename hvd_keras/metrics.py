"""Exact global metrics: metric states are summed across ranks before `result()`."""

import contextlib
import types

from hvd_keras import _compat
from hvd_keras._horovod import hvd, tf
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

    model.get_metrics_result = types.MethodType(get_metrics_result, model)
    model._hvd_exact_metrics = True
    return model
