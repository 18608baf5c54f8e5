"""Every private Keras, TensorFlow and Horovod attribute that hvd_keras uses, in one place.

Keras, TensorFlow and Horovod move their internals between releases. hvd_keras
reaches into a few of them; every such use goes through this module, and
`check()` (run when hvd_keras is imported) verifies that they all exist, so an
unsupported version fails at import with one line naming the supported range
instead of deep inside a training step. The runtime guard in
`DistributedOptimizer.apply` stays as a second line of defence.
"""

import functools
import inspect
import types

from hvd_keras._horovod import hvd, keras, tf

#: The combinations proved by `make compat` (tools/versions.txt, README table).
SUPPORTED = "TensorFlow 2.16 to 2.21 with Keras 3.0 to 3.15"

LossScaleOptimizer = keras.optimizers.LossScaleOptimizer


def _trainer_class():
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    return TensorFlowTrainer


def _epoch_iterator_class():
    from keras.src.backend.tensorflow.trainer import TFEpochIterator

    return TFEpochIterator


def _base_trainer_class():
    from keras.src.trainers.trainer import Trainer

    return Trainer


def _has(owner, name):
    return lambda: hasattr(owner() if not isinstance(owner, type) else owner, name)


def _source_mentions(get, text):
    return lambda: text in inspect.getsource(get())


def _importable(module, name):
    def probe():
        import importlib

        return hasattr(importlib.import_module(module), name)

    return probe


def _seed_generator():
    from keras.src.random.seed_generator import SeedGenerator

    return SeedGenerator.__init__


def _shuffle_dataset():
    from tensorflow.python.data.ops import shuffle_op

    return shuffle_op._ShuffleDataset.__init__


def _tensorflow_evaluate():
    return _trainer_class().evaluate


def _trainer_source():
    return _base_trainer_class()


def _horovod_state_init():
    from horovod.common.elastic import State

    return State.__init__


# Every private Keras, TensorFlow and Horovod use of hvd_keras: (what, a probe
# that creates nothing, why). `check()` runs them all at import. Instance
# attributes of optimizers are checked on the first optimizer hvd_keras
# wraps (`check_optimizer`); the optional ones below are used only where they
# exist (`_make_function`, `_autoconvert_optionals`: Keras >= 3.7;
# `_iterations`: Keras >= 3.5; `aggregation`: Keras >= 3.1).
_PRIVATE_USES = [
    ("Optimizer._clip_gradients", _has(keras.optimizers.Optimizer, "_clip_gradients"),
     "the gradient allreduce is hooked there: every real update passes it once"),
    ("TensorFlowTrainer.make_train_function", _has(_trainer_class, "make_train_function"),
     "hvd_keras builds the XLA and mixed-precision train step"),
    ("TFEpochIterator._get_iterator", _has(_epoch_iterator_class, "_get_iterator"),
     "the input pipeline is adjusted for a rank on one CPU"),
    ("Trainer.get_metrics_result", _has(_base_trainer_class, "get_metrics_result"),
     "exact metrics combine metric states before results"),
    ("Trainer.compile_from_config", _has(_base_trainer_class, "compile_from_config"),
     "a model loaded from a file compiles without the wrapper"),
    ("Trainer._symbolic_build", _has(_base_trainer_class, "_symbolic_build"),
     "a run resumed inside an epoch restores its metric states"),
    ("Trainer._jit_compile", _source_mentions(_trainer_source, "self._jit_compile"),
     "the train function is compiled with hvd_keras's XLA decision, evaluate and predict with Keras's"),
    ("TensorFlowTrainer.evaluate's _use_cached_eval_dataset",
     _source_mentions(_tensorflow_evaluate, "_use_cached_eval_dataset"),
     "fit's own validation is told apart from a direct evaluate"),
    ("keras.src.backend.tensorflow.trainer.reduce_per_replica",
     _importable("keras.src.backend.tensorflow.trainer", "reduce_per_replica"),
     "the one-step train function reduces its outputs as Keras does"),
    ("keras.src.legacy.saving.legacy_h5_format.load_model_from_hdf5",
     _importable("keras.src.legacy.saving.legacy_h5_format", "load_model_from_hdf5"),
     "a model loaded from HDF5 compiles without the wrapper"),
    ("SeedGenerator's 'seed_generator_state' variable", _source_mentions(_seed_generator, "seed_generator_state"),
     "each rank's dropout and augmentation masks are its own"),
    ("tf.data's _ShuffleDataset._seed and _inputs()", lambda: (
        "self._seed, self._seed2" in inspect.getsource(_shuffle_dataset()) and hasattr(tf.data.Dataset, "_inputs")),
     "data.shard refuses a dataset shuffled without a seed"),
    ("tensorflow.python.framework.config.is_op_determinism_enabled",
     _importable("tensorflow.python.framework.config", "is_op_determinism_enabled"),
     "timing is skipped under op determinism, which refuses tf.timestamp"),
    ("Trainer._get_metrics_result_or_logs", _has(_base_trainer_class, "_get_metrics_result_or_logs"),
     "exact metrics whatever names a custom train_step gives its logs"),
    ("Layer._flatten_layers", _has(keras.layers.Layer, "_flatten_layers"),
     "BatchNormalization(synchronized=True) layers are found to be synchronised across ranks"),
    ("LossScaleOptimizer.apply", _has(LossScaleOptimizer, "apply"),
     "a LossScaleOptimizer around a distributed one is put in the order that agrees across ranks"),
    ("TensorFlowTrainer.fit", _has(_trainer_class, "fit"),
     "hvd_keras.elastic runs Keras's fit past hvd_keras.auto's patch of keras.Model.fit"),
    ("horovod.common.elastic.run_fn", _importable("horovod.common.elastic", "run_fn"),
     "hvd_keras.elastic runs Horovod's elastic loop with its own error mapping"),
    ("horovod.common.elastic.State's _host_messages and _last_updated_timestamp",
     _source_mentions(_horovod_state_init, "self._last_updated_timestamp"),
     "rank 0 reads horovodrun's hosts-updated notices without Horovod's broadcast at every commit"),
]
_INSTANCE_ATTRIBUTES = ["_learning_rate", "iterations", "gradient_accumulation_steps"]


