"""Records the learning rate and SGD momentum buffers at every step of a warmup."""

import _common

_common.quiet_tf()

import keras  # noqa: E402
import numpy as np  # noqa: E402

import hvd_keras  # noqa: E402

hvd_keras.init()
form = _common.arg("form", "schedule")
steps_per_epoch, warmup_epochs, epochs, base = 4, 2, 3, 0.2
x, y = _common.regression_data(n=steps_per_epoch * 8 * hvd_keras.size())
xs, ys = hvd_keras.data.shard((x, y))
model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(3)])
callbacks = [hvd_keras.callbacks.BroadcastInitialState()]
if form == "schedule":
    lr = hvd_keras.schedules.Warmup(base, warmup_steps=warmup_epochs * steps_per_epoch)
else:
    lr = base
    callbacks.append(hvd_keras.callbacks.LearningRateWarmup(warmup_epochs, steps_per_epoch))
opt = hvd_keras.DistributedOptimizer(keras.optimizers.SGD(lr, momentum=0.9))
model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))


class Record(keras.callbacks.Callback):
    lrs, m_begin, m_end = [], [], []

    def on_train_batch_begin(self, batch, logs=None):
        self.lrs.append(float(opt.learning_rate.numpy()))
        self.m_begin.append(_common.flat_weights(opt.momentums))

    def on_train_batch_end(self, batch, logs=None):
        self.m_end.append(_common.flat_weights(opt.momentums))


model.fit(xs, ys, batch_size=8, epochs=epochs, shuffle=False, verbose=0, callbacks=callbacks + [Record()])
_common.save_result(_common.arg("out"), hvd_keras.rank(), lrs=np.array(Record.lrs),
                    m_begin=np.array(Record.m_begin), m_end=np.array(Record.m_end),
                    weights=_common.flat_weights(model.trainable_variables))
