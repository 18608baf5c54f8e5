"""The public API, loaded on its first use (see `hvd_keras/__init__.py`): Keras's trainer hooked, names gathered."""

from hvd_keras import _compat, checkpoint, optimizer, pipeline, preemption, train_function  # noqa: E402
from hvd_keras.callbacks.rank_agreement import with_rank_agreement  # noqa: E402


def _make_train_function(model, original, force):
    # The train function as hvd_keras builds it, which a run resumed inside
    # an epoch first runs through the batches its checkpoint had trained.
    return checkpoint.skip_resumed_batches(model, train_function.build(model, original, force))


_compat.check()
_compat.install_trainer_hooks(_make_train_function, after_fit=preemption.exit_after_fit,
                              fit_callbacks=with_rank_agreement, input_dataset=pipeline.adjust)
_compat.install_apply_hook(optimizer.before_apply)

from hvd_keras import callbacks, data, layers, planner, schedules  # noqa: E402
from hvd_keras.broadcast import broadcast_state, broadcast_variables  # noqa: E402
from hvd_keras.checkpoint import resume  # noqa: E402
from hvd_keras.metrics import exact_metrics  # noqa: E402
from hvd_keras.optimizer import DistributedOptimizer  # noqa: E402
from hvd_keras.output import plot_history, rank_zero_output  # noqa: E402
from hvd_keras.planner import plan  # noqa: E402
from hvd_keras.preemption import PREEMPTED_EXIT_CODE  # noqa: E402
from hvd_keras.runtime import (  # noqa: E402
    barrier,
    init,
    is_chief,
    local_rank,
    local_size,
    rank,
    size,
)
from hvd_keras.schedules import scale_learning_rate  # noqa: E402

__all__ = [
    "PREEMPTED_EXIT_CODE",
    "exact_metrics",
    "plan",
    "planner",
    "plot_history",
    "rank_zero_output",
    "resume",
    "scale_learning_rate",
    "schedules",
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
