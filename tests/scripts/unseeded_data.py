"""Plain Keras data code with unseeded randomness, run under `import hvd_keras.auto`; counts what each rank trains on.

--kind shuffled-dataset: `from_tensor_slices(...).shuffle(1024).batch(64)` on 1,200 samples, 1 epoch;
--kind permuted-numpy: `np.random.permutation` of the samples, then `validation_split=0.2`;
--kind dropout: a Dropout layer's masks on equal weights and equal inputs.
Writes OUT/rank<r>.npz.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

import hvd_keras.auto  # noqa: E402,F401
import tensorflow as tf  # noqa: E402

# One thread each (two ranks, two cores); no seed: the script's randomness is its own.
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
import keras  # noqa: E402
import numpy as np  # noqa: E402

import hvd_keras  # noqa: E402

kind = _common.arg("kind")
rank = hvd_keras.rank()
n = 1200


class CountIds(keras.layers.Layer):
    """Counts the sample ids (column 0) that training steps see, and those that other calls see."""

    def build(self, input_shape):
        self.trained = self.add_weight(shape=(n,), initializer="zeros", trainable=False, name="trained")
        self.seen = self.add_weight(shape=(n,), initializer="zeros", trainable=False, name="seen")

    def call(self, x, training=False):
        counts = tf.reduce_sum(tf.one_hot(tf.cast(x[:, 0], tf.int32), n), axis=0)
        (self.trained if training else self.seen).assign_add(counts)
        return x[:, 1:]


x = np.concatenate([np.arange(n)[:, None], np.random.default_rng(0).normal(size=(n, 3))], 1).astype("float32")
y = (x[:, 1] > 0).astype("float32")
inputs = keras.Input((4,))
counter = CountIds()
hidden = counter(inputs)
if kind == "dropout":
    hidden = keras.layers.Dropout(0.5)(keras.layers.Dense(64)(hidden))
model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(hidden))
model.compile(optimizer="sgd", loss="binary_crossentropy")

if kind == "shuffled-dataset":
    model.fit(tf.data.Dataset.from_tensor_slices((x, y)).shuffle(1024).batch(64), epochs=1, verbose=0)
elif kind == "permuted-numpy":
    order = np.random.permutation(n)
    model.fit(x[order], y[order], batch_size=32, epochs=1, validation_split=0.2, verbose=0)
elif kind == "dropout":
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    masks = model(x[:64], training=True).numpy()
    _common.save_result(_common.arg("out"), rank, masks=masks,
                        weights=_common.flat_weights(model.trainable_variables))
    raise SystemExit(0)
_common.save_result(_common.arg("out"), rank, trained=np.asarray(counter.trained), seen=np.asarray(counter.seen))
