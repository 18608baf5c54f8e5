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
    thread: it takes time from the training step, and destroying the epoch's
    iterator, which Keras does at every epoch's end, waits for that thread's
    next optimisation period, a period that doubles as training goes on.
    Measured on one core (an MLP, 4 epochs of about 1.1 s): `fit` took 6.5 s
    with autotuning, 4.5 s without. hvd_keras routes the dataset of every
    Keras epoch iterator through here; a dataset whose `autotune.enabled`
    option you set yourself is left as it is, and so is any process with
    more than one CPU.

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
