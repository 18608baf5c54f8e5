"""A train_step that calls the optimizer twice per step, which the XLA split cannot handle.

--jit yes: must fail with one line; --jit auto-gpu: must train without XLA.
--api fit (default) | train_on_batch.
"""

import _common

jit = _common.arg("jit", "yes")
_common.quiet_tf(deterministic=False)

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import hvd_keras  # noqa: E402

hvd_keras.init()
if jit == "auto-gpu":
    _common.pretend_gpu()


class TwoUpdates(keras.Model):
    def train_step(self, data):
        x, y = data[:2]  # train_on_batch passes (x, y, sample_weight)
        with tf.GradientTape() as tape:
            loss = self.compute_loss(x=x, y=y, y_pred=self(x, training=True))
        grads = tape.gradient(loss, self.trainable_variables)
        half = len(grads) // 2
        self.optimizer.apply(grads[:half], self.trainable_variables[:half])
        self.optimizer.apply(grads[half:], self.trainable_variables[half:])
        return {"loss": loss}


x, y = _common.regression_data(n=64)
inputs = keras.Input((x.shape[1],))
model = TwoUpdates(inputs, keras.layers.Dense(3)(keras.layers.Dense(8, activation="tanh")(inputs)))
model.compile(optimizer=hvd_keras.DistributedOptimizer(keras.optimizers.SGD(0.1)),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              **({} if jit == "auto-gpu" else {"jit_compile": True}))
xs, ys = hvd_keras.data.shard((x, y))
if _common.arg("api", "fit") == "train_on_batch":  # a new generator per call, read once
    hvd_keras.broadcast_state(model)
    for i in range(0, len(xs), 8):
        model.train_on_batch(xs[i:i + 8], ys[i:i + 8])
else:
    model.fit(xs, ys, batch_size=8, epochs=1, verbose=0, callbacks=[hvd_keras.callbacks.BroadcastInitialState()])
_common.save_result(_common.arg("out"), hvd_keras.rank(), weights=_common.flat_weights(model.trainable_variables),
                    xla_split=hvd_keras.train_function.uses_xla_split(model))
print(f"TRAINED rank {hvd_keras.rank()}", flush=True)
