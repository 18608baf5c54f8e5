"""MetricAverage callback."""

from hvd_keras._horovod import hvd, keras, tf
from hvd_keras.runtime import size


class MetricAverage(keras.callbacks.Callback):
    """Averages the epoch-end logs of all ranks (what Horovod offers).

    Each rank's value of each metric is averaged with equal weight. That is
    exact for means over equal-sized shards, but not for ratios such as
    precision, recall or F1 when ranks see different class mixes: use
    `hvd_keras.exact_metrics(model)` for those. Put it first in the callback
    list so that later callbacks see the averaged values.

    Example:

    ```python
    model.fit(x, y, callbacks=[hvd_keras.callbacks.MetricAverage(), keras.callbacks.CSVLogger("log.csv")])
    ```
    """

    def on_epoch_end(self, epoch, logs=None):
        if not logs or size() == 1:
            return
        keys = sorted(k for k, v in logs.items() if _is_number(v))
        values = [tf.cast(tf.convert_to_tensor(logs[k]), tf.float64) for k in keys]
        averaged = hvd.grouped_allreduce(values, op=hvd.Average, name="hvd_keras.metric_average")
        for k, v in zip(keys, averaged):
            logs[k] = v.numpy()


def _is_number(value):
    try:
        tf.convert_to_tensor(value, tf.float64)
        return True
    except (TypeError, ValueError):
        return False
