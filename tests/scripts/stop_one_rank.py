"""One rank decides to stop (a NaN it alone saw, its own callback); every rank must stop after the same step."""

import _common

_common.quiet_tf()

import keras  # noqa: E402
import numpy as np  # noqa: E402

import hvd_keras  # noqa: E402

hvd_keras.init()
rank = hvd_keras.rank()
mode = _common.arg("mode")
x, y = _common.regression_data(n=64)
xs, ys = hvd_keras.data.shard((x, y))  # 32 samples per rank: 8 steps of 4 per epoch
if mode == "nan" and rank == 1:
    xs = xs.copy()
    xs[4 * 2] = np.nan  # batch 2 of epoch 0, on rank 1 only


class StopRankOne(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if mode == "batch" and rank == 1 and self.epoch == 1 and batch == 3:
            self.model.stop_training = True

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if mode == "epoch" and rank == 1 and epoch == 0:
            self.model.stop_training = True


model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(3)])
model.compile(optimizer=hvd_keras.DistributedOptimizer(keras.optimizers.SGD(0.1)),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              jit_compile=_common.arg("jit", "0") == "1")
callbacks = [hvd_keras.callbacks.BroadcastInitialState(), StopRankOne()]
if mode == "nan":
    callbacks.append(keras.callbacks.TerminateOnNaN())
history = model.fit(xs, ys, batch_size=4, epochs=4, verbose=0, shuffle=False, callbacks=callbacks)
_common.save_result(_common.arg("out"), rank, steps=int(model.optimizer.iterations.numpy()),
                    epochs=len(history.epoch), keys=",".join(sorted(history.history)),
                    # the agreed flags came back as an output of the last step
                    returned=int(hvd_keras.preemption.requests.steps_returned > 0))
