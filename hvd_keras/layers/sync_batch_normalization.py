"""SyncBatchNormalization layer."""

from hvd_keras import _compat, watchdog
from hvd_keras._horovod import hvd, keras, tf
from hvd_keras.runtime import size


@keras.saving.register_keras_serializable(package="hvd_keras")
class SyncBatchNormalization(keras.layers.BatchNormalization):
    """Batch normalization whose training statistics are those of the global batch, across all ranks.

    A plain `BatchNormalization` normalises each rank's batch by its own mean
    and variance, and each rank keeps moving statistics of its own (rank 0's
    are the ones saved): with small per-rank batches (detection,
    segmentation, large models) they are noisy. Here each training call sums
    the batch, the squares and the count over the ranks in one fused
    allreduce, so 2 ranks with batch `b` normalise as one process with batch
    `2b`, and the moving statistics are equal on every rank. Gradients flow
    through the allreduce. Inference, and training at size 1, are plain
    `BatchNormalization`. A model with `BatchNormalization(synchronized=True)`
    layers gets this behaviour on several ranks without changing them
    (`synchronize_batch_norms`, which hvd_keras applies when it builds the
    train function). A collective inside the forward pass cannot be
    compiled by XLA: such a model trains without hvd_keras's split XLA step.

    Args:
        **kwargs: those of `keras.layers.BatchNormalization`, except
            `renorm=True` (not supported).

    Example:

    ```python
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(16, 3),
                              hvd_keras.layers.SyncBatchNormalization(), keras.layers.ReLU()])
    ```
    """

    def __init__(self, **kwargs):
        if kwargs.get("renorm"):
            raise ValueError("SyncBatchNormalization does not support renorm. Received: renorm=True. HINT: use "
                             "renorm=False, or keras.layers.BatchNormalization(renorm=True) unsynchronised.")
        super().__init__(**kwargs)

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or size() == 1:
            return super().call(inputs, training=training, mask=mask)
        if mask is not None:
            raise ValueError("SyncBatchNormalization does not take a mask. Received: a mask of shape "
                             f"{mask.shape}. HINT: use keras.layers.BatchNormalization for masked inputs.")
        compute_dtype = tf.float32 if inputs.dtype in (tf.float16, tf.bfloat16) else inputs.dtype
        x = tf.cast(inputs, compute_dtype)
        channels = [a % len(x.shape) for a in (self.axis if isinstance(self.axis, (list, tuple)) else [self.axis])]
        axes = [i for i in range(len(x.shape)) if i not in channels]
        count = tf.cast(tf.reduce_prod(tf.gather(tf.shape(x), axes)), compute_dtype)
        local = [tf.reduce_sum(x, axis=axes), tf.reduce_sum(tf.square(x), axis=axes), tf.reshape(count, [1])]
        with watchdog.timed("hvd_keras.sync_batch_norm") if tf.executing_eagerly() else _nothing():
            total, squares, n = hvd.grouped_allreduce(local, op=hvd.Sum, name=f"hvd_keras.sync_bn.{self.name}")
        mean = total / n
        variance = tf.maximum(squares / n - tf.square(mean), 0.0)
        momentum = tf.cast(self.momentum, compute_dtype)
        self.moving_mean.assign(tf.cast(self.moving_mean, compute_dtype) * momentum + mean * (1 - momentum))
        self.moving_variance.assign(
            tf.cast(self.moving_variance, compute_dtype) * momentum + variance * (1 - momentum))
        shape = [1] * len(x.shape)
        for a in channels:
            shape[a] = x.shape[a]
        outputs = tf.nn.batch_normalization(
            x, tf.reshape(mean, shape), tf.reshape(variance, shape),
            offset=None if not self.center else tf.reshape(tf.cast(self.beta, compute_dtype), shape),
            scale=None if not self.scale else tf.reshape(tf.cast(self.gamma, compute_dtype), shape),
            variance_epsilon=self.epsilon)
        return tf.cast(outputs, self.compute_dtype)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def synchronize_batch_norms(model):
    """Makes every `BatchNormalization(synchronized=True)` of `model` a `SyncBatchNormalization`; returns their number.

    Keras synchronises those only under a tf.distribute strategy; under
    hvd_keras they would silently normalise each rank's batch alone. The
    objects stay the same (their class changes), so the model, its weights
    and references to its layers are kept.
    """
    changed = 0
    for layer in _compat.all_layers(model):
        if (type(layer) is keras.layers.BatchNormalization and getattr(layer, "synchronized", False)
                and not getattr(layer, "renorm", False)):
            _compat.set_class(layer, SyncBatchNormalization)
            changed += 1
    return changed


def has_collectives(model):
    """True when a layer of `model` runs a collective in its forward pass (which XLA cannot compile)."""
    return size() > 1 and any(isinstance(layer, SyncBatchNormalization) for layer in _compat.all_layers(model))
