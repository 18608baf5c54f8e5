"""Learning-rate scaling and warmup for large global batches."""

import math

from hvd_keras._horovod import keras, tf
from hvd_keras.runtime import size as _size

_RULES = {
    "linear": lambda n: float(n),
    "sqrt": lambda n: math.sqrt(n),
    "none": lambda n: 1.0,
}


def scale_learning_rate(lr, rule="linear", size=None):
    """Scales a single-process learning rate for `size()` ranks.

    `"linear"` multiplies by the number of ranks (Goyal et al. 2017, for SGD),
    `"sqrt"` by its square root (often better for Adam), `"none"` keeps it.

    Args:
        lr: the single-process learning rate (a float).
        rule: `"linear"`, `"sqrt"` or `"none"`.
        size: the number of ranks; defaults to `hvd_keras.size()`.

    Example:

    ```python
    lr = hvd_keras.scale_learning_rate(0.01, rule="linear")  # 0.04 on 4 ranks
    ```
    """
    if rule not in _RULES:
        raise ValueError(
            f"rule must be one of {sorted(_RULES)}. Received: rule={rule!r}. "
            "HINT: use \"linear\" for SGD, \"sqrt\" for adaptive optimizers."
        )
    return lr * _RULES[rule](_size() if size is None else size)


@keras.saving.register_keras_serializable(package="hvd_keras")
class Warmup(keras.optimizers.schedules.LearningRateSchedule):
    """Ramps the learning rate linearly from `initial_lr` to a base rate or schedule.

    For `step < warmup_steps` the rate is
    `initial_lr + (base(step) - initial_lr) * step / warmup_steps`; from
    `warmup_steps` on it is `base(step)`. It is computed inside the compiled
    train step from the optimizer's iteration counter, so it costs no Python
    per batch and resumes correctly with the optimizer state.

    Args:
        base: the target learning rate, a float or a
            `keras.optimizers.schedules.LearningRateSchedule`, already scaled
            for the number of ranks.
        warmup_steps: number of optimizer steps of the ramp; 0 disables it.
        initial_lr: the rate at step 0. Defaults to `base(0) / size()`, the
            single-process rate under the linear scaling rule.

    Example:

    ```python
    lr = hvd_keras.schedules.Warmup(
        hvd_keras.scale_learning_rate(0.1), warmup_steps=5 * steps_per_epoch)
    optimizer = keras.optimizers.SGD(lr, momentum=0.9)
    ```
    """

    def __init__(self, base, warmup_steps, initial_lr=None):
        if not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(
                f"warmup_steps must be an integer >= 0. Received: warmup_steps={warmup_steps!r}. "
                "HINT: pass 0 to disable warmup."
            )
        if isinstance(base, dict):
            base = keras.saving.deserialize_keras_object(base)
        if not (isinstance(base, keras.optimizers.schedules.LearningRateSchedule)
                or isinstance(base, (int, float))):
            raise TypeError(
                "base must be a float or a keras.optimizers.schedules.LearningRateSchedule. "
                f"Received: {type(base).__name__}. HINT: pass the scaled learning rate as a float."
            )
        self.base = base
        self.warmup_steps = warmup_steps
        if initial_lr is None:
            start = float(base(0)) if callable(base) else float(base)
            initial_lr = start / _size()
        self.initial_lr = float(initial_lr)

    def _base(self, step):
        if callable(self.base):
            return tf.cast(self.base(step), tf.float32)
        return tf.constant(float(self.base), tf.float32)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        target = self._base(step)
        if self.warmup_steps == 0:
            return target
        progress = tf.minimum(step / float(self.warmup_steps), 1.0)
        return self.initial_lr + (target - self.initial_lr) * progress

    def get_config(self):
        base = self.base
        if isinstance(base, keras.optimizers.schedules.LearningRateSchedule):
            base = keras.saving.serialize_keras_object(base)
        return {"base": base, "warmup_steps": self.warmup_steps, "initial_lr": self.initial_lr}
