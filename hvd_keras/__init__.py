"""hvd_keras: Horovod data-parallel training for Keras 3.

The public API lives here; submodules hold one concept each.
"""

__version__ = "0.1.0"

from hvd_keras import callbacks, data  # noqa: E402
from hvd_keras.broadcast import broadcast_state, broadcast_variables  # noqa: E402
from hvd_keras.optimizer import DistributedOptimizer  # noqa: E402
from hvd_keras.runtime import (  # noqa: E402
    barrier,
    init,
    is_chief,
    local_rank,
    local_size,
    rank,
    size,
)

__all__ = [
    "DistributedOptimizer",
    "barrier",
    "broadcast_state",
    "broadcast_variables",
    "callbacks",
    "data",
    "init",
    "is_chief",
    "local_rank",
    "local_size",
    "rank",
    "size",
]
