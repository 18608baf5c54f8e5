"""A small model with batch normalization, trained on 1 process with batch 2b or on 2 ranks with b each.

--layer sync (hvd_keras.layers.SyncBatchNormalization) | flag (BatchNormalization(synchronized=True)) |
plain (BatchNormalization); --jit yes|auto-gpu|no. Writes OUT/rank<r>.npz: trained weights, the moving statistics,
and the model's output in inference.
"""

import _common

jit = _common.arg("jit", "no")
_common.quiet_tf(deterministic=jit == "no")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import hvd_keras  # noqa: E402

hvd_keras.init()
rank, size = hvd_keras.rank(), hvd_keras.size()
if jit == "auto-gpu":
    _common.pretend_gpu()
layer = _common.arg("layer", "sync")
x, y = _common.regression_data(n=16 * 6)
x = x * np.linspace(0.5, 3.0, x.shape[1]).astype("float32") + 2.0  # statistics far from 0 and 1


def norm():
    if layer == "sync":
        return hvd_keras.layers.SyncBatchNormalization(momentum=0.8)
    return keras.layers.BatchNormalization(momentum=0.8, synchronized=layer == "flag")


keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(8), norm(), keras.layers.ReLU(),
                          keras.layers.Dense(3)])
model.compile(optimizer=hvd_keras.DistributedOptimizer(keras.optimizers.SGD(0.1)),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              **({} if jit.startswith("auto") else {"jit_compile": jit == "yes"}))
xs, ys = hvd_keras.data.shard((x, y))
model.fit(xs, ys, batch_size=16 // size, epochs=2, shuffle=False, verbose=0,
          callbacks=[hvd_keras.callbacks.BroadcastInitialState()])
bn = model.layers[1]
_common.save_result(_common.arg("out"), rank, weights=_common.flat_weights(model.trainable_variables),
                    moving=_common.flat_weights([bn.moving_mean, bn.moving_variance]),
                    predicted=model.predict(x[:8], verbose=0), layer_class=type(bn).__name__,
                    xla_split=hvd_keras.train_function.uses_xla_split(model))
