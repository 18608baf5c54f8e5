"""One run of the resume matrix: train, maybe interrupt, maybe resume; leave what to compare.

--variant schedule | callback | monitor | accum | spe | savefreq | dataset
--interrupt none | epoch:E (every rank dies after epoch E's checkpoint)
            | step:S (every rank dies after step S) | preempt:S (SIGTERM to rank 1 after step S)
"""

import json
import os
import signal

import _common

_common.quiet_tf()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import hvd_keras  # noqa: E402

hvd_keras.init()
rank = hvd_keras.rank()
work = os.path.abspath(_common.arg("work"))
variant = _common.arg("variant")
interrupt = _common.arg("interrupt", "none")
epochs = 4
batch = 4
ckpt_dir = f"{work}/ckpt"

x, y = _common.regression_data(n=64)
xs, ys = hvd_keras.data.shard((x, y))
steps_per_epoch = len(xs) // batch
keras.utils.set_random_seed(7)
model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(8, "tanh"), keras.layers.Dense(3)])
lr = 0.05
if variant == "schedule":
    lr = hvd_keras.schedules.Warmup(0.1, warmup_steps=12)
accum = 2 if variant == "accum" else 1
optimizer = hvd_keras.DistributedOptimizer(keras.optimizers.SGD(lr, momentum=0.9),
                                           backward_passes_per_step=accum)
model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              metrics=["accuracy"], steps_per_execution=4 if variant == "spe" else 1)
initial_epoch = hvd_keras.resume(model, ckpt_dir)


class Interrupt(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.kind, _, at = interrupt.partition(":")
        self.at = int(at or 0)
        self.seen = int(model.optimizer.iterations.numpy()) * accum

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 4 if variant == "spe" else 1
        if self.kind == "step" and self.seen == self.at:
            os._exit(0)  # as a kill: nothing after this runs
        if self.kind == "preempt" and self.seen == self.at and rank == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_epoch_end(self, epoch, logs=None):
        if self.kind == "epoch" and epoch == self.at:
            os._exit(0)


checkpoint_kwargs = {"keep_last": 2}
if variant == "monitor":
    # Loss falls every epoch, so with mode="max" the first epoch stays the best:
    # a resumed run that forgot it would replace it.
    checkpoint_kwargs = {"keep_last": 1, "monitor": "loss", "mode": "max"}
if variant in ("savefreq", "dataset"):
    checkpoint_kwargs["save_freq"] = 3
callbacks = [hvd_keras.callbacks.BroadcastInitialState(),
             hvd_keras.callbacks.Checkpoint(ckpt_dir, **checkpoint_kwargs), Interrupt()]
if variant == "callback":
    callbacks.insert(1, hvd_keras.callbacks.LearningRateWarmup(2, steps_per_epoch))
data = (xs, ys)
if variant == "dataset":
    data = (tf.data.Dataset.from_tensor_slices((xs, ys)).batch(batch),)
history = model.fit(*data, batch_size=None if variant == "dataset" else batch, epochs=epochs,
                    initial_epoch=initial_epoch, shuffle=False, verbose=0, callbacks=callbacks)
names = sorted(n for n in os.listdir(ckpt_dir) if n.startswith("ckpt-"))
best = json.load(open(f"{ckpt_dir}/best.json")) if os.path.exists(f"{ckpt_dir}/best.json") else {}
_common.save_result(
    _common.arg("out"), rank,
    weights=_common.flat_weights(model.trainable_variables),
    optimizer=_common.flat_weights([v for v in model.optimizer.variables if v.dtype.startswith("float")]),
    epochs=np.array(history.epoch), loss=np.array(history.history["loss"]),
    accuracy=np.array(history.history["accuracy"]), names=np.array(names),
    best=json.dumps(best, sort_keys=True), initial_epoch=initial_epoch,
    learning_rate=float(model.optimizer.learning_rate.numpy()),
)
