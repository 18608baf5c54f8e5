"""Rank 1 stops answering (sleeps inside a batch) at step 3; rank 0 waits in the gradient allreduce."""

import time

import _common

_common.quiet_tf()

import keras  # noqa: E402

import hvd_keras  # noqa: E402

hvd_keras.init()
x, y = _common.regression_data(n=256)
xs, ys = hvd_keras.data.shard((x, y))
model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(3)])
model.compile(optimizer=hvd_keras.DistributedOptimizer(keras.optimizers.SGD(0.01)),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))


class Hang(keras.callbacks.Callback):
    def on_train_batch_begin(self, batch, logs=None):
        if hvd_keras.rank() == 1 and batch == 3:
            time.sleep(600)


model.fit(xs, ys, batch_size=4, epochs=1, verbose=0, callbacks=[hvd_keras.callbacks.BroadcastInitialState(), Hang()])
print("TRAINED", flush=True)
