"""GPU smoke check: an exact allreduce right after a long kernel, on every rank's own device.

The long kernel (a chain of large matmuls) still runs on the GPU when the
allreduce is enqueued; the value reduced depends on it, so an allreduce that
read its input on another CUDA stream than the one the kernel runs on would
see stale memory. The sum must be exact. Also reports whether NCCL is built.
Runs on CPU too (the same check, without streams).
"""

import _common

_common.quiet_tf(deterministic=False)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import hvd_keras  # noqa: E402
from hvd_keras._horovod import hvd  # noqa: E402

hvd_keras.init()
rank, size = hvd_keras.rank(), hvd_keras.size()
device = "/GPU:0" if tf.config.list_logical_devices("GPU") else "/CPU:0"
n = int(_common.arg("n", "2048" if device.startswith("/GPU") else "256"))
with tf.device(device):
    a = tf.random.stateless_normal([n, n], seed=[rank, 1]) / np.sqrt(n)
    for _ in range(int(_common.arg("chain", "20"))):
        a = tf.linalg.matmul(a, a) + tf.eye(n)
        a = a / tf.norm(a)  # stays finite
    # rank + 1 everywhere, but only once the long kernel is done: 0 * finite is 0.
    payload = tf.fill([1 << 20], float(rank + 1)) + 0.0 * tf.reduce_sum(tf.math.tanh(a[:1, :1]))
    reduced = hvd.allreduce(payload, op=hvd.Sum, name="hvd_keras.gpu_smoke")
expected = size * (size + 1) / 2
exact = bool(np.all(reduced.numpy() == expected))
print(f"rank {rank} on {device}: allreduce after a long kernel {'exact' if exact else 'WRONG'} "
      f"({float(reduced[0])} vs {expected}); nccl_built={int(bool(hvd.nccl_built()))}", flush=True)
_common.save_result(_common.arg("out"), rank, exact=exact, device=device, nccl=int(bool(hvd.nccl_built())))
if not exact:
    raise SystemExit(1)
