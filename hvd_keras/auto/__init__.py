"""One-line adoption: `import hvd_keras.auto` makes a plain Keras 3 script data-parallel.

Started with horovodrun, mpirun or srun, the script trains as one data-parallel
job; started as one plain process, it behaves exactly as without the import.

What changes, through hvd_keras's public pieces:

- `Model.compile`: the optimizer (an instance or a name such as `"adam"`) is
  wrapped in `DistributedOptimizer` (a new optimizer; the one passed in is
  left as it was), its float learning rate scaled by
  `HVD_KERAS_LR_SCALING`; metrics become exact over all ranks
  (`exact_metrics`). The compile that `keras.saving.load_model` runs is left
  plain, so a model loaded on one rank evaluates and predicts there alone.
- Before the script's data code (at the import): on several ranks, Python,
  NumPy, TensorFlow and Keras are seeded with one seed of the job, the same
  on every rank (`hvd_keras.seeds`), so unseeded shuffles before sharding
  agree. Dropout and augmentation masks still differ between ranks.
- `Model.fit`: the optimizers a model keeps as attributes for its own
  `train_step` (set in a custom `compile`) are distributed in place, their
  float rates scaled as compile's; numpy and `tf.data` inputs (and `validation_data`) are sharded
  so each sample is seen once per epoch across ranks; `steps_per_epoch` and
  `validation_steps` are divided among ranks; the initial state is broadcast
  from rank 0; a learning-rate warmup of `HVD_KERAS_WARMUP_EPOCHS` epochs is
  added; progress output and file-writing callbacks stay on rank 0.
- `Model.evaluate`: every rank evaluates all the data, so the results are the
  single-process ones, equal on every rank. `predict` is unchanged.
- `Model.save`, `Model.save_weights`: only rank 0 writes (other ranks
  return at once: call `hvd_keras.barrier()` before reading the file back on
  other ranks).

Environment variables (read at import):

| variable | values | default |
| --- | --- | --- |
| `HVD_KERAS_LR_SCALING` | `linear`, `sqrt`, `none` | `linear` |
| `HVD_KERAS_WARMUP_EPOCHS` | a number >= 0 | `0` |
| `HVD_KERAS_EXACT_METRICS` | `1`, `0` | `1` |

Example:

```python
import hvd_keras.auto  # the one line; the rest is a plain Keras script
import keras
...
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(x, y, batch_size=32, epochs=5)
```

Or without editing the script: `horovodrun -np 2 python -m hvd_keras.auto train.py`.
"""

import dataclasses
import functools
import inspect
import os

from hvd_keras import _api  # noqa: F401  (Keras's trainer hooked, as by any use of the public API)
from hvd_keras import _compat
from hvd_keras import data as _data
from hvd_keras import seeds as _seeds
from hvd_keras.elastic.fit import fit_from_auto as _elastic_fit
from hvd_keras.elastic.fit import is_elastic as _is_elastic
from hvd_keras._horovod import keras, tf
from hvd_keras.callbacks import BroadcastInitialState, LearningRateWarmup
from hvd_keras.metrics import exact_metrics
from hvd_keras.broadcast import model_optimizers
from hvd_keras.optimizer import DistributedOptimizer, distribute_in_place, is_distributed, primary_optimizer
from hvd_keras.output import rank_zero_output
from hvd_keras.runtime import init, is_chief, rank, size
from hvd_keras.schedules import scale_learning_rate


@dataclasses.dataclass(frozen=True)
class Settings:
    lr_scaling: str = "linear"
    warmup_epochs: float = 0.0
    exact_metrics: bool = True


def _bad_env(name, value, expected):
    return ValueError(
        f"{name} must be {expected}. Received: {name}={value!r}. "
        f"HINT: unset {name} for the default, or set one of the values above."
    )


