"""Long training with Checkpoint; the test signals one rank mid-epoch."""

import os

import _common

_common.quiet_tf()

import keras  # noqa: E402

import hvd_keras  # noqa: E402

hvd_keras.init()
rank = hvd_keras.rank()
out = _common.arg("out")
x, y = _common.regression_data(n=512)
xs, ys = hvd_keras.data.shard((x, y))
if _common.arg("seed"):
    keras.utils.set_random_seed(int(_common.arg("seed")))
model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(3)])
model.compile(optimizer=hvd_keras.DistributedOptimizer(keras.optimizers.SGD(0.01)),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
initial_epoch = hvd_keras.resume(model, f"{out}/ckpt")


class Ready(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if batch == 3 and not os.path.exists(f"{out}/pid{rank}"):
            with open(f"{out}/pid{rank}.tmp", "w") as f:
                f.write(str(os.getpid()))
            os.replace(f"{out}/pid{rank}.tmp", f"{out}/pid{rank}")


class Ended(keras.callbacks.Callback):
    # After Checkpoint in the list: its on_train_end must run too (a CSVLogger closes its file there).
    def on_train_end(self, logs=None):
        open(f"{out}/ended{rank}", "w").close()


epochs = int(_common.arg("epochs", "100000"))
model.fit(xs, ys, batch_size=2, epochs=epochs, initial_epoch=initial_epoch, verbose=0,
          shuffle=_common.arg("shuffle", "yes") == "yes",
          callbacks=[hvd_keras.callbacks.BroadcastInitialState(), Ready(),
                     hvd_keras.callbacks.Checkpoint(f"{out}/ckpt", save_freq="epoch"), Ended()])
if _common.arg("weights"):
    _common.save_result(_common.arg("weights"), rank, weights=_common.flat_weights(model.trainable_variables))
print(f"rank {rank} COMPLETED from initial_epoch {initial_epoch}", flush=True)
