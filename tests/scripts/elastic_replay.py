"""One process replays an elastic job's committed global batches (tests/test_elastic.py).

Reads the ledger of the job's final rank 0 (`final-0.npz` from
elastic_train.py), trains the same model on the same global batches in the
same order with the same learning-rate rule, and writes `replay.npz`: the
weights and each epoch's loss and accuracy (means over its samples).
"""

import json

import _common

_common.quiet_tf()

import keras  # noqa: E402
import numpy as np  # noqa: E402

import hvd_keras  # noqa: E402
import hvd_keras.elastic as elastic  # noqa: E402
from elastic_train_model import LEARNING_RATE, build  # noqa: E402

out = _common.arg("out")
mode = _common.arg("mode", "global")
warmup = float(_common.arg("warmup-epochs", "0"))
batch = int(_common.arg("batch", "6"))
x, y = _common.regression_data(n=int(_common.arg("samples", "240")))
final = np.load(f"{out}/final-0.npz")
ledger = final["ledger"].tolist()
model = build()
initial = np.load(f"{out}/initial.npz")
assert all(np.array_equal(np.asarray(v), initial[f"arr_{i}"]) for i, v in enumerate(model.weights)), \
    "the replay does not start from the job's initial weights"
first_size = ledger[0][4]
optimizer = keras.optimizers.SGD(LEARNING_RATE * (first_size if mode == "per_rank" else 1), momentum=0.9)
model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              metrics=["accuracy"])
optimizer.build(model.trainable_variables)
lrw = None
if warmup:
    # What the job's LearningRateWarmup did: from the rate of its first size's single process to the target.
    lrw = hvd_keras.callbacks.LearningRateWarmup(warmup, steps_per_epoch=len(x) // batch,
                                                 initial_learning_rate=LEARNING_RATE / first_size,
                                                 warmup_target=LEARNING_RATE)
    lrw.set_model(model)
    lrw.on_train_begin()
sizes = [size for _, _, _, steps, size in ledger for _ in range(steps)]
sums = {}
for (epoch, ids), size, previous in zip(elastic.ledger_batches(ledger, len(x), int(final["seed"])), sizes,
                                        [first_size] + sizes[:-1]):
    if mode == "per_rank" and size != previous:
        elastic.rates.rescale(optimizer, size / previous)
        if lrw is not None:
            lrw.warmup_target *= size / previous
    if lrw is not None:
        lrw.on_train_batch_begin(0)
    loss, accuracy = model.train_on_batch(x[ids], y[ids])
    total = sums.setdefault(epoch, [0.0, 0.0, 0])
    total[0] += loss * len(ids)
    total[1] += accuracy * len(ids)
    total[2] += len(ids)
epochs = sorted(sums)
np.savez(f"{out}/replay.npz", weights=_common.flat_weights(model.weights),
         epoch_loss=np.array([sums[e][0] / sums[e][2] for e in epochs]),
         epoch_accuracy=np.array([sums[e][1] / sums[e][2] for e in epochs]),
         epochs=np.array(epochs), learning_rate=elastic.rates.learning_rate(optimizer))
print("REPLAYED", json.dumps({"steps": len(sizes), "epochs": epochs}), flush=True)
