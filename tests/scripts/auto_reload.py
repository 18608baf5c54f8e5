"""Under `import hvd_keras.auto`: compile twice with one optimizer, train, then rank 0 alone reloads and evaluates."""

import os

import _common

_common.quiet_tf()

import hvd_keras.auto  # noqa: E402,F401

import keras  # noqa: E402
import numpy as np  # noqa: E402

import hvd_keras  # noqa: E402

rank = hvd_keras.rank()
out = _common.arg("out")
x, y = _common.regression_data(n=64)
keras.utils.set_random_seed(3)
optimizer = keras.optimizers.SGD(0.05)
model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(3)])
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
first_rate = float(model.optimizer.learning_rate.numpy())
model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])  # the same optimizer again
model.fit(x, y, batch_size=8, epochs=2, verbose=0)
trained = model.evaluate(x, y, verbose=0, return_dict=True)
os.makedirs(out, exist_ok=True)
model.save(f"{out}/model.keras")
model.save(f"{out}/model.h5")
hvd_keras.barrier()
reloaded = {}
if rank == 0:  # the usual "reload the best model and evaluate it on rank 0"
    for fmt in ("keras", "h5"):
        again = keras.saving.load_model(f"{out}/model.{fmt}")
        reloaded[fmt] = again.evaluate(x, y, verbose=0, return_dict=True)["loss"]
        again.predict(x[:4], verbose=0)
hvd_keras.barrier()  # rank 1 waits here while rank 0 works alone
_common.save_result(out, rank, first_rate=first_rate, second_rate=float(model.optimizer.learning_rate.numpy()),
                    caller_rate=float(optimizer.learning_rate.numpy()), trained=trained["loss"],
                    **{f"reloaded_{k}": v for k, v in reloaded.items()})
