"""Trains an MLP on scikit-learn's bundled digits as an elastic job: it goes on when workers die or hosts change.

Run with 2 to 4 processes on the hosts a discovery script prints:

    printf '#!/bin/sh\\necho localhost:2\\n' > hosts.sh && chmod +x hosts.sh
    hvd-keras run --elastic -np 2 --min-np 1 --max-np 4 --discovery-script ./hosts.sh \\
        examples/elastic_digits.py

Edit hosts.sh while it trains (`echo localhost:3`, `echo localhost:1`):
the job grows and shrinks within a second or two, each epoch's samples
resharded over the new ranks, the global batch and learning rate kept. Kill
a worker (`kill -9`): the others roll back to the last commit and go on.
Inside a Slurm allocation, `sbatch launch/elastic.sbatch` runs it over the
allocation's nodes.
"""

import argparse

import hvd_keras  # isort: skip
import hvd_keras.elastic  # isort: skip
import keras
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=48,
                   help="global batch: samples of one step over all ranks (must split over every size)")
    p.add_argument("--output", default="runs/elastic-digits")
    args = p.parse_args()

    hvd_keras.init()
    digits = load_digits()
    x, x_test, y, y_test = train_test_split((digits.data / 16.0).astype("float32"), digits.target.astype("int32"),
                                            test_size=0.25, random_state=0, stratify=digits.target)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(128, activation="relu"),
                              keras.layers.Dense(10)])
    model.compile(optimizer=hvd_keras.DistributedOptimizer(keras.optimizers.SGD(0.05, momentum=0.9)),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    hvd_keras.exact_metrics(model)
    initial_epoch = hvd_keras.resume(model, f"{args.output}/checkpoints")
    hvd_keras.elastic.fit(model, x, y, batch_size=args.batch_size, epochs=args.epochs, initial_epoch=initial_epoch,
                          validation_data=(x_test, y_test), verbose=2,
                          callbacks=[hvd_keras.callbacks.Checkpoint(f"{args.output}/checkpoints")])


if __name__ == "__main__":
    main()