def read_settings(environ=None):
    """Parses the `HVD_KERAS_*` variables; one-line errors for bad values."""
    environ = os.environ if environ is None else environ
    scaling = environ.get("HVD_KERAS_LR_SCALING", "linear").strip().lower()
    if scaling not in ("linear", "sqrt", "none"):
        raise _bad_env("HVD_KERAS_LR_SCALING", scaling, "one of linear, sqrt, none")
    raw = environ.get("HVD_KERAS_WARMUP_EPOCHS", "0")
    try:
        warmup = float(raw)
    except ValueError:
        raise _bad_env("HVD_KERAS_WARMUP_EPOCHS", raw, "a number >= 0") from None
    if not warmup >= 0:
        raise _bad_env("HVD_KERAS_WARMUP_EPOCHS", raw, "a number >= 0")
    exact = environ.get("HVD_KERAS_EXACT_METRICS", "1").strip()
    if exact not in ("0", "1"):
        raise _bad_env("HVD_KERAS_EXACT_METRICS", exact, "1 or 0")
    return Settings(lr_scaling=scaling, warmup_epochs=warmup, exact_metrics=exact == "1")


SETTINGS = read_settings()
_originals = {}


def _patch(name):
    def decorate(replacement):
        original = getattr(keras.Model, name)
        _originals[name] = original
        setattr(keras.Model, name, functools.wraps(original)(replacement))
        return replacement

    return decorate


def _present(*args, **kwargs):
    # The arrays given, without the Nones (an absent y or sample weight).
    parts = {**{i: a for i, a in enumerate(args)}, **kwargs}
    return {k: v for k, v in parts.items() if v is not None}


def _shardable(x):
    if isinstance(x, tf.data.Dataset):
        return True
    leaves = tf.nest.flatten(x)
    return bool(leaves) and all(hasattr(leaf, "__len__") and hasattr(leaf, "__getitem__") for leaf in leaves)


def compile(self, original, optimizer="rmsprop", *args, **kwargs):  # noqa: A001
    if _compat.is_loading():
        # keras.saving.load_model compiles what it loads: plainly, so that a
        # model loaded on one rank evaluates and predicts there with no
        # collective. Compile it again to train it on all ranks.
        return original(self, optimizer, *args, **kwargs)
    if isinstance(optimizer, str):
        optimizer = keras.optimizers.get(optimizer)
    if isinstance(optimizer, keras.optimizers.Optimizer) and not is_distributed(optimizer):
        # The wrapper is a new optimizer: scale its rate, never the caller's
        # (compiling twice with one optimizer must not scale twice).
        optimizer = _scaled(DistributedOptimizer(optimizer))
    result = original(self, optimizer, *args, **kwargs)
    if SETTINGS.exact_metrics:
        exact_metrics(self)
    return result


_originals["compile"] = _compat.wrap_compile(compile)


def _scaled(optimizer):
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    if _compat.learning_rate_schedule(inner) is None:
        rate = float(keras.ops.convert_to_numpy(inner.learning_rate))
        inner.learning_rate = scale_learning_rate(rate, SETTINGS.lr_scaling)
    return optimizer


def _distribute_attribute_optimizers(model):
    # A custom compile that keeps its own optimizers (`self.d_optimizer = ...`)
    # for its train_step: those are the ones that train, and compile's
    # argument may be unused. They are distributed where they are, once (a
    # distributed one is left as it is, so a second fit scales nothing again).
    for name, optimizer in model_optimizers(model).items():
        if name != "optimizer" and not is_distributed(optimizer):
            _scaled(distribute_in_place(optimizer))