def _refuse(missing):
    raise ImportError(
        f"hvd_keras does not support Keras {keras.__version__} on TensorFlow {tf.__version__}: "
        f"it lacks {', '.join(missing)}. Supported: {SUPPORTED}. HINT: install a supported "
        "combination (tools/versions.txt; HVD_KERAS_TF=<version> make setup)."
    )


def check():
    """Raises ImportError naming the supported versions if a private use of hvd_keras is missing.

    Run at import, it creates nothing: making an optimizer would start
    TensorFlow's runtime, after which the script could no longer set thread
    counts or visible devices (`hvd_keras.init()` pins each rank's GPU).
    """
    missing = []
    for what, probe, _ in _PRIVATE_USES:
        try:
            present = probe()
        except (ImportError, AttributeError, OSError, TypeError):
            present = False
        if not present:
            missing.append(what)
    if missing:
        _refuse(missing)


def check_optimizer(optimizer):
    """The instance half of `check`, on the first optimizer hvd_keras wraps."""
    if _checked_optimizer:
        return
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    missing = [f"{type(inner).__name__}().{name}" for name in _INSTANCE_ATTRIBUTES if not hasattr(inner, name)]
    if isinstance(optimizer, LossScaleOptimizer) and not hasattr(optimizer, "inner_optimizer"):
        missing.append("LossScaleOptimizer().inner_optimizer")
    if missing:
        _refuse(missing)
    _checked_optimizer.append(True)


_checked_optimizer = []


# --- optimizers ------------------------------------------------------------

def learning_rate_schedule(optimizer):
    """The optimizer's LearningRateSchedule, or None for a float rate."""
    rate = optimizer._learning_rate
    return rate if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule) else None


def micro_steps(optimizer):
    """The optimizer's counter of `apply` calls (batches, not updates, under accumulation).

    Keras 3.5 made `iterations` count updates (`_iterations // steps`) and
    keeps the per-batch counter in `_iterations`; before, `iterations`
    itself counted batches.
    """
    counter = getattr(optimizer, "_iterations", None)
    return optimizer.iterations if counter is None else counter


_apply_depth = [0]
_apply_hooked = []


