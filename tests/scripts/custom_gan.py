"""A GAN in the style of Keras's "customizing what happens in fit" guide, written for these tests.

A subclassed model whose own `compile` keeps two optimizers as attributes and
calls `super().compile()` with nothing else; its `train_step` applies both
and returns `{m.name: m.result() for m in self.metrics}` from trackers of its
own. The latent vectors come with the data, so that a run on 2 ranks can be
compared with 1 process on the same global batches.

--api auto (import hvd_keras.auto) | explicit (the README's API) | plain (no hvd_keras)
--wrap yes|no (explicit: wrap the two optimizers in DistributedOptimizer)
Writes OUT/rank<r>.npz: weights, the optimizers' iterations, the last epoch's logs.
"""

import _common

api = _common.arg("api", "auto")
_common.quiet_tf()
if api == "auto":
    import hvd_keras.auto  # noqa: F401

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

if api != "plain":
    import hvd_keras

    rank, size = hvd_keras.rank(), hvd_keras.size()
else:
    rank, size = 0, 1
global_batch = int(_common.arg("global-batch", "16"))
steps, epochs = int(_common.arg("steps", "4")), int(_common.arg("epochs", "2"))
rng = np.random.default_rng(0)
real = rng.normal(size=(global_batch * steps, 8)).astype("float32")
noise = rng.normal(size=(global_batch * steps, 4)).astype("float32")


def discriminator():
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(1)])


def generator():
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(8)])


class GAN(keras.Model):
    def __init__(self, discriminator, generator):
        super().__init__()
        self.discriminator = discriminator
        self.generator = generator
        self.d_loss_tracker = keras.metrics.Mean(name="d_loss")
        self.g_loss_tracker = keras.metrics.Mean(name="g_loss")

    def compile(self, d_optimizer, g_optimizer, loss_fn):
        super().compile()
        self.d_optimizer = d_optimizer
        self.g_optimizer = g_optimizer
        self.loss_fn = loss_fn

    @property
    def metrics(self):
        return [self.d_loss_tracker, self.g_loss_tracker]

    def train_step(self, data):
        real_x, z = data
        n = tf.shape(real_x)[0]
        fake = self.generator(z)
        combined = tf.concat([fake, real_x], axis=0)
        labels = tf.concat([tf.ones((n, 1)), tf.zeros((n, 1))], axis=0)
        with tf.GradientTape() as tape:
            d_loss = self.loss_fn(labels, self.discriminator(combined))
        grads = tape.gradient(d_loss, self.discriminator.trainable_weights)
        self.d_optimizer.apply_gradients(zip(grads, self.discriminator.trainable_weights))
        with tf.GradientTape() as tape:
            g_loss = self.loss_fn(tf.zeros((n, 1)), self.discriminator(self.generator(z)))
        grads = tape.gradient(g_loss, self.generator.trainable_weights)
        self.g_optimizer.apply_gradients(zip(grads, self.generator.trainable_weights))
        self.d_loss_tracker.update_state(d_loss)
        self.g_loss_tracker.update_state(g_loss)
        return {m.name: m.result() for m in self.metrics}


keras.utils.set_random_seed(1000 + rank)  # different weights on every rank: the broadcast must fix them
gan = GAN(discriminator(), generator())
keras.utils.set_random_seed(0)
reference = GAN(discriminator(), generator())
if rank == 0:
    gan.discriminator.set_weights(reference.discriminator.get_weights())
    gan.generator.set_weights(reference.generator.get_weights())
d_opt, g_opt = keras.optimizers.Adam(0.01), keras.optimizers.SGD(0.05, momentum=0.9)
if api == "explicit" and _common.arg("wrap", "yes") == "yes":
    d_opt, g_opt = hvd_keras.DistributedOptimizer(d_opt), hvd_keras.DistributedOptimizer(g_opt)
gan.compile(d_optimizer=d_opt, g_optimizer=g_opt,
            loss_fn=keras.losses.BinaryCrossentropy(from_logits=True))
x, z = real, noise
callbacks = []
if api == "explicit":
    x, z = hvd_keras.data.shard((real, noise))
    callbacks = [hvd_keras.callbacks.BroadcastInitialState()]
    hvd_keras.exact_metrics(gan)
history = gan.fit(x, z, batch_size=global_batch // size, epochs=epochs, shuffle=False, verbose=0,
                  callbacks=callbacks)
_common.save_result(
    _common.arg("out"), rank,
    weights=_common.flat_weights(gan.discriminator.weights + gan.generator.weights),
    iterations=np.array([int(gan.d_optimizer.iterations.numpy()), int(gan.g_optimizer.iterations.numpy())]),
    d_loss=np.array(history.history["d_loss"]), g_loss=np.array(history.history["g_loss"]),
)
