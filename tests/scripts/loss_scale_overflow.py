"""Mixed float16 on 2 ranks where one batch overflows on rank 1 only.

--api explicit-outer: compile(optimizer=DistributedOptimizer(opt)); Keras wraps it in a LossScaleOptimizer
--api explicit-inner: DistributedOptimizer(LossScaleOptimizer(opt))
--api auto:           import hvd_keras.auto, compile(optimizer=opt)
--jit yes|no

Writes out/rank{r}.npz: final weights, loss scale, applied updates.
"""

import _common

api = _common.arg("api", "explicit-outer")
jit = _common.arg("jit", "no")
_common.quiet_tf(deterministic=jit == "no")

if api == "auto":
    import hvd_keras.auto  # noqa: F401

import keras  # noqa: E402
import numpy as np  # noqa: E402

import hvd_keras  # noqa: E402

hvd_keras.init()
rank, size = hvd_keras.rank(), hvd_keras.size()
keras.mixed_precision.set_global_policy(_common.arg("precision", "mixed_float16"))
steps, per_rank = 6, 8
overflow_step = int(_common.arg("overflow-step", "2"))
x, y = _common.regression_data(n=steps * per_rank * size)
if rank == 1:
    # Rank 1's shard is x[1::size]; its batch `overflow_step` gets values large
    # enough that float16 activations overflow to inf, on this rank only.
    x[1::size][overflow_step * per_rank:(overflow_step + 1) * per_rank] *= 3e4

keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(64, activation="relu"),
                          keras.layers.Dense(64, activation="relu"), keras.layers.Dense(3)])
sgd = keras.optimizers.SGD(0.05, momentum=0.9)
if api == "explicit-outer":
    opt = hvd_keras.DistributedOptimizer(sgd)
elif api == "explicit-inner":
    opt = hvd_keras.DistributedOptimizer(keras.optimizers.LossScaleOptimizer(sgd))
else:
    opt = sgd
model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              jit_compile=jit == "yes")
assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer), type(model.optimizer)
if api == "auto":  # it shards and broadcasts by itself
    model.fit(x, y, batch_size=per_rank, epochs=1, shuffle=False, verbose=0)
else:
    xs, ys = hvd_keras.data.shard((x, y))
    model.fit(xs, ys, batch_size=per_rank, epochs=1, shuffle=False, verbose=0,
              callbacks=[hvd_keras.callbacks.BroadcastInitialState()])
_common.save_result(
    _common.arg("out"), rank,
    weights=_common.flat_weights(model.trainable_variables),
    scale=float(np.asarray(model.optimizer.dynamic_scale)),
    updates=int(model.optimizer.iterations.numpy()),
)
