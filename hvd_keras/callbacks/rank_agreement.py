"""RankAgreement callback."""

from hvd_keras import preemption, watchdog
from hvd_keras._horovod import hvd, keras, tf
from hvd_keras.optimizer import enable_step_option, primary_optimizer
from hvd_keras.runtime import is_chief, size


class RankAgreement(keras.callbacks.Callback):
    """Keeps the ranks of one `fit` in step: the same steps per epoch, and stopping together.

    hvd_keras adds it to every `fit` of a model with a `DistributedOptimizer`
    on more than one rank (at the end of the callback list); there is no need
    to pass it. At the start of `fit` one small collective compares the
    steps per epoch of every rank, and different counts (data split unevenly
    by hand) are one line on every rank before any step. When a callback
    sets `model.stop_training` on some ranks only (`TerminateOnNaN` on a NaN
    that one rank saw, a time budget, a callback of your own), the request
    rides in the next step's gradient allreduce and every rank stops after
    that same step; a stop decided at an epoch end is agreed by one scalar
    allreduce there.

    Example:

    ```python
    model.fit(x, y, callbacks=[keras.callbacks.TerminateOnNaN()])  # RankAgreement is added for you
    ```
    """

    # Its batch end only turns a stop set by another callback into a request;
    # the agreed stop is applied by the train function itself
    # (preemption.taking_agreed_flags). So it lets Keras dispatch batch ends
    # on a thread where nothing else needs them in the main thread.
    async_safe = True

    def __init__(self):
        super().__init__()
        self._active = False

    def on_train_begin(self, logs=None):
        self._active = size() > 1 and primary_optimizer(self.model) is not None
        if not self._active:
            return
        steps = self.params.get("steps") if self.params else None
        with watchdog.timed("hvd_keras.steps_per_epoch"):
            everyone = hvd.allgather_object(steps, name="hvd_keras.steps_per_epoch")
        if len(set(everyone)) > 1:
            counts = ", ".join(f"rank {r}: {s}" for r, s in enumerate(everyone))
            raise ValueError(
                f"hvd_keras: ranks would run different numbers of steps per epoch ({counts}), so one "
                "would wait for the others forever. HINT: shard with hvd_keras.data.shard (equal "
                "shards), or pass the same steps_per_epoch on every rank."
            )
        if steps is None and is_chief():
            print("hvd_keras: the number of steps per epoch is unknown (a dataset without a known "
                  "length): every rank must run the same number of steps; pass steps_per_epoch to be sure.",
                  flush=True)
        enable_step_option(self.model, "_hvd_carry_stop")
        preemption.requests.reset()

    def on_train_batch_end(self, batch, logs=None):
        if not self._active:
            return
        preempt, stop = preemption.requests.agreed()
        if preempt or stop:
            return  # already agreed by every rank, and applied by the train function
        if self.model.stop_training:
            # Not yet: the other ranks learn it in the next step's allreduce,
            # and every rank stops after that same step.
            preemption.requests.request(preemption.StopRequests.STOP)
            self.model.stop_training = False

    def on_epoch_end(self, epoch, logs=None):
        if not self._active:
            return
        preemption.requests.flush()
        preempt, stop = preemption.requests.agreed()
        if preempt:
            return
        wants = self.model.stop_training or preemption.requests.local[preemption.StopRequests.STOP] or stop
        with watchdog.timed("hvd_keras.stop_training"):
            votes = hvd.allreduce(tf.constant(1.0 if wants else 0.0), op=hvd.Sum, name="hvd_keras.stop_training")
        self.model.stop_training = float(votes) > 0


def with_rank_agreement(model, callbacks):
    """The callbacks `fit` runs with: the user's, then a `RankAgreement` on several ranks (hvd_keras's fit hook)."""
    if size() == 1 or primary_optimizer(model) is None:
        return callbacks
    callbacks = list(callbacks or [])
    if not any(isinstance(c, RankAgreement) for c in callbacks):
        callbacks.append(RankAgreement())
    return callbacks
