"""EarlyStopping on ranks whose validation data differ; plus Throughput."""

import _common

_common.quiet_tf(deterministic=False)  # Throughput's timestamps need it off

import keras  # noqa: E402
import numpy as np  # noqa: E402

import hvd_keras  # noqa: E402

hvd_keras.init()
rank = hvd_keras.rank()
rng = np.random.default_rng(rank)  # different data on every rank on purpose
x = rng.normal(size=(64, 4)).astype("float32")
y = rng.integers(0, 2, size=(64,)).astype("float32")  # noise: val_loss wanders
xv = rng.normal(size=(32, 4)).astype("float32") + rank
yv = rng.integers(0, 2, size=(32,)).astype("float32")
model = hvd_keras.exact_metrics(keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, "relu"),
                                                  keras.layers.Dense(1, "sigmoid")]))
model.compile(optimizer=hvd_keras.DistributedOptimizer(keras.optimizers.Adam(0.05)), loss="binary_crossentropy")
stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=1)
throughput = hvd_keras.callbacks.Throughput(batch_size=8, path=_common.arg("out") + "/throughput.json",
                                            baseline_samples_per_sec=1000.0)
history = model.fit(x, y, batch_size=8, epochs=60, verbose=0, validation_data=(xv, yv),
                    callbacks=[hvd_keras.callbacks.BroadcastInitialState(), stop, throughput])
_common.save_result(_common.arg("out"), rank, stopped_epoch=stop.stopped_epoch,
                    epochs=len(history.history["loss"]), val_loss=np.array(history.history["val_loss"]))
