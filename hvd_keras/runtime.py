"""Process-level state: Horovod initialisation, ranks and a barrier."""

import os

from hvd_keras._horovod import hvd, tf


def init():
    """Initialises Horovod and pins this process to its GPU. Idempotent.

    On a machine with GPUs each process sees only the GPU of its local rank,
    with memory growth on, so that N processes on one node share N GPUs
    instead of all allocating GPU 0. On CPU there is nothing to pin.

    Call it before building any model (TensorFlow fixes its visible devices
    the first time it touches a GPU).

    Example:

    ```python
    import hvd_keras

    hvd_keras.init()
    print(f"rank {hvd_keras.rank()} of {hvd_keras.size()}")
    ```
    """
    if hvd.is_initialized():
        return
    # A rank that never reaches a collective (a bug, a rank-only branch)
    # would leave the others waiting forever: Horovod names the missing
    # ranks after a minute and, with this, shuts the job down instead of
    # hanging. Long enough for a rank-0 checkpoint of a large model.
    os.environ.setdefault("HOROVOD_STALL_CHECK_TIME_SECONDS", "60")
    os.environ.setdefault("HOROVOD_STALL_SHUTDOWN_TIME_SECONDS", "600")
    hvd.init()
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        gpu = gpus[hvd.local_rank() % len(gpus)]
        tf.config.experimental.set_memory_growth(gpu, True)
        tf.config.set_visible_devices(gpu, "GPU")


def _ensure_init():
    if not hvd.is_initialized():
        init()


def rank():
    """Global rank of this process, from 0 to `size() - 1`."""
    _ensure_init()
    return hvd.rank()


def size():
    """Number of processes in the job."""
    _ensure_init()
    return hvd.size()


def local_rank():
    """Rank of this process among the processes on its node."""
    _ensure_init()
    return hvd.local_rank()


def local_size():
    """Number of processes on this node."""
    _ensure_init()
    return hvd.local_size()


def is_chief():
    """True on rank 0, the process that writes files and prints."""
    return rank() == 0


def barrier(name="hvd_keras.barrier"):
    """Blocks until every rank has reached this call. A no-op at size 1.

    Horovod's TensorFlow layer has no barrier; an allreduce of one scalar is
    one. Every rank must call it: never call it inside a rank branch.
    """
    if size() > 1:
        hvd.allreduce(tf.zeros([]), op=hvd.Sum, name=name)
