"""Records this process's rank, the job size, the GPU it took, and init()'s cycle time and thread policies."""

import os

import _common

import hvd_keras  # noqa: E402
import hvd_keras.cluster  # noqa: E402

hvd_keras.init()
import tensorflow as tf  # noqa: E402

float(tf.reduce_sum(tf.ones([64, 64]) @ tf.ones([64, 64])))  # TensorFlow's own thread pools exist from here
tids = [int(t) for t in os.listdir("/proc/self/task")]
idle = [t for t in tids if os.sched_getscheduler(t) == os.SCHED_IDLE]
names = []
for t in idle:
    with open(f"/proc/self/task/{t}/comm") as f:
        names.append(f.read().strip())
_common.save_result(_common.arg("out"), hvd_keras.rank(), size=hvd_keras.size(), my_rank=hvd_keras.rank(),
                    gpu=str(hvd_keras.runtime.this_placement().device),
                    cycle=os.environ.get("HOROVOD_CYCLE_TIME", ""),
                    threads=len(tids), idle_threads=len(idle), idle_names=",".join(names),
                    main_thread_idle=os.sched_getscheduler(os.getpid()) == os.SCHED_IDLE,
                    # what the GPU is pinned with before Horovod starts, against Horovod's own
                    launcher_ranks=str(hvd_keras.cluster.launcher_ranks()),
                    horovod_ranks=str((hvd_keras.rank(), hvd_keras.local_rank(), hvd_keras.local_size())))
