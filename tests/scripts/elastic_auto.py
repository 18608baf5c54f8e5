"""A plain Keras script made data-parallel by `import hvd_keras.auto`, started elastically (tests/test_elastic.py)."""

import hvd_keras.auto  # noqa: F401  (the one line)

import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

import _common  # noqa: E402

_common.quiet_tf()

import keras  # noqa: E402
import numpy as np  # noqa: E402

import hvd_keras  # noqa: E402
from elastic_train_model import build  # noqa: E402

out = _common.arg("out")
x, y = _common.regression_data(n=240)
model = build()
model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])


class Pace(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        time.sleep(0.05)
        if hvd_keras.rank() == 0:
            with open(f"{out}/progress.tmp", "w") as f:
                f.write(f"{self.epoch} {batch} {hvd_keras.size()} {time.time()}\n")
            os.replace(f"{out}/progress.tmp", f"{out}/progress")


history = model.fit(x, y, batch_size=3, epochs=3, callbacks=[Pace()], verbose=0)
np.savez(f"{out}/final-{hvd_keras.rank()}.npz", weights=_common.flat_weights(model.weights),
         epochs=json.dumps(history.epoch), size=hvd_keras.size(),
         learning_rate=float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)))
print(f"ELASTIC DONE rank {hvd_keras.rank()} size {hvd_keras.size()}", flush=True)
