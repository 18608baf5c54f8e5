"""An optimizer whose update skips the path where hvd_keras reduces gradients.

Stands for a Keras release that changed the optimizer internals: the wrapper
must refuse to train rather than let ranks drift apart.
"""

import _common

_common.quiet_tf()

import keras  # noqa: E402
import numpy as np  # noqa: E402

import hvd_keras  # noqa: E402


class ShortcutSGD(keras.optimizers.SGD):
    def _backend_apply_gradients(self, grads, trainable_variables):
        self._backend_update_step(grads, trainable_variables, self.learning_rate)


hvd_keras.init()
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
model.compile(optimizer=hvd_keras.DistributedOptimizer(ShortcutSGD(0.1)), loss="mse")
model.fit(np.ones((16, 4)), np.ones((16, 1)), epochs=1, verbose=0)
print(f"TRAINED on {hvd_keras.size()} ranks")
