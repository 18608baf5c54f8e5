"""A plain Keras script (plus the auto import) that counts the samples it trains on
and writes files with relative paths from a per-rank working directory."""

import os

import _common

_common.quiet_tf()
import hvd_keras.auto  # noqa: E402,F401  (the one line)
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import hvd_keras  # noqa: E402  (only to name the per-rank directory and save results)

n, epochs = 101, 3
rank = hvd_keras.rank()
os.makedirs(f"{_common.arg('work')}/rank{rank}", exist_ok=True)
os.chdir(f"{_common.arg('work')}/rank{rank}")


class CountIds(keras.layers.Layer):
    """Adds one to counts[id] for every sample a training step sees."""

    def build(self, input_shape):
        self.counts = self.add_weight(shape=(n,), initializer="zeros", trainable=False, name="counts")

    def call(self, x, training=False):
        if training:
            ids = tf.cast(x[:, 0], tf.int32)
            self.counts.assign_add(tf.reduce_sum(tf.one_hot(ids, n), axis=0))
        return x[:, 1:]


x = np.concatenate([np.arange(n)[:, None], np.random.default_rng(0).normal(size=(n, 3))], 1).astype("float32")
y = (x[:, 1] > 0).astype("float32")
inputs = keras.Input((4,))
counter = CountIds()
outputs = keras.layers.Dense(1, activation="sigmoid")(counter(inputs))
model = keras.Model(inputs, outputs)
model.compile(optimizer="sgd", loss="binary_crossentropy", metrics=["accuracy"])


class Batches(keras.utils.PyDataset):
    """Batches of 8 of (x, y); the last batch has the 5 left over."""

    def __len__(self):
        return -(-n // 8)

    def __getitem__(self, i):
        return x[8 * i:8 * (i + 1)], y[8 * i:8 * (i + 1)]


if _common.arg("kind", "numpy") == "pydataset":
    data = dict(x=Batches(workers=2, max_queue_size=4), validation_data=Batches())
else:
    data = dict(x=x, y=y, batch_size=8, validation_data=(x, y))
history = model.fit(**data, epochs=epochs, callbacks=[keras.callbacks.CSVLogger("log.csv"),
                                                      keras.callbacks.ModelCheckpoint("ckpt.keras")])
model.save("model.keras")
model.save_weights("model.weights.h5")
result = model.evaluate(x, y, return_dict=True, verbose=0)
_common.save_result(_common.arg("out"), rank, counts=np.asarray(counter.counts), accuracy=result["accuracy"],
                    val_loss=np.asarray(history.history["val_loss"]),
                    loss=result["loss"], files=np.array(sorted(os.listdir("."))))
