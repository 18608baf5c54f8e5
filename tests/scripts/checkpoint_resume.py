"""Trains with Checkpoint (and resume) from a per-rank working directory.

Each rank works in <work>/rank<r>, with relative output paths, so any file a
rank writes lands in its own directory: rank 1's must stay empty. The
checkpoint directory is shared: <work>/ckpt.
"""

import os

import _common

_common.quiet_tf()

import keras  # noqa: E402
import numpy as np  # noqa: E402

import hvd_keras  # noqa: E402

hvd_keras.init()
rank = hvd_keras.rank()
work = os.path.abspath(_common.arg("work"))
epochs = int(_common.arg("epochs", "4"))
do_resume = _common.arg("resume", "no") == "yes"
ckpt = _common.arg("ckpt", f"{work}/ckpt")  # shared by default; a host's own /tmp in the multi-host test
os.makedirs(f"{work}/rank{rank}", exist_ok=True)
os.chdir(f"{work}/rank{rank}")

x, y = _common.regression_data(n=64)
xs, ys = hvd_keras.data.shard((x, y))
keras.utils.set_random_seed(5)
model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(8, "tanh"), keras.layers.Dense(3)])
model.compile(optimizer=hvd_keras.DistributedOptimizer(keras.optimizers.Adam(0.01)),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
hvd_keras.exact_metrics(model)
initial_epoch = hvd_keras.resume(model, ckpt) if do_resume else 0
callbacks = [
    hvd_keras.callbacks.BroadcastInitialState(),
    hvd_keras.callbacks.Checkpoint(ckpt, keep_last=2, monitor="val_loss"),
    keras.callbacks.CSVLogger("log.csv"),
    keras.callbacks.ModelCheckpoint("best.keras"),
]
model.fit(xs, ys, batch_size=8, epochs=epochs, initial_epoch=initial_epoch, shuffle=False,
          validation_data=(x[:16], y[:16]), **hvd_keras.rank_zero_output(callbacks, verbose=0))
_common.save_result(_common.arg("out"), rank, weights=_common.flat_weights(model.trainable_variables),
                    initial_epoch=initial_epoch)
