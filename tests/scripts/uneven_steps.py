"""Data split by hand so that rank 1 has half the batches of rank 0.

`--kind evaluate`: evaluation with exact metrics on such data, which is
allowed: it must give the single-process result on the union of the data.
"""

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


keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(3)])
if kind == "evaluate":
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    plain = keras.models.clone_model(model)
    plain.set_weights(model.get_weights())
    plain.compile(loss=loss, metrics=["accuracy"])
    hvd_keras.exact_metrics(model).compile(loss=loss, metrics=["accuracy"])
    mine = x[:32] if rank == 0 else x[32:48], y[:32] if rank == 0 else y[32:48]
    got = model.evaluate(*mine, batch_size=4, verbose=0, return_dict=True)
    union = plain.evaluate(x[:48], y[:48], batch_size=4, verbose=0, return_dict=True)
    _common.save_result(_common.arg("out"), rank, loss=got["loss"], accuracy=got["accuracy"],
                        union_loss=union["loss"], union_accuracy=union["accuracy"])
    raise SystemExit(0)
model.compile(optimizer=hvd_keras.DistributedOptimizer(keras.optimizers.SGD(0.1)),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
data = {"numpy": (xs, ys), "dataset": (tf.data.Dataset.from_tensor_slices((xs, ys)).batch(4),),
        "pydataset": (Batches(),)}[kind]
model.fit(*data, batch_size=4 if kind == "numpy" else None, epochs=1, verbose=0, callbacks=[Steps()])
