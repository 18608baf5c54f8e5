"""Per-class metrics on an imbalanced set split unevenly between ranks.

--reduce exact|average|single. With "single" (one process) the script sees all
data; with 2 ranks, rank 0 gets mostly class 0 and rank 1 mostly class 2.
The learning rate is 0, so the metrics measure one fixed model.
"""

import _common

_common.quiet_tf()

import keras  # noqa: E402
import numpy as np  # noqa: E402

import hvd_keras  # noqa: E402

hvd_keras.init()
rank, size = hvd_keras.rank(), hvd_keras.size()
reduce = _common.arg("reduce", "exact")

rng = np.random.default_rng(7)
n = 192
labels = np.concatenate([np.zeros(110, int), np.ones(50, int), np.full(32, 2)])
x = (rng.normal(size=(n, 5)) + labels[:, None] * 0.7).astype("float32")
onehot = np.eye(3, dtype="float32")[labels]
# An uneven split: sort by label, so rank 0 takes the first half (class 0 only).
order = np.argsort(labels, kind="stable")
val = order[::4]
train = np.setdiff1d(order, val)
if size > 1:
    train = np.array_split(np.sort(train), size)[rank]
    val = np.array_split(np.sort(val), size)[rank]

keras.utils.set_random_seed(3)
model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, activation="softmax")])
metrics = ["accuracy", keras.metrics.AUC(name="auc"), keras.metrics.F1Score(name="f1")]
metrics += [keras.metrics.Precision(class_id=k, name=f"precision_{k}") for k in range(3)]
metrics += [keras.metrics.Recall(class_id=k, name=f"recall_{k}") for k in range(3)]
model.compile(optimizer=hvd_keras.DistributedOptimizer(keras.optimizers.SGD(0.0)),
              loss="categorical_crossentropy", metrics=metrics)
callbacks = [hvd_keras.callbacks.BroadcastInitialState()]
if reduce == "exact":
    hvd_keras.exact_metrics(model)
elif reduce == "average":
    callbacks.insert(0, hvd_keras.callbacks.MetricAverage())
history = model.fit(x[train], onehot[train], batch_size=len(train), epochs=1, verbose=0,
                    validation_data=(x[val], onehot[val]), callbacks=callbacks)
evaluated = model.evaluate(x[val], onehot[val], verbose=0, return_dict=True)
result = {f"fit_{k}": np.asarray(v[-1]) for k, v in history.history.items()}
result.update({f"eval_{k}": np.asarray(v) for k, v in evaluated.items()})
_common.save_result(_common.arg("out"), rank, **result)
