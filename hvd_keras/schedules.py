"""Learning-rate scaling and warmup for large global batches."""

import math

from hvd_keras._deprecation import renamed
from hvd_keras._horovod import keras, tf
from hvd_keras.runtime import size as _size

_RULES = {
    "linear": lambda n: float(n),
    "sqrt": lambda n: math.sqrt(n),
    "none": lambda n: 1.0,
}


def scale_learning_rate(learning_rate=None, rule="linear", size=None, lr=None):
    """Scales a single-process learning rate for `size()` ranks.

    `"linear"` multiplies by the number of ranks (Goyal et al. 2017, for SGD),
    `"sqrt"` by its square root (often better for Adam), `"none"` keeps it.

    Args:
        learning_rate: the single-process learning rate (a float).
        rule: `"linear"`, `"sqrt"` or `"none"`.
        size: the number of ranks; defaults to `hvd_keras.size()`.
        lr: deprecated name of `learning_rate`.

    Example:

    ```python
    lr = hvd_keras.scale_learning_rate(0.01, rule="linear")  # 0.04 on 4 ranks
    ```
    """
    learning_rate = renamed("scale_learning_rate", "lr", "learning_rate", lr, learning_rate)
    if learning_rate is None:
        raise TypeError("scale_learning_rate needs the single-process learning rate. Received: nothing. "
                        "HINT: scale_learning_rate(0.01).")
    if rule not in _RULES:
        raise ValueError(
            f"rule must be one of {sorted(_RULES)}. Received: rule={rule!r}. "
            "HINT: use \"linear\" for SGD, \"sqrt\" for adaptive optimizers."
        )
    return learning_rate * _RULES[rule](_size() if size is None else size)


def warmup_rate(step, warmup_steps, initial_learning_rate, target):
    """The ramp of both warmups (`Warmup`, `callbacks.LearningRateWarmup`): linear from the initial rate to the target.

    `initial + (target - initial) * min(step / warmup_steps, 1)`; `target`
    from `warmup_steps` on. Python numbers in, a Python number out; a tensor
    step (inside the compiled step) gives a tensor.
    """
    if warmup_steps == 0:
        return target
    if not tf.is_tensor(step):
        return target if step >= warmup_steps else (
            initial_learning_rate + (target - initial_learning_rate) * step / warmup_steps)
    progress = tf.minimum(step / float(warmup_steps), 1.0)
    return initial_learning_rate + (target - initial_learning_rate) * progress


@keras.saving.register_keras_serializable(package="hvd_keras")
class Warmup(keras.optimizers.schedules.LearningRateSchedule):
    """Ramps the learning rate linearly from `initial_learning_rate` to a target rate or schedule.

    For `step < warmup_steps` the rate is
    `initial_learning_rate + (target(step) - initial_learning_rate) * step / warmup_steps`;
    from `warmup_steps` on it is `target(step)`. It is computed inside the
    compiled train step from the optimizer's iteration counter, so it costs
    no Python per batch and resumes exactly with the optimizer state.

    Args:
        warmup_target: the rate after the warmup, a float or a
            `keras.optimizers.schedules.LearningRateSchedule` that takes over
            (for example a decay), already scaled for the number of ranks.
        warmup_steps: number of optimizer steps of the ramp; 0 disables it.
        initial_learning_rate: the rate at step 0. Defaults to
            `warmup_target(0) / size()`, the single-process rate under the
            linear scaling rule.
        base: deprecated name of `warmup_target`.
        initial_lr: deprecated name of `initial_learning_rate`.

    Example:

    ```python
    lr = hvd_keras.schedules.Warmup(
        hvd_keras.scale_learning_rate(0.1), warmup_steps=5 * steps_per_epoch)
    optimizer = keras.optimizers.SGD(lr, momentum=0.9)
    ```
    """

    def __init__(self, warmup_target=None, warmup_steps=0, initial_learning_rate=None, base=None,
                 initial_lr=None):
        warmup_target = renamed("Warmup", "base", "warmup_target", base, warmup_target)
        initial_learning_rate = renamed("Warmup", "initial_lr", "initial_learning_rate", initial_lr,
                                        initial_learning_rate)
        if not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(
                f"warmup_steps must be an integer >= 0. Received: warmup_steps={warmup_steps!r}. "
                "HINT: pass 0 to disable warmup."
            )
        if isinstance(warmup_target, dict):
            warmup_target = keras.saving.deserialize_keras_object(warmup_target)
        if not (isinstance(warmup_target, keras.optimizers.schedules.LearningRateSchedule)
                or isinstance(warmup_target, (int, float))):
            raise TypeError(
                "warmup_target must be a float or a keras.optimizers.schedules.LearningRateSchedule. "
                f"Received: {type(warmup_target).__name__}. HINT: pass the scaled learning rate as a float."
            )
        self.warmup_target = warmup_target
        self.warmup_steps = warmup_steps
        if initial_learning_rate is None:
            start = float(warmup_target(0)) if callable(warmup_target) else float(warmup_target)
            initial_learning_rate = start / _size()
        self.initial_learning_rate = float(initial_learning_rate)

    def _target(self, step):
        if callable(self.warmup_target):
            return tf.cast(self.warmup_target(step), tf.float32)
        return tf.constant(float(self.warmup_target), tf.float32)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        return warmup_rate(step, self.warmup_steps, self.initial_learning_rate, self._target(step))

    def get_config(self):
        target = self.warmup_target
        if isinstance(target, keras.optimizers.schedules.LearningRateSchedule):
            target = keras.saving.serialize_keras_object(target)
        return {"warmup_target": target, "warmup_steps": self.warmup_steps,
                "initial_learning_rate": self.initial_learning_rate}
