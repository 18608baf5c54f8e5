"""Keras layers for distributed training, one class per module."""

from hvd_keras.layers.sync_batch_normalization import (
    SyncBatchNormalization,
    has_collectives,
    synchronize_batch_norms,
)

__all__ = ["SyncBatchNormalization", "has_collectives", "synchronize_batch_norms"]
