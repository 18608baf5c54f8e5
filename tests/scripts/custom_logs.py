"""A custom train_step whose logs are not the compiled metrics' names; the epoch logs must be exact.

--mode guide: returns {m.name: m.result() for m in self.metrics} (Keras's guide), with a compiled loss and
  metrics: the keys are "loss" and "compile_metrics";
--mode trackers: returns trackers of its own (attributes of the model), not listed in `metrics`;
--mode raw: returns the step's own loss tensor beside a tracker.
One process sees all the data (--single yes); 2 ranks an uneven split (rank 0 mostly class 0). The learning
rate is 0, so the logs measure one fixed model. Writes OUT/rank<r>.npz with each log's last-epoch value.
"""

import _common

_common.quiet_tf()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import hvd_keras  # noqa: E402

hvd_keras.init()
rank, size = hvd_keras.rank(), hvd_keras.size()
mode = _common.arg("mode")
rng = np.random.default_rng(7)
labels = np.concatenate([np.zeros(110, int), np.ones(50, int), np.full(32, 2)])
x = (rng.normal(size=(192, 5)) + labels[:, None] * 0.7).astype("float32")
onehot = np.eye(3, dtype="float32")[labels]
rows = np.arange(192) if size == 1 else np.array_split(np.arange(192), size)[rank]


class Custom(keras.Model):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.mae = keras.metrics.MeanAbsoluteError(name="mae")

    def train_step(self, data):
        xb, yb = data
        with tf.GradientTape() as tape:
            pred = self(xb, training=True)
            loss = self.compute_loss(x=xb, y=yb, y_pred=pred)
        self.optimizer.apply(tape.gradient(loss, self.trainable_variables), self.trainable_variables)
        if mode == "guide":
            for metric in self.metrics:
                if metric.name == "loss":
                    metric.update_state(loss)
                else:
                    metric.update_state(yb, pred)
            return {m.name: m.result() for m in self.metrics}
        self.loss_tracker.update_state(loss)
        self.mae.update_state(yb, pred)
        if mode == "trackers":
            return {"loss": self.loss_tracker.result(), "mae": self.mae.result()}
        return {"batch_loss": loss, "mae": self.mae.result()}


keras.utils.set_random_seed(3)
inputs = keras.Input((5,))
model = Custom(inputs, keras.layers.Dense(3, activation="softmax")(inputs))
model.compile(optimizer=hvd_keras.DistributedOptimizer(keras.optimizers.SGD(0.0)), loss="categorical_crossentropy",
              metrics=["accuracy", keras.metrics.AUC(name="auc")] if mode == "guide" else None)
hvd_keras.exact_metrics(model)
history = model.fit(x[rows], onehot[rows], batch_size=len(rows), epochs=2, verbose=0, shuffle=False,
                    callbacks=[hvd_keras.callbacks.BroadcastInitialState()])


def flat(logs, prefix=""):
    out = {}
    for k, v in logs.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: np.asarray(v, "float64")})
    return out


_common.save_result(_common.arg("out"), rank, **flat({k: v[-1] for k, v in history.history.items()}))
