"""The distributed optimizer's `reduce` where today's step meets its edge cases; leaves per-rank results.

--case fp16: `reduce` of gradients near float16's range with fp16 compression;
--case lso-loop: a LossScaleOptimizer built by hand around a DistributedOptimizer, in a custom training
  loop, with a gradient that overflows on rank 1 only at step 1.
"""

import _common

_common.quiet_tf()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import hvd_keras  # noqa: E402

hvd_keras.init()
rank = hvd_keras.rank()
case = _common.arg("case")
out = _common.arg("out")

if case == "fp16":
    opt = hvd_keras.DistributedOptimizer(keras.optimizers.SGD(0.1), compression="fp16")
    # Loss-scaled gradients are this large; their sum (80,000) is not a float16.
    grads = [tf.constant([40000.0 + 8 * rank, -30000.0, 1e-3 * (rank + 1)]), None]
    reduced = opt.reduce(grads)
    assert reduced[1] is None
    _common.save_result(out, rank, reduced=reduced[0].numpy())
elif case == "lso-loop":
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    opt = keras.optimizers.LossScaleOptimizer(hvd_keras.DistributedOptimizer(keras.optimizers.SGD(0.1)),
                                              initial_scale=1024.0)
    x = tf.constant(np.arange(12, dtype="float32").reshape(4, 3) / 10)
    hvd_keras.broadcast_variables(model.variables)
    scales, kernels = [], []

    @tf.function
    def step(poison):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x)))
            scaled = opt.scale_loss(loss)
        grads = tape.gradient(scaled, model.trainable_variables)
        grads = [g * poison for g in grads]
        opt.apply(grads, model.trainable_variables)

    for i in range(3):
        poison = float("inf") if (i == 1 and rank == 1) else 1.0
        step(tf.constant(poison))
        scales.append(float(opt.dynamic_scale.numpy()))
        kernels.append(model.trainable_variables[0].numpy().ravel())
    _common.save_result(out, rank, scales=np.array(scales), kernels=np.array(kernels))
else:
    raise SystemExit(f"unknown case {case}")
