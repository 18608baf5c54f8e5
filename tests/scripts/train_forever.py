"""Trains a small MLP until killed; after a few steps each rank writes `ready<rank>` (pid, hostname)."""

import os
import socket

import _common

_common.quiet_tf()

import keras  # noqa: E402

import hvd_keras  # noqa: E402

hvd_keras.init()
rank = hvd_keras.rank()
out = _common.arg("out")
x, y = _common.regression_data(n=512)
xs, ys = hvd_keras.data.shard((x, y))
model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(3)])
model.compile(optimizer=hvd_keras.DistributedOptimizer(keras.optimizers.SGD(0.01)),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))


class Ready(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if batch == 3 and not os.path.exists(f"{out}/ready{rank}"):
            with open(f"{out}/ready{rank}.tmp", "w") as f:
                f.write(f"{os.getpid()} {socket.gethostname()}")
            os.replace(f"{out}/ready{rank}.tmp", f"{out}/ready{rank}")


model.fit(xs, ys, batch_size=2, epochs=int(_common.arg("epochs", "100000")), verbose=0,
          callbacks=[hvd_keras.callbacks.BroadcastInitialState(), Ready()])
print(f"rank {rank} COMPLETED", flush=True)
