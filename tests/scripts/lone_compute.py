"""Rank 0 computes alone, on a core shared with Horovod's threads, for longer than Gloo's timeout; then all meet."""

import os
import time

import _common

_common.quiet_tf(deterministic=False)
import hvd_keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from horovod import tensorflow as hvd  # noqa: E402

hvd_keras.init()
core = {sorted(os.sched_getaffinity(0))[hvd_keras.local_rank() % len(os.sched_getaffinity(0))]}
for tid in os.listdir("/proc/self/task"):  # every thread, Horovod's included, on this rank's one core
    os.sched_setaffinity(int(tid), core)
hvd_keras.barrier()
if hvd_keras.rank() == 0:
    x, deadline = tf.random.normal([256, 256]), time.monotonic() + float(_common.arg("seconds"))
    while time.monotonic() < deadline:
        x = tf.tanh(x @ x * 0.01)
start = time.monotonic()
hvd_keras.barrier()
waited = time.monotonic() - start
total = float(hvd.allreduce(tf.constant(float(hvd_keras.rank() + 1)), op=hvd.Sum))
_common.save_result(_common.arg("out"), hvd_keras.rank(), waited=waited, total=total)
