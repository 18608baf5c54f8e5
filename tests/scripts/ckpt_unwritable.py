"""Checkpoint into a directory rank 0 cannot create: every rank must stop before the first step."""

import _common

_common.quiet_tf()

import keras  # noqa: E402

import hvd_keras  # noqa: E402

hvd_keras.init()
x, y = _common.regression_data(n=32)


class Steps(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        print(f"rank {hvd_keras.rank()} trained a step", flush=True)


model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(3)])
model.compile(optimizer=hvd_keras.DistributedOptimizer(keras.optimizers.SGD(0.1)),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
model.fit(*hvd_keras.data.shard((x, y)), batch_size=4, epochs=1, verbose=0,
          callbacks=[hvd_keras.callbacks.Checkpoint("/proc/hvd_keras_no_such_dir"), Steps()])
