"""Trains a small MLP for K steps; run at size 1 with batch 2b or size 2 with b.

Writes out/rank{r}.npz with the final weights and optimizer variables.
"""

import _common

# no | yes | auto (Keras's default) | auto-gpu (the default as on a machine with a GPU)
jit = _common.arg("jit", "no")
precision = _common.arg("precision", "float32")
api = _common.arg("api", "explicit")      # explicit | auto (import hvd_keras.auto, plain compile and fit)
# XLA is refused under op determinism (keras model_supports_jit), so XLA runs are not deterministic.
_common.quiet_tf(deterministic=jit == "no", threads=_common.arg("threads", "1") == "1")
if api == "auto":
    import hvd_keras.auto  # noqa: F401

import keras  # noqa: E402
import numpy as np  # noqa: E402

import hvd_keras  # noqa: E402

hvd_keras.init()
rank, size = hvd_keras.rank(), hvd_keras.size()
if precision != "float32":
    keras.mixed_precision.set_global_policy(precision)
if jit == "auto-gpu":
    # What Keras sees on a GPU machine: TensorFlow lists a GPU (after init()
    # has pinned devices, so only the jit_compile decision sees it).
    _common.pretend_gpu()
out = _common.arg("out")
optimizer_name = _common.arg("optimizer", "sgd")
global_batch = int(_common.arg("global-batch", "16"))
steps = int(_common.arg("steps", "6"))
mode = _common.arg("mode", "fit")
# DistributedOptimizer options: --op average|sum|adasum, --compression none|fp16,
# --horovod-objects yes (pass hvd.Sum, hvd.Compression.fp16 instead of strings),
# --accum K (backward_passes_per_step), --sum-aggregated yes, --lr-mult F,
# --same-data yes (every rank trains on all the data), --model embed (sparse gradients).
dist_op = _common.arg("op", "average")
compression = _common.arg("compression", "none")
accum = int(_common.arg("accum", "1"))
lr_mult = float(_common.arg("lr-mult", "1"))
same_data = _common.arg("same-data", "no") == "yes"
architecture = _common.arg("model", "mlp")

x, y = _common.regression_data(n=global_batch * steps)
if architecture == "embed":
    x = (np.abs(x[:, :4]) * 7).astype("int32") % 50
sw = np.linspace(0.5, 1.5, len(x)).astype("float32")

# Every rank builds different random weights on purpose: the broadcast must fix it.
keras.utils.set_random_seed(1000 + rank)


def make_model():
    if mode == "subclass":

        class Custom(keras.Model):
            def train_step(self, data):
                import tensorflow as tf

                xb, yb = data
                with tf.GradientTape() as tape:
                    pred = self(xb, training=True)
                    loss = self.compute_loss(x=xb, y=yb, y_pred=pred)
                grads = tape.gradient(loss, self.trainable_variables)
                self.optimizer.apply(grads, self.trainable_variables)
                return {"loss": loss}

        inputs = keras.Input((x.shape[1],))
        h = keras.layers.Dense(16, activation="tanh")(inputs)
        return Custom(inputs, keras.layers.Dense(3)(h))
    if architecture == "embed":
        return keras.Sequential([keras.Input((x.shape[1],), dtype="int32"), keras.layers.Embedding(50, 8),
                                 keras.layers.Flatten(), keras.layers.Dense(3)])
    return keras.Sequential(
        [keras.Input((x.shape[1],)), keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(3)]
    )


model = make_model()
if optimizer_name == "sgd":
    opt = keras.optimizers.SGD(0.1 * lr_mult, momentum=0.9)
elif optimizer_name == "adam":
    opt = keras.optimizers.Adam(0.01 * lr_mult)
elif optimizer_name == "adamw-clip":
    opt = keras.optimizers.AdamW(0.01, weight_decay=0.01, global_clipnorm=0.5)
elif optimizer_name == "lso":
    opt = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1, momentum=0.9))
else:
    raise SystemExit(f"unknown optimizer {optimizer_name}")
