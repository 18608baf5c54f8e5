"""Trains an MLP on scikit-learn's bundled digits with hvd_keras's explicit API.

Run on 2 processes:

    horovodrun -np 2 python examples/train_digits.py

It scales the learning rate with a warmup, reports exact global metrics,
checkpoints to runs/digits/checkpoints (rank 0), resumes from there when run
again (pass a new --output to start over), and plots the history.

Everything is local: the digits ship inside scikit-learn, nothing is downloaded.
"""

import argparse

# hvd_keras before keras: it loads TensorFlow with TF_CPP_MIN_LOG_LEVEL applied
# to TensorFlow's start-up lines too, so the first screen shows the training.
import hvd_keras  # isort: skip
import keras
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


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
    parser.add_argument("--warmup-epochs", type=int, default=2)
    parser.add_argument("--output", default="runs/digits", help="checkpoints and the history plot")
    args = parser.parse_args()

    hvd_keras.init()
    keras.utils.set_random_seed(42)
    x_train, x_test, y_train, y_test = load_data()
    x_shard, y_shard = hvd_keras.data.shard((x_train, y_train))

    steps_per_epoch = -(-len(x_shard) // args.batch_size)
    # Linear scaling rule with a gradual warmup (Goyal et al. 2017), computed
    # inside the compiled step.
    learning_rate = hvd_keras.schedules.Warmup(
        hvd_keras.scale_learning_rate(args.lr), warmup_steps=args.warmup_epochs * steps_per_epoch
    )
    model = hvd_keras.exact_metrics(build_model(x_train.shape[1]))
    model.compile(
        optimizer=hvd_keras.DistributedOptimizer(keras.optimizers.SGD(learning_rate, momentum=0.9)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    checkpoints = f"{args.output}/checkpoints"
    initial_epoch = hvd_keras.resume(model, checkpoints)
    if hvd_keras.is_chief():
        print(f"training on {hvd_keras.size()} ranks, {len(x_shard)} samples per rank, "
              f"from epoch {initial_epoch}")
    history = model.fit(
        x_shard,
        y_shard,
        batch_size=args.batch_size,
        epochs=args.epochs,
        initial_epoch=initial_epoch,
        validation_data=(x_test, y_test),
        **hvd_keras.rank_zero_output(
            [
                hvd_keras.callbacks.BroadcastInitialState(),
                hvd_keras.callbacks.Checkpoint(checkpoints, monitor="val_accuracy", mode="max"),
            ],
            verbose=2,
        ),
    )
    # Weights are identical on every rank, so every rank evaluates the same.
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    if hvd_keras.is_chief():
        print(f"held-out accuracy: {accuracy:.4f} on {len(x_test)} samples")
        if history.history:
            print(f"history plot: {hvd_keras.plot_history(history, f'{args.output}/history.png')}")
    return accuracy


if __name__ == "__main__":
    main()
