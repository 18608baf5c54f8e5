"""Data split by hand so that rank 1 has half the batches of rank 0."""

import _common

_common.quiet_tf()

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import hvd_keras  # noqa: E402

hvd_keras.init()
rank = hvd_keras.rank()
kind = _common.arg("kind")
x, y = _common.regression_data(n=64)
n = 32 if rank == 0 else 16  # 8 or 4 batches of 4
xs, ys = x[:n], y[:n]


class Batches(keras.utils.PyDataset):
    def __len__(self):
        return n // 4

    def __getitem__(self, i):
        return xs[4 * i:4 * i + 4], ys[4 * i:4 * i + 4]


class Steps(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        print(f"rank {rank} trained a step", flush=True)


model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(3)])
model.compile(optimizer=hvd_keras.DistributedOptimizer(keras.optimizers.SGD(0.1)),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
data = {"numpy": (xs, ys), "dataset": (tf.data.Dataset.from_tensor_slices((xs, ys)).batch(4),),
        "pydataset": (Batches(),)}[kind]
model.fit(*data, batch_size=4 if kind == "numpy" else None, epochs=1, verbose=0, callbacks=[Steps()])
