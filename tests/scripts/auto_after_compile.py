"""A script that compiles before importing hvd_keras.auto (a user mistake)."""

import _common

_common.quiet_tf()
import keras  # noqa: E402
import numpy as np  # noqa: E402

model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
model.compile(optimizer="sgd", loss="mse")
import hvd_keras.auto  # noqa: E402,F401

model.fit(np.ones((8, 3)), np.ones((8, 1)), verbose=0)
print("UNREACHABLE")