wrap = _common.arg("wrap", "yes" if api == "explicit" else "no")
if wrap == "yes":
    options = dict(op=dist_op, compression=compression)
    if _common.arg("horovod-objects", "no") == "yes":
        import horovod.tensorflow as hvd

        options = dict(op={"average": hvd.Average, "sum": hvd.Sum, "adasum": hvd.Adasum}[dist_op],
                       compression={"none": hvd.Compression.none, "fp16": hvd.Compression.fp16}[compression])
    if accum > 1:
        options.update(backward_passes_per_step=accum,
                       average_aggregated_gradients=_common.arg("sum-aggregated", "no") == "no")
    if architecture == "embed":
        options.update(sparse_as_dense=True)
    opt = hvd_keras.DistributedOptimizer(opt, **options)
elif accum > 1:  # the single-process reference: Keras's own accumulation
    opt = type(opt).from_config({**opt.get_config(), "gradient_accumulation_steps": accum})
elif wrap == "outside-lso":  # Keras wraps it in a LossScaleOptimizer under mixed_float16
    opt = hvd_keras.DistributedOptimizer(opt.inner_optimizer if optimizer_name == "lso" else opt)
compile_kwargs = {} if jit.startswith("auto") else {"jit_compile": jit == "yes"}
if _common.arg("count-allreduces", "no") == "yes":
    # Counts the fused allreduces the steps run (an op in the graph, not a trace count).
    import horovod.tensorflow as hvd_tf
    import tensorflow as tf

    with tf.init_scope():
        allreduces = tf.Variable(0, dtype=tf.int64, trainable=False)
    real_grouped = hvd_tf.grouped_allreduce

    def counted(tensors, *args, **kwargs):
        allreduces.assign_add(1)
        return real_grouped(tensors, *args, **kwargs)

    hvd_tf.grouped_allreduce = counted
model.compile(
    optimizer=opt,
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    **compile_kwargs,
)
if jit != "auto":
    assert model.jit_compile == (jit != "no"), model.jit_compile
# The reference weights come from a fixed seed, broadcast from rank 0.
keras.utils.set_random_seed(0)
reference = make_model()
model.set_weights(reference.get_weights()) if rank == 0 else None

if api == "auto":  # auto shards the data and broadcasts the initial state itself
    xs, ys, sws = x, y, sw
    fit_kwargs = dict(batch_size=global_batch // size, epochs=1, shuffle=False, verbose=0)
else:
    xs, ys, sws = (x, y, sw) if same_data else hvd_keras.data.shard((x, y, sw))
    fit_kwargs = dict(batch_size=global_batch if same_data else global_batch // size, epochs=1,
                      shuffle=False, verbose=0, callbacks=[hvd_keras.callbacks.BroadcastInitialState()])
if mode == "class_weight":
    model.fit(xs, ys, class_weight={0: 0.5, 1: 2.0, 2: 1.0}, **fit_kwargs)
elif mode == "sample_weight":
    model.fit(xs, ys, sample_weight=sws, **fit_kwargs)
elif mode == "unknown-length":  # a dataset whose end is found by running out (filter hides the length)
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((xs, ys)).batch(fit_kwargs["batch_size"]).filter(
        lambda *_: True)
    model.fit(dataset, **{k: v for k, v in fit_kwargs.items() if k not in ("batch_size", "shuffle")})
else:
    model.fit(xs, ys, **fit_kwargs)

_common.save_result(
    out,
    rank,
    weights=_common.flat_weights(model.trainable_variables),
    optimizer=_common.flat_weights([v for v in model.optimizer.variables if v.dtype.startswith("float")]),
    # the inner optimizer counts the steps: a LossScaleOptimizer of Keras < 3.7 leaves its own at 0
    iterations=int(getattr(model.optimizer, "inner_optimizer", model.optimizer).iterations.numpy()),
    xla_split=hvd_keras.train_function.uses_xla_split(model),
    allreduces=int(allreduces.numpy()) if _common.arg("count-allreduces", "no") == "yes" else -1,
)