def _defining_class(cls, name):
    return next(c for c in cls.__mro__ if name in c.__dict__)


def install_apply_hook(hook):
    """Calls `hook(optimizer)` before the outermost `apply` of any Keras optimizer; once.

    An optimizer's `apply` may call another's (a LossScaleOptimizer's calls
    its inner optimizer's): only the outermost call of a step is shown to
    `hook`. When `hook` returns True it changed the optimizer's class, and
    the call is dispatched again to the new class. Patched where `apply` is
    defined: Keras's base optimizer and LossScaleOptimizer, which overrides it.
    """
    if _apply_hooked:
        return
    owners = {_defining_class(keras.optimizers.Optimizer, "apply"), _defining_class(LossScaleOptimizer, "apply")}
    for owner in owners:
        original = owner.__dict__["apply"]

        def apply(self, grads, trainable_variables=None, _original=original):
            if _apply_depth[0] == 0 and hook(self):
                return self.apply(grads, trainable_variables)
            _apply_depth[0] += 1
            try:
                return _original(self, grads, trainable_variables)
            finally:
                _apply_depth[0] -= 1

        owner.apply = functools.wraps(original)(apply)
    _apply_hooked.append(True)


def is_seed_state(variable):
    """True for the state variable of a `keras.random.SeedGenerator` (a Dropout's, an augmentation layer's)."""
    return getattr(variable, "path", getattr(variable, "name", "")).split("/")[-1].startswith(_SEED_STATE)


_SEED_STATE = "seed_generator_state"


def all_layers(model):
    """Every layer of `model`, nested ones included (Keras's `_flatten_layers`)."""
    return list(model._flatten_layers(include_self=False, recursive=True))


def set_class(obj, cls):
    """Changes an object's class to a subclass with the same layout (no new state)."""
    object.__setattr__(obj, "__class__", cls)


# --- trainer ---------------------------------------------------------------

_hooks = {}
_loading = [0]


def _counting(function):
    # Marks the time inside `function` as loading a saved model.
    @functools.wraps(function)
    def loading(*args, **kwargs):
        _loading[0] += 1
        try:
            return function(*args, **kwargs)
        finally:
            _loading[0] -= 1

    return loading


def install_trainer_hooks(make_train_function, after_fit, fit_callbacks, input_dataset):
    """Routes every Keras model's train-function build and `fit` through hvd_keras; once.

    `make_train_function(model, original, force)` decides; `original(force)`
    is Keras's own. `after_fit(model)` runs when `fit` returns, after every
    callback's `on_train_end`; `fit_callbacks(model, callbacks)` returns the
    callback list `fit` runs with; `input_dataset(dataset)` returns the
    dataset that Keras's epoch iterator iterates (fit, evaluate, predict).
    `compile` is wrapped only to record whether `jit_compile` was left to
    `"auto"` (see `jit_compile_was_auto`): Keras resolves it inside
    `compile` and keeps no trace of the difference. The
    two paths by which Keras compiles a model it loads from a file are marked
    (see `is_loading`).
    """
    if _hooks:
        return
    trainer, base = _trainer_class(), _base_trainer_class()
    original_make = trainer.make_train_function
    original_fit = trainer.fit
    original_compile = base.compile
    signature = inspect.signature(original_compile)
    fit_signature = inspect.signature(original_fit)

    @functools.wraps(original_make)
    def patched_make(self, force=False):
        return make_train_function(self, functools.partial(original_make, self), force)

    @functools.wraps(original_fit)
    def patched_fit(self, *args, **kwargs):
        try:
            bound = fit_signature.bind(self, *args, **kwargs)
        except TypeError:  # let Keras report the bad call
            return original_fit(self, *args, **kwargs)
        bound.arguments["callbacks"] = fit_callbacks(self, bound.arguments.get("callbacks"))
        history = original_fit(*bound.args, **bound.kwargs)
        after_fit(self)
        return history

    @functools.wraps(original_compile)
    def patched_compile(self, *args, **kwargs):
        try:
            jit = signature.bind(self, *args, **kwargs).arguments.get("jit_compile", "auto")
        except TypeError:  # let Keras report the bad call
            jit = "auto"
        self._hvd_auto_jit = isinstance(jit, str) and jit == "auto"
        return original_compile(self, *args, **kwargs)

    epoch_iterator = _epoch_iterator_class()
    original_get_iterator = epoch_iterator._get_iterator

    @functools.wraps(original_get_iterator)
    def patched_get_iterator(self):
        return input_dataset(original_get_iterator(self))

    trainer.make_train_function = patched_make
    trainer.fit = patched_fit
    epoch_iterator._get_iterator = patched_get_iterator
    base.compile = patched_compile
    # Keras skips compiling a loaded model whose class overrides `compile`
    # (Trainer.compile_from_config compares them), so hvd_keras wraps
    # Trainer.compile itself and never overrides it on keras.Model.
    base.compile_from_config = _counting(base.compile_from_config)
    from keras.src.legacy.saving import legacy_h5_format

    legacy_h5_format.load_model_from_hdf5 = _counting(legacy_h5_format.load_model_from_hdf5)
    _hooks.update(make=original_make, fit=original_fit, compile=original_compile)


