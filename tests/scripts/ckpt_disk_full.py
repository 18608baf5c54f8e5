"""Checkpoint onto a filesystem that fills up after the first save: every rank must stop with rank 0's reason."""

import os

import _common

_common.quiet_tf()

import keras  # noqa: E402

import hvd_keras  # noqa: E402

hvd_keras.init()
x, y = _common.regression_data(n=32)
directory = _common.arg("dir")


class FillDisk(keras.callbacks.Callback):
    """After the first epoch's checkpoint, rank 0 fills the filesystem it lives on."""

    def on_epoch_end(self, epoch, logs=None):
        print(f"rank {hvd_keras.rank()} ended epoch {epoch}", flush=True)
        if epoch == 0 and hvd_keras.rank() == 0:
            with open(os.path.join(os.path.dirname(directory), "filler"), "wb") as f:
                try:
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
                except OSError:
                    pass


model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(3)])
model.compile(optimizer=hvd_keras.DistributedOptimizer(keras.optimizers.SGD(0.1)),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
model.fit(*hvd_keras.data.shard((x, y)), batch_size=4, epochs=3, verbose=0,
          callbacks=[hvd_keras.callbacks.Checkpoint(directory), FillDisk()])
print(f"rank {hvd_keras.rank()} finished fit", flush=True)