@_patch("fit")
def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
        validation_split=0.0, validation_data=None, shuffle=True, class_weight=None,
        sample_weight=None, initial_epoch=0, steps_per_epoch=None, validation_steps=None, **kwargs):
    _distribute_attribute_optimizers(self)
    if _is_elastic():
        # Started by horovodrun in elastic mode: hvd_keras.elastic.fit (its data resharded at every resize).
        return _elastic_fit(self, x, y, batch_size, epochs, verbose, callbacks, validation_split, validation_data,
                            shuffle, class_weight, sample_weight, initial_epoch, steps_per_epoch, validation_steps,
                            kwargs, SETTINGS.lr_scaling, SETTINGS.warmup_epochs)
    if size() > 1 and primary_optimizer(self) is None:
        raise RuntimeError(
            "hvd_keras.auto: this model's optimizer does not average gradients across ranks: it "
            "was compiled before `import hvd_keras.auto`, or loaded from a file (load_model "
            "compiles plainly). HINT: put `import hvd_keras.auto` at the top of the script, "
            "before any model is compiled; compile a loaded model again before fit."
        )
    if size() > 1:
        if isinstance(x, (tf.data.Dataset, keras.utils.PyDataset)):
            x = _data.shard(x)
        elif inspect.isgenerator(x):
            raise TypeError(_data.generator_error("hvd_keras.auto"))
        elif _shardable(_present(x=x, y=y, sample_weight=sample_weight)):
            sharded = _data.shard(_present(x=x, y=y, sample_weight=sample_weight))
            x, y, sample_weight = (sharded.get(k) for k in ("x", "y", "sample_weight"))
        else:
            raise TypeError(
                "hvd_keras.auto can shard numpy arrays, tf.data datasets and keras.utils.PyDataset. "
                f"Received: x of type {type(x).__name__}. HINT: pass one of those, or shard "
                "yourself with hvd_keras.data.shard."
            )
        if isinstance(validation_data, (tf.data.Dataset, keras.utils.PyDataset)):
            validation_data = _data.shard(validation_data)
        elif inspect.isgenerator(validation_data):
            raise TypeError(_data.generator_error("hvd_keras.auto"))
        elif validation_data is not None and _shardable(_present(*validation_data)):
            validation_data = tuple(_data.shard(_present(*validation_data)).values())
        if steps_per_epoch:
            steps_per_epoch = max(1, steps_per_epoch // size())
        if validation_steps:
            validation_steps = max(1, validation_steps // size())
    callbacks = list(callbacks or [])
    callbacks.insert(0, BroadcastInitialState())
    if SETTINGS.warmup_epochs > 0 and size() > 1:
        steps = steps_per_epoch or _steps(x, batch_size, validation_split)
        callbacks.insert(1, LearningRateWarmup(SETTINGS.warmup_epochs, steps))
    return _originals["fit"](
        self, x, y, batch_size=batch_size, epochs=epochs, validation_split=validation_split,
        validation_data=validation_data, shuffle=shuffle, class_weight=class_weight,
        sample_weight=sample_weight, initial_epoch=initial_epoch, steps_per_epoch=steps_per_epoch,
        validation_steps=validation_steps, **rank_zero_output(callbacks, verbose), **kwargs)


def _steps(x, batch_size, validation_split):
    if isinstance(x, tf.data.Dataset):
        n = int(x.cardinality())
        return max(n, 1)
    if isinstance(x, keras.utils.PyDataset):
        return max(1, len(x))
    n = len(tf.nest.flatten(x)[0])
    n -= int(n * validation_split)
    return max(1, -(-n // (batch_size or 32)))


@_patch("evaluate")
def evaluate(self, *args, **kwargs):
    if _compat.is_fit_validation(kwargs):
        # fit's validation: the data were sharded, exact metrics combine them.
        return _originals["evaluate"](self, *args, **kwargs)
    # A direct call: every rank evaluates all the data, so the results are the
    # single-process ones on every rank, with no communication.
    kwargs["verbose"] = kwargs.get("verbose", "auto") if is_chief() else 0
    self._hvd_local_metrics = True
    try:
        return _originals["evaluate"](self, *args, **kwargs)
    finally:
        self._hvd_local_metrics = False


# No barrier here: rank-0-only callbacks (ModelCheckpoint) call save on rank 0
# alone, and a collective there would deadlock.
@_patch("save")
def save(self, *args, **kwargs):
    if is_chief():
        return _originals["save"](self, *args, **kwargs)


@_patch("save_weights")
def save_weights(self, *args, **kwargs):
    if is_chief():
        return _originals["save_weights"](self, *args, **kwargs)


def describe():
    """Prints what `hvd_keras.auto` patched and the settings in effect (rank 0)."""
    if is_chief():
        print(f"hvd_keras.auto: rank {rank()} of {size()}; patched keras.Model."
              + ", keras.Model.".join(sorted(_originals)))
        for field in dataclasses.fields(SETTINGS):
            env = "HVD_KERAS_" + field.name.upper()
            print(f"  {env}={getattr(SETTINGS, field.name)}"
                  + ("" if env in os.environ else " (default)"))


init()
if size() > 1:
    # Before the script's data code: its unseeded shuffles agree across ranks.
    _seeds.agree_global_seed(size())
