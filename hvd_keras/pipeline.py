"""The input pipeline that Keras iterates in `fit`, `evaluate` and `predict`, as hvd_keras adjusts it."""

import os

from hvd_keras._horovod import tf


def _cpus():
    """The number of CPUs this process may run on (its affinity: Slurm, `taskset`, MPI binding)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this platform
        return os.cpu_count() or 1


def adjust(dataset):
    """Returns `dataset` with tf.data's autotuning off when this process may use one CPU only.

    A rank confined to one core (Slurm's `--cpus-per-task=1`, `mpirun
    --bind-to core`, `taskset`) has no core to spare for tf.data's autotuning
    thread. Measured on one core: destroying an iterator, which Keras does at
    every epoch's end, took about 80 ms instead of 0.1 ms (a 200-batch
    pipeline; the destructor waits on the autotuning thread), and over 4
    epochs of 1000 MLP steps `fit` took 8.9 s with autotuning, 5.3 s without
    (bench/pipeline.py). Once hvd_keras is imported, the dataset of every
    Keras epoch iterator passes through here, for any model; a dataset whose
    `autotune.enabled` option you set yourself is left as it is, and so is a
    process that may run on more than one CPU (a container's CPU quota, which
    the affinity does not show, is not seen).

    Args:
        dataset: what Keras is about to iterate; anything but a
            `tf.data.Dataset` (a distributed dataset) is returned unchanged.
    """
    if not isinstance(dataset, tf.data.Dataset) or _cpus() > 1:
        return dataset
    if dataset.options().autotune.enabled is not None:
        return dataset
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)
