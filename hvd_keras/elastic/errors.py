"""Which failures an elastic job recovers from: a collective of Horovod's ops that failed, and nothing else.

When a rank dies, the collective the others are in fails (Gloo: the peer
closed the connection) and Horovod shuts down; every later Horovod op fails
with "Horovod has been shut down". TensorFlow raises these as an
`UnknownError` whose message names the op's node (`HorovodGroupedAllreduce_...`
in a compiled step, `[Op:HorovodBroadcast]` eagerly).

Horovod 0.28.1's own mapping (`horovod.tensorflow.elastic.run`) recognises
only `HorovodAllreduce`, `HorovodAllgather` and `HorovodBroadcast` in that
message; the fused `HorovodGroupedAllreduce` of hvd_keras's step matches none
of them, and its wrapper then returns None instead of raising: a survivor
would leave training mid-epoch and exit 0. Here every Horovod op counts, and
anything else is raised unchanged.
"""

import contextlib
import re

from hvd_keras._compat import HorovodInternalError, HostsUpdatedInterrupt
from hvd_keras._horovod import tf

# Every collective op Horovod registers with TensorFlow, grouped or not.
_HOROVOD_OP = re.compile(r"Horovod(?:Grouped)?(?:Allreduce|Allgather|Broadcast|BroadcastInplace|"
                         r"BroadcastInplaceResource|Alltoall|Reducescatter|Join|Barrier)\b")
_SHUT_DOWN = "Horovod has been shut down"
# Horovod reports a lost peer and a shut-down job as UNKNOWN (TensorFlow's
# UnknownError), a cancelled collective as ABORTED. A collective refused for
# a user error (mismatched shapes: InvalidArgument, FailedPrecondition) would
# fail again after every reset, so it is raised as it is.
_RECOVERABLE = (tf.errors.UnknownError, tf.errors.AbortedError)


def is_collective_failure(error):
    """True when `error` is a failed collective of a Horovod op, which an elastic job recovers from.

    Args:
        error: an exception.

    Example:

    ```python
    try:
        model.fit(x, y)
    except Exception as e:
        if hvd_keras.elastic.is_collective_failure(e):
            ...  # a rank or host went away
    ```
    """
    if isinstance(error, HorovodInternalError):
        return True
    if not isinstance(error, _RECOVERABLE):
        return False
    message = getattr(error, "message", None) or str(error)
    return _SHUT_DOWN in message or bool(_HOROVOD_OP.search(message))


def classify(error):
    """`error` as the exception Horovod's elastic loop acts on: a `HorovodInternalError`, or None to re-raise it.

    A `HostsUpdatedInterrupt` or `HorovodInternalError` is returned as it is.
    """
    if isinstance(error, (HorovodInternalError, HostsUpdatedInterrupt)):
        return error
    if is_collective_failure(error):
        return HorovodInternalError(error)
    return None


@contextlib.contextmanager
def collective_failures():
    """Within the block, a failed collective is raised as `HorovodInternalError`; any other error as it is."""
    try:
        yield
    except tf.errors.OpError as e:
        mapped = classify(e)
        if mapped is None:
            raise
        raise mapped from e