def wrap_compile(replacement):
    """Makes `Model.compile` call `replacement(model, original, *args, **kwargs)`.

    Installed on Keras's base Trainer, the class that loading compares
    against (see `install_trainer_hooks`).
    """
    base = _base_trainer_class()
    original = base.compile

    @functools.wraps(original)
    def compile(self, *args, **kwargs):  # noqa: A001
        return replacement(self, original, *args, **kwargs)

    base.compile = compile
    return original


def is_loading():
    """True while Keras compiles a model it loads from a file (`load_model`, .keras or HDF5)."""
    return _loading[0] > 0


def jit_compile_was_auto(model):
    """True when the model's jit_compile came from `"auto"` rather than an explicit value."""
    return getattr(model, "_hvd_auto_jit", False)


def make_step_function(model, step_function, jit_compile):
    """The train function around `step_function`, as Keras's loop calls it.

    Keras compiles the step with `model.jit_compile`; here the caller decides,
    without changing what `model.jit_compile` reports or what evaluate and
    predict use.

    With one step per call (`steps_per_execution=1`, the default) the function
    is built here, with `next(iterator)` inside the compiled function, as
    Keras 3.0 to 3.6 built it. Keras >= 3.7 returns an Optional from every call
    and unwraps it in eager Python (`has_value`, `get_value`: two eager ops
    and packing the logs' structure), which cost 1.2x in steps/s on a
    1.7 ms step here (bench/overhead.py). The end of the data arrives, as in
    Keras's function, as `OutOfRangeError`, which Keras's epoch iterator takes
    as the epoch's end. Several steps per call keep Keras's own loop.
    """
    saved = model._jit_compile
    model._jit_compile = jit_compile
    try:
        if hasattr(model, "_make_function") and (model.steps_per_execution > 1 or model.run_eagerly):
            return model._make_function(step_function)  # Keras >= 3.7
        return _make_function_on_iterator(model, step_function)
    finally:
        model._jit_compile = saved


def is_dataset_iterator(iterator):
    """True for what fit's loop passes the train function; False for train_on_batch's generator."""
    return isinstance(iterator, (tf.data.Iterator, tf.distribute.DistributedIterator))


def _make_function_on_iterator(model, step_function):
    # Keras 3.0 to 3.6's loop with the step passed in: the batch is taken from
    # the iterator inside the compiled function; steps_per_execution unrolled.
    from keras.src.backend.tensorflow.trainer import reduce_per_replica

    one_step = tf.autograph.experimental.do_not_convert(step_function)
    if not model.run_eagerly:
        one_step = tf.function(one_step, reduce_retracing=True, jit_compile=model.jit_compile)
    if hasattr(model, "_autoconvert_optionals"):  # where Keras passes None inputs as Optionals
        one_step = model._autoconvert_optionals(one_step)

    @tf.autograph.experimental.do_not_convert
    def one_step_on_data(data):
        outputs = model.distribute_strategy.run(one_step, args=(data,))
        return reduce_per_replica(outputs, model.distribute_strategy, reduction="auto")

    @tf.autograph.experimental.do_not_convert
    def on_iterator(iterator):
        for _ in range(model.steps_per_execution):
            outputs = one_step_on_data(next(iterator))
        return outputs

    if not model.run_eagerly:
        one_step_on_data = tf.function(one_step_on_data, reduce_retracing=True)
        on_iterator = tf.function(on_iterator, reduce_retracing=True)

    def function(iterator):
        if is_dataset_iterator(iterator):
            return on_iterator(iterator)
        # train_on_batch passes a new Python generator each call: a compiled
        # function would retrace for every one, so its batches go in as data.
        for _, data in zip(range(model.steps_per_execution), iterator):
            outputs = one_step_on_data(data)
        return outputs

    return function


