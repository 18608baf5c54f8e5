"""Builds a model whose layer width depends on the rank (a user bug)."""

import _common

_common.quiet_tf()

import keras  # noqa: E402
import numpy as np  # noqa: E402

import hvd_keras  # noqa: E402

hvd_keras.init()
width = 8 + hvd_keras.rank()
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(width), keras.layers.Dense(1)])
model.compile(optimizer=hvd_keras.DistributedOptimizer(keras.optimizers.SGD(0.1)), loss="mse")
where = _common.arg("where", "broadcast")
callbacks = [hvd_keras.callbacks.BroadcastInitialState()] if where == "broadcast" else []
model.fit(np.ones((16, 4)), np.ones((16, 1)), epochs=1, verbose=0, callbacks=callbacks)
print("UNREACHABLE: training finished")
