"""A plain single-process Keras script: a subclassed model with its own train_step,
class weights for an imbalanced target, and per-class precision, recall and F1.

The target has 3 classes: digit 0 (10%), digits 1-3 (30%), digits 4-9 (60%).

Distributed, with no edit:   horovodrun -np 2 python -m hvd_keras.auto examples/subclassed_imbalanced.py
or add `import hvd_keras.auto` as the first line and run it under horovodrun.
"""

import json

import keras
import numpy as np
import tensorflow as tf
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


class Classifier(keras.Model):
    def __init__(self, num_classes=3, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(64, activation="relu")
        self.out = keras.layers.Dense(num_classes, activation="softmax")

    def call(self, x):
        return self.out(self.hidden(x))

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight)
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply(grads, self.trainable_variables)
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss)
            else:
                metric.update_state(y, y_pred, sample_weight=sample_weight)
        logs = {}
        for metric in self.metrics:  # compiled metrics are one container before Keras 3.7
            result = metric.result()
            logs.update(result if isinstance(result, dict) else {metric.name: result})
        return logs


keras.utils.set_random_seed(0)
digits = load_digits()
target = np.select([digits.target == 0, digits.target <= 3], [0, 1], 2)
x_train, x_test, y_train, y_test = train_test_split(
    (digits.data / 16.0).astype("float32"), target, test_size=0.25, random_state=0, stratify=target)
onehot = np.eye(3, dtype="float32")
counts = np.bincount(y_train, minlength=3)
class_weight = {k: float(len(y_train) / (3 * counts[k])) for k in range(3)}

model = Classifier()
metrics = [keras.metrics.F1Score(name="f1")]
metrics += [keras.metrics.Precision(class_id=k, name=f"precision_{k}") for k in range(3)]
metrics += [keras.metrics.Recall(class_id=k, name=f"recall_{k}") for k in range(3)]
model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="categorical_crossentropy",
              metrics=metrics)
model.fit(x_train, onehot[y_train], batch_size=32, epochs=12, class_weight=class_weight, verbose=2)
results = model.evaluate(x_test, onehot[y_test], verbose=0, return_dict=True)
print("FINAL " + json.dumps({k: np.asarray(v).round(6).tolist() for k, v in results.items()}))
