"""Shards n samples (uneven on purpose) and trains one epoch; records what each rank saw."""

import _common

_common.quiet_tf()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import hvd_keras  # noqa: E402

hvd_keras.init()
rank = hvd_keras.rank()
n = int(_common.arg("samples", "101"))
kind = _common.arg("kind", "numpy")
ids = np.arange(n, dtype="float32").reshape(-1, 1)
y = np.zeros((n, 1), "float32")

if kind == "numpy":
    x_shard, y_shard = hvd_keras.data.shard((ids, y))
    fit_args = dict(x=x_shard, y=y_shard, batch_size=8)
    seen = x_shard[:, 0]
else:
    ds = hvd_keras.data.shard(tf.data.Dataset.from_tensor_slices((ids, y)))
    seen = np.array([float(a[0]) for a, _ in ds.as_numpy_iterator()])
    fit_args = dict(x=ds.batch(8))


class CountBatches(keras.callbacks.Callback):
    batches = 0

    def on_train_batch_end(self, batch, logs=None):
        CountBatches.batches += 1


model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
model.compile(optimizer=hvd_keras.DistributedOptimizer(keras.optimizers.SGD(1e-6)), loss="mse")
model.fit(**fit_args, epochs=2, verbose=0, shuffle=False,
          callbacks=[CountBatches(), hvd_keras.callbacks.BroadcastInitialState()])
_common.save_result(_common.arg("out"), rank, seen=seen, batches=CountBatches.batches)
