"""Records this process's rank, the job size, the GPU it took and the cycle time init() left."""

import os

import _common

import hvd_keras  # noqa: E402

hvd_keras.init()
_common.save_result(_common.arg("out"), hvd_keras.rank(), size=hvd_keras.size(), my_rank=hvd_keras.rank(),
                    gpu=str(hvd_keras.runtime.this_placement().device),
                    cycle=os.environ.get("HOROVOD_CYCLE_TIME", ""))
