"""A plain single-process Keras script: a small CNN on the 8x8 digit images, fed by tf.data.

Distributed, with no edit:   horovodrun -np 2 python -m hvd_keras.auto examples/cnn_digits.py
or add `import hvd_keras.auto` as the first line and run it under horovodrun.
"""

import json
import os
import sys

import keras
import tensorflow as tf
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

out_dir = sys.argv[1] if len(sys.argv) > 1 else "runs/cnn_digits"
keras.utils.set_random_seed(0)
digits = load_digits()
images = (digits.images / 16.0).astype("float32")[..., None]
x_train, x_test, y_train, y_test = train_test_split(images, digits.target, test_size=0.25,
                                                    random_state=0, stratify=digits.target)
train = tf.data.Dataset.from_tensor_slices((x_train, y_train)).batch(32)
test = tf.data.Dataset.from_tensor_slices((x_test, y_test)).batch(64)

model = keras.Sequential([
    keras.Input((8, 8, 1)),
    keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
    keras.layers.MaxPooling2D(),
    keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
    keras.layers.GlobalAveragePooling2D(),
    keras.layers.Dense(10, activation="softmax"),
])
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
os.makedirs(out_dir, exist_ok=True)
model.fit(train, epochs=15, validation_data=test, verbose=2,
          callbacks=[keras.callbacks.CSVLogger(f"{out_dir}/log.csv")])
loss, accuracy = model.evaluate(test, verbose=0)
model.save(f"{out_dir}/cnn.keras")
print("FINAL " + json.dumps({"loss": float(loss), "accuracy": float(accuracy)}))
