"""LearningRateWarmup callback."""

from hvd_keras import _compat
from hvd_keras._deprecation import renamed
from hvd_keras._horovod import keras
from hvd_keras.runtime import is_chief, size
from hvd_keras.schedules import warmup_rate


class LearningRateWarmup(keras.callbacks.Callback):
    """Ramps a float learning rate linearly over the first epochs.

    For users who keep a float learning rate in the optimizer; with a
    schedule, prefer `hvd_keras.schedules.Warmup`, which runs inside the
    compiled step. At step `t` (batches trained so far, read from the
    optimizer, so a resumed run continues the ramp where it stopped) below
    `warmup_epochs * steps_per_epoch` the rate is
    `initial_learning_rate + (warmup_target - initial_learning_rate) * t / (warmup_epochs * steps_per_epoch)`.

    Args:
        warmup_epochs: length of the ramp in epochs (may be fractional); 0
            disables it.
        steps_per_epoch: batches per epoch on each rank.
        momentum_correction: when the rate changes from `a` to `b`, scale the
            momentum buffers of momentum SGD by `b / a` (Goyal et al. 2017),
            so the effective step does not lag the rate.
        initial_learning_rate: rate at step 0; defaults to
            `warmup_target / size()`.
        warmup_target: rate at the end of the ramp. Defaults to the
            optimizer's learning rate when training first begins; a run
            resumed inside the ramp recovers it from the saved rate.
        verbose: 1 prints the rate at the end of the warmup (rank 0).
        initial_lr: deprecated name of `initial_learning_rate` (Horovod's
            callback of the same name meant the target instead).

    Example:

    ```python
    opt = keras.optimizers.SGD(hvd_keras.scale_learning_rate(0.1), momentum=0.9)
    model.fit(x, y, callbacks=[
        hvd_keras.callbacks.LearningRateWarmup(warmup_epochs=3, steps_per_epoch=100)])
    ```
    """

    def __init__(self, warmup_epochs, steps_per_epoch, momentum_correction=True,
                 initial_learning_rate=None, warmup_target=None, verbose=0, initial_lr=None):
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
        initial_learning_rate = renamed(
            "LearningRateWarmup", "initial_lr", "initial_learning_rate", initial_lr, initial_learning_rate,
            note="Horovod's initial_lr was the rate after the warmup: that is warmup_target here.")
        self.warmup_steps = int(round(warmup_epochs * steps_per_epoch))
        self.steps_per_epoch = steps_per_epoch
        self.momentum_correction = momentum_correction
        self.initial_learning_rate = None if initial_learning_rate is None else float(initial_learning_rate)
        self.warmup_target = None if warmup_target is None else float(warmup_target)
        self.verbose = verbose
        self._done = False

    def _optimizer(self):
        optimizer = self.model.optimizer
        return getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer

    def _steps_trained(self):
        return int(_compat.micro_steps(self._optimizer()).numpy())

    def on_train_begin(self, logs=None):
        optimizer = self._optimizer()
        if _compat.learning_rate_schedule(optimizer) is not None:
            raise ValueError(
                "LearningRateWarmup needs a float learning rate; the optimizer has a schedule. "
                "HINT: wrap the schedule in hvd_keras.schedules.Warmup instead."
            )
        trained = self._steps_trained()
        self._done = trained > self.warmup_steps
        if self.warmup_target is None:
            last = trained - int(getattr(self.model, "steps_per_execution", 1) or 1)
            self.warmup_target = self._target_from(float(keras.ops.convert_to_numpy(optimizer.learning_rate)), last)
        if self.initial_learning_rate is None:
            self.initial_learning_rate = self.warmup_target / size()

    def _target_from(self, rate, last):
        """The target that gives `rate` at step `last`, the step whose rate the optimizer holds."""
        if last < 0 or last >= self.warmup_steps:
            return rate  # not started (a fresh run) or already past the ramp
        progress = last / self.warmup_steps
        if self.initial_learning_rate is None:  # rate = target * (1/n + (1 - 1/n) * progress)
            return rate / (1.0 / size() + (1.0 - 1.0 / size()) * progress)
        if progress == 0:
            raise ValueError(
                "LearningRateWarmup cannot tell its target from a run resumed at its first step. "
                f"Received: initial_learning_rate={self.initial_learning_rate}, no warmup_target. "
                "HINT: pass warmup_target=<the rate after the warmup>."
            )
        return self.initial_learning_rate + (rate - self.initial_learning_rate) / progress

    def rate_at(self, step):
        """The learning rate this callback sets for step `step`."""
        return warmup_rate(step, self.warmup_steps, self.initial_learning_rate, self.warmup_target)

    def on_train_batch_begin(self, batch, logs=None):
        if self._done:
            return  # nothing to do after the ramp: no Python work per batch
        step = self._steps_trained()
        self._done = step >= self.warmup_steps
        optimizer = self._optimizer()
        old = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
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
        if self._done and self.verbose and is_chief():
            print(f"LearningRateWarmup: warmup done, learning rate {new:.6g}")
