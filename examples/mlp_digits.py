"""A plain single-process Keras script: an MLP classifier on the bundled digits.

Distributed, with no edit:   horovodrun -np 2 python -m hvd_keras.auto examples/mlp_digits.py
or add `import hvd_keras.auto` as the first line and run it under horovodrun.
"""

import json

import keras
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

keras.utils.set_random_seed(0)
digits = load_digits()
x_train, x_test, y_train, y_test = train_test_split(
    (digits.data / 16.0).astype("float32"), digits.target, test_size=0.25, random_state=0,
    stratify=digits.target)

model = keras.Sequential([
    keras.Input((64,)),
    keras.layers.Dense(128, activation="relu"),
    keras.layers.Dense(10, activation="softmax"),
])
model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
              metrics=["accuracy"])
model.fit(x_train, y_train, batch_size=32, epochs=10, validation_split=0.1, verbose=2)
loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
print("FINAL " + json.dumps({"loss": float(loss), "accuracy": float(accuracy)}))
