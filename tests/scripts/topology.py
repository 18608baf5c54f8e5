"""Records where this rank runs: rank, sizes, Horovod's local and cross ranks, hostname and host identity."""

import os
import socket

import _common

import hvd_keras  # noqa: E402
from hvd_keras._horovod import hvd  # noqa: E402
from hvd_keras.cluster import host  # noqa: E402

hvd_keras.init()
_common.save_result(_common.arg("out"), hvd_keras.rank(), my_rank=hvd.rank(), size=hvd.size(),
                    local_rank=hvd.local_rank(), local_size=hvd.local_size(), cross_rank=hvd.cross_rank(),
                    cross_size=hvd.cross_size(), hostname=socket.gethostname(), pid=os.getpid(),
                    identity=host.identity().key,
                    controller="mpi" if hvd.mpi_enabled() else "gloo")
