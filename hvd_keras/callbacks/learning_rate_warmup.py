"""LearningRateWarmup callback."""

from hvd_keras import _compat
from hvd_keras._horovod import keras
from hvd_keras.runtime import size


class LearningRateWarmup(keras.callbacks.Callback):
    """Ramps a float learning rate linearly over the first epochs.

    For users who keep a float learning rate in the optimizer; with a
    schedule, prefer `hvd_keras.schedules.Warmup`, which runs inside the
    compiled step. At global step `t = epoch * steps_per_epoch + batch` below
    `warmup_epochs * steps_per_epoch` the rate is
    `initial_lr + (target - initial_lr) * t / (warmup_epochs * steps_per_epoch)`,
    where `target` is the optimizer's learning rate when training begins.

    Args:
        warmup_epochs: length of the ramp in epochs (may be fractional); 0
            disables it.
        steps_per_epoch: optimizer steps per epoch on each rank.
        momentum_correction: when the rate changes from `a` to `b`, scale the
            momentum buffers of momentum SGD by `b / a` (Goyal et al. 2017),
            so the effective step does not lag the rate.
        initial_lr: rate at step 0; defaults to `target / size()`.
        verbose: 1 prints the rate at the end of the warmup (rank 0).

    Example:

    ```python
    opt = keras.optimizers.SGD(hvd_keras.scale_learning_rate(0.1), momentum=0.9)
    model.fit(x, y, callbacks=[
        hvd_keras.callbacks.LearningRateWarmup(warmup_epochs=3, steps_per_epoch=100)])
    ```
    """

    def __init__(self, warmup_epochs, steps_per_epoch, momentum_correction=True, initial_lr=None,
                 verbose=0):
        super().__init__()
        if warmup_epochs < 0:
            raise ValueError(
                f"warmup_epochs must be >= 0. Received: warmup_epochs={warmup_epochs}. "
                "HINT: pass 0 to disable warmup."
            )
        if not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
            raise ValueError(
                f"steps_per_epoch must be an integer >= 1. Received: steps_per_epoch={steps_per_epoch!r}. "
                "HINT: pass ceil(samples_per_rank / batch_size)."
            )
        self.warmup_steps = int(round(warmup_epochs * steps_per_epoch))
        self.steps_per_epoch = steps_per_epoch
        self.momentum_correction = momentum_correction
        self.initial_lr = initial_lr
        self.verbose = verbose
        self._epoch = 0
        self.target_lr = None

    def _optimizer(self):
        optimizer = self.model.optimizer
        return getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer

    def on_train_begin(self, logs=None):
        optimizer = self._optimizer()
        if _compat.learning_rate_schedule(optimizer) is not None:
            raise ValueError(
                "LearningRateWarmup needs a float learning rate; the optimizer has a schedule. "
                "HINT: wrap the schedule in hvd_keras.schedules.Warmup instead."
            )
        if self.target_lr is None:
            self.target_lr = float(optimizer.learning_rate)
            if self.initial_lr is None:
                self.initial_lr = self.target_lr / size()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def rate_at(self, step):
        """The learning rate this callback sets for global step `step`."""
        if step >= self.warmup_steps:
            return self.target_lr
        return self.initial_lr + (self.target_lr - self.initial_lr) * step / self.warmup_steps

    def on_train_batch_begin(self, batch, logs=None):
        step = self._epoch * self.steps_per_epoch + batch
        if step > self.warmup_steps:
            return  # nothing to do after the ramp: no Python work per batch
        optimizer = self._optimizer()
        old = float(optimizer.learning_rate)
        new = self.rate_at(step)
        if new == old:
            return
        optimizer.learning_rate = new
        momentums = getattr(optimizer, "momentums", None)
        if self.momentum_correction and momentums and getattr(optimizer, "momentum", 0) and old > 0:
            # Keras SGD's velocity carries the learning rate (m = mu*m - lr*g),
            # so it is rescaled to the new rate.
            for m in momentums:
                m.assign(m * (new / old))
        if step == self.warmup_steps and self.verbose and self.model is not None:
            from hvd_keras.runtime import is_chief

            if is_chief():
                print(f"LearningRateWarmup: warmup done, learning rate {new:.6g}")
