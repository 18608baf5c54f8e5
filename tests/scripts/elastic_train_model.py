"""The model and rate of elastic_train.py, shared with elastic_replay.py."""

import keras

LEARNING_RATE = 0.05


def build():
    keras.utils.set_random_seed(7)  # the same initial weights in every process, and in the replay
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)])
