"""Trains an MLP on scikit-learn's bundled digits with hvd_keras's explicit API.

Run on 2 processes:

    horovodrun -np 2 python examples/train_digits.py

Everything is local: the digits ship inside scikit-learn, nothing is downloaded.
"""

import argparse

import keras
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import hvd_keras


def load_data(seed=0):
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int32")
    return train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)


def build_model(num_features, num_classes=10):
    return keras.Sequential([
        keras.Input((num_features,)),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dropout(0.1),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(num_classes),
    ])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=32, help="per rank")
    parser.add_argument("--lr", type=float, default=0.05, help="single-process learning rate")
    args = parser.parse_args()

    hvd_keras.init()
    keras.utils.set_random_seed(42)
    x_train, x_test, y_train, y_test = load_data()
    x_shard, y_shard = hvd_keras.data.shard((x_train, y_train))

    model = build_model(x_train.shape[1])
    # Linear scaling rule: the global batch grows with the number of ranks.
    optimizer = keras.optimizers.SGD(args.lr * hvd_keras.size(), momentum=0.9)
    model.compile(
        optimizer=hvd_keras.DistributedOptimizer(optimizer),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    if hvd_keras.is_chief():
        print(f"training on {hvd_keras.size()} ranks, {len(x_shard)} samples per rank")
    model.fit(
        x_shard,
        y_shard,
        batch_size=args.batch_size,
        epochs=args.epochs,
        callbacks=[hvd_keras.callbacks.BroadcastInitialState()],
        verbose=2 if hvd_keras.is_chief() else 0,
    )
    # Weights are identical on every rank, so every rank evaluates the same.
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    if hvd_keras.is_chief():
        print(f"held-out accuracy: {accuracy:.4f} on {len(x_test)} samples")
    return accuracy


if __name__ == "__main__":
    main()
