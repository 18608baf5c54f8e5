"""Saves checkpoints in a loop until killed (the kill -9 atomicity test)."""

import _common

_common.quiet_tf()

import keras  # noqa: E402

from hvd_keras import checkpoint  # noqa: E402

directory = _common.arg("dir")
model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(512), keras.layers.Dense(512),
                          keras.layers.Dense(10)])
model.compile(optimizer="adam", loss="mse")
model.optimizer.build(model.trainable_variables)
step = max([int(p.rsplit("-", 1)[1]) for p in checkpoint.list_checkpoints(directory)] or [0])
print("saving", flush=True)
while True:
    step += 1
    checkpoint.save_checkpoint(model, directory, initial_epoch=step, global_step=step)
