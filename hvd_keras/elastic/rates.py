"""The learning rate of an elastic job as its size changes.

Two modes (`fit(..., batch_mode=...)`):

- `"global"`: the global batch stays the same at every size (each rank
  trains `batch_size // size` samples per step), so the optimisation is the
  same and so is the learning rate.
- `"per_rank"`: each rank keeps its batch, so the global batch follows the
  size; the learning rate follows it too (the linear scaling rule: rate
  times new size over old size), and SGD's momentum buffers are rescaled by
  the same factor: Keras's velocity carries the rate (`m = mu * m - lr * g`),
  and without the correction the first steps after a resize would move with
  the old rate's momentum (Goyal et al. 2017).

Horovod's elastic example sets the rate with
`K.set_value(model.optimizer.lr, ...)`: Keras 3 has neither
`keras.backend.set_value` nor an `lr` attribute on its optimizers. Here the
rate is the optimizer's `learning_rate` variable, which the elastic state
commits, restores and syncs with the other optimizer variables.
"""

from hvd_keras import _compat
from hvd_keras._horovod import keras

MODES = ("global", "per_rank")


def check_mode(batch_mode):
    if batch_mode not in MODES:
        raise ValueError(
            f"batch_mode must be one of {MODES}. Received: batch_mode={batch_mode!r}. HINT: \"global\" keeps the "
            "global batch and the learning rate at every size; \"per_rank\" keeps each rank's batch and scales "
            "the rate with the size.")
    return batch_mode


def _inner(optimizer):
    return getattr(optimizer, "inner_optimizer", optimizer)  # a LossScaleOptimizer's


def learning_rate(optimizer):
    """The optimizer's current learning rate as a Python float."""
    return float(keras.ops.convert_to_numpy(_inner(optimizer).learning_rate))


def rescale(optimizer, factor, momentum_correction=True):
    """Multiplies the optimizer's learning rate by `factor`, and SGD's momentum buffers with it.

    Args:
        optimizer: a Keras 3 optimizer (distributed or not) with a float rate.
        factor: new size over old size.
        momentum_correction: rescale the momentum buffers too (Keras SGD's
            velocity carries the rate).

    Example:

    ```python
    hvd_keras.elastic.rates.rescale(model.optimizer, 3 / 2)  # 2 ranks became 3, per-rank batch kept
    ```
    """
    inner = _inner(optimizer)
    if _compat.learning_rate_schedule(inner) is not None:
        raise ValueError(
            "batch_mode=\"per_rank\" scales a float learning rate with the job's size; the optimizer has a "
            f"schedule ({type(_compat.learning_rate_schedule(inner)).__name__}). HINT: use batch_mode=\"global\", "
            "which keeps the global batch and the rate at every size.")
    if factor == 1:
        return
    old = learning_rate(inner)
    inner.learning_rate = old * factor
    momentums = getattr(inner, "momentums", None)
    if momentum_correction and momentums and getattr(inner, "momentum", 0):
        for m in momentums:
            m.assign(m * factor)