def trainer_fit(model, *args, **kwargs):
    """Keras's `fit` as hvd_keras hooks it, past `hvd_keras.auto`'s patch of `keras.Model.fit`."""
    return _trainer_class().fit(model, *args, **kwargs)


def hosts_updated_messages(state):
    """The queue into which Horovod's notification service puts (timestamp, update) for a `State`."""
    return state._host_messages


def last_hosts_update(state, timestamp=None):
    """A `State`'s newest hosts-updated timestamp taken; sets it when `timestamp` is given."""
    if timestamp is not None:
        state._last_updated_timestamp = timestamp
    return state._last_updated_timestamp


def build_metrics(model, data_batch):
    """Creates the compiled metrics' variables from one batch, without running a step."""
    model._symbolic_build(data_batch=data_batch)


def set_jit_compile(model, value):
    """Sets jit_compile without Keras's warning path (value is already decided)."""
    model._jit_compile = value


def variable_aggregation(variable):
    """How a metric state variable combines across replicas: `"sum"`, `"mean"`, ...

    Keras 3.0 variables have no `aggregation`; every metric state of that
    release is a total or a count, which sum.
    """
    return getattr(variable, "aggregation", "sum")


def wrap_metrics_result_or_logs(model, replacement):
    """Makes the model's epoch and evaluate logs come from `replacement(model, logs, original)`.

    Keras >= 3.0's `Trainer._get_metrics_result_or_logs(logs)` chooses
    between the metrics' results and the last step's logs; `original(logs)`
    is Keras's own.
    """
    original = model._get_metrics_result_or_logs

    def metrics_result_or_logs(self, logs):
        return replacement(self, logs, original)

    model._get_metrics_result_or_logs = types.MethodType(metrics_result_or_logs, model)


def is_fit_validation(evaluate_kwargs):
    """True for the `evaluate` call that `fit` makes for its validation data."""
    return bool(evaluate_kwargs.get("_use_cached_eval_dataset"))


# --- TensorFlow ------------------------------------------------------------

def unseeded_random_datasets(dataset):
    """Names of the steps of a `tf.data` pipeline that draw from an unseeded generator (`shuffle()` without a seed).

    Walks the pipeline's Python objects (`_inputs()`; `_seed`, `_seed2` as
    `random_seed.get_seed` left them: both 0 when neither the op nor the
    global seed was set), not its serialized graph, which would copy every
    array the pipeline holds.
    """
    found, stack = [], [dataset]
    while stack:
        step = stack.pop()
        seeds = [getattr(step, "_seed", None), getattr(step, "_seed2", None)]
        if all(s is not None for s in seeds) and all(int(s) == 0 for s in seeds):
            found.append(type(step).__name__.lstrip("_"))
        stack.extend(step._inputs())
    return found


def is_op_determinism_enabled():
    # TensorFlow exports the setter but not the getter.
    from tensorflow.python.framework import config

    return config.is_op_determinism_enabled()


# --- Horovod ---------------------------------------------------------------

# Horovod's elastic loop, its State and the two exceptions the loop acts on
# (horovod.common: Horovod's framework-neutral layer, whose TensorFlow
# wrapper hvd_keras.elastic replaces).
from horovod.common.elastic import State as ElasticState  # noqa: E402
from horovod.common.elastic import run_fn as elastic_run_fn  # noqa: E402
from horovod.common.exceptions import HorovodInternalError, HostsUpdatedInterrupt  # noqa: E402,F401


def controller_built(controller):
    """Whether horovod was built with the "gloo" or "mpi" controller."""
    return hvd.gloo_built() if controller == "gloo" else hvd.mpi_built()
