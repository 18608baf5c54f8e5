"""Keras 3 optimizers whose gradients are averaged across ranks by Horovod."""

import contextlib
import dataclasses
import functools
import os

from hvd_keras import _compat, preemption
from hvd_keras._horovod import hvd, keras, tf
from hvd_keras.broadcast import check_same_structure, model_optimizers
from hvd_keras.runtime import size

_OPS = {"average": hvd.Average, "sum": hvd.Sum, "adasum": hvd.Adasum}
_COMPRESSIONS = {"none": hvd.Compression.none, "fp16": hvd.Compression.fp16}


def _named(value, table, what, hint):
    # A string of the table, or Horovod's own object for it (hvd.Sum, hvd.Compression.fp16).
    if isinstance(value, str) and value.lower() in table:
        return value.lower()
    for name, known in table.items():
        if value is known or (type(value) is int and value == known):
            return name
    raise ValueError(f"{what} must be one of {sorted(table)} or Horovod's own object for it. "
                     f"Received: {what}={value!r}. HINT: {hint}")


@dataclasses.dataclass(frozen=True)
class _Settings:
    op: object
    compression: object
    sparse_as_dense: bool
    # Horovod sums the gradients of the accumulated batches by default
    # (average_aggregated_gradients=False); Keras averages them.
    aggregate_scale: float = 1.0


_timing = {}


def allreduce_seconds():
    """Seconds spent in the gradient allreduce (waiting included) while timed."""
    if not _timing:
        with tf.init_scope():
            _timing["seconds"] = tf.Variable(0.0, dtype=tf.float64, trainable=False,
                                             name="hvd_keras_allreduce_seconds")
    return _timing["seconds"]


def enable_step_option(model, option):
    """Turns on an optional part of the compiled step (`"_hvd_timing"`, `"_hvd_carry_stop"`).

    Options are off by default so that the step carries nothing unused; turning
    one on retraces the model's train function once.
    """
    optimizer = primary_optimizer(model)
    if not getattr(optimizer, option, False):
        setattr(optimizer, option, True)
        model.make_train_function(force=True)


# Set while `built_locally` runs: the structure check is a collective, which
# a worker joining an elastic job would run alone (the others built theirs
# long ago); the elastic state's sync checks the structure on every rank.
_local_build = []


@contextlib.contextmanager
def built_locally():
    """Within the block, building a distributed optimizer runs no collective (elastic training)."""
    _local_build.append(True)
    try:
        yield
    finally:
        _local_build.pop()


class _AllreduceMixin:
    """The one place where gradients cross ranks: `reduce`, one fused grouped allreduce."""

    # Trace-time state, set on the instance: `_hvd_pass_through` (gradients
    # arrive already reduced: an outer LossScaleOptimizer or the XLA step
    # reduced them), `_hvd_capture` (an object with a `calls` list: `apply`
    # only records its arguments there, see hvd_keras.train_function; not a
    # bare list, which Keras's attribute tracking would copy).
    _hvd_pass_through = False
    _hvd_capture = None

    def reduce(self, grads):
        """Averages `grads` (a list, Nones allowed) across ranks; the entry every path calls.

        Keras's own step reaches it through `_clip_gradients` (once per real
        update: after unscaling, after averaging accumulated micro-batches),
        a `LossScaleOptimizer` before its finiteness check, and hvd_keras's
        XLA step between its two compiled clusters. Returns the gradients
        unchanged at size 1 and where they arrive already reduced.
        """
        # Reached at trace time; `apply` checks the flag to prove the update went through here.
        self._hvd_reduced = True
        if size() == 1 or self._hvd_pass_through:
            return list(grads)
        return self._hvd_collective(list(grads))

    def _hvd_collective(self, grads):
        settings = self._hvd_settings
        if settings.sparse_as_dense:
            grads = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]
        present = [i for i, g in enumerate(grads) if g is not None]
        tensors = [grads[i] for i in present]
        op = settings.op
        if settings.compression is hvd.Compression.fp16 and op is hvd.Average:
            # Averaged after the cast, float16 gradients are summed first: two
            # ranks' 40,000 overflow float16's 65,504 (loss-scaled gradients
            # are that large). Divided by the size in their own precision
            # before the cast, the sum stays within the largest input.
            scale = 1.0 / size()
            tensors = [t * tf.cast(scale, t.dtype) if t.dtype.is_floating else t for t in tensors]
            op = hvd.Sum
        # The stop requests (preemption, model.stop_training on some rank;
        # callbacks.RankAgreement and Checkpoint turn this on) ride in the
        # same fused allreduce: every rank learns at the same step that some
        # rank asked. Otherwise nothing is added.
        carry_stop = getattr(self, "_hvd_carry_stop", False)
        stop_local, stop_agreed = preemption.requests.variables() if carry_stop else (None, None)
        piggyback = carry_stop and op is not hvd.Adasum
        if piggyback:
            tensors.append(tf.convert_to_tensor(stop_local))
        if getattr(self, "_hvd_timing", False):  # set by callbacks.Throughput
            with tf.control_dependencies(tensors):
                start = tf.timestamp()
            with tf.control_dependencies([start]):
                tensors = [tf.identity(t) for t in tensors]
        if op is hvd.Adasum:
            # horovod 0.28.1's grouped_allreduce fails for Adasum (it reads an
            # unbound `tensor`); single allreduces still fuse in Horovod's cycle.
            reduced = [hvd.allreduce(t, op=hvd.Adasum, compression=settings.compression) for t in tensors]
        else:
            reduced = hvd.grouped_allreduce(tensors, op=op, compression=settings.compression)
        if getattr(self, "_hvd_timing", False):
            with tf.control_dependencies(reduced):
                allreduce_seconds().assign_add(tf.timestamp() - start)
        if piggyback:
            stop_agreed.assign(tf.cast(reduced.pop(), tf.float32))
        elif carry_stop:
            stop_agreed.assign(hvd.allreduce(tf.convert_to_tensor(stop_local), op=hvd.Sum))
        grads = list(grads)
        for i, g in zip(present, reduced):
            grads[i] = g
        return grads

    def build(self, variables):
        super().build(variables)
        if size() > 1 and not _local_build:
            # Ranks whose models differ would otherwise reduce mismatched
            # gradients; init_scope runs the check eagerly even when the
            # first apply() builds the optimizer inside a traced function.
            with tf.init_scope():
                check_same_structure(variables)

    def apply(self, grads, trainable_variables=None):
        if self._hvd_capture is not None:
            self._hvd_capture.calls.append((list(grads), trainable_variables, self))
            return None
        self._hvd_reduced = False
        update_expected = self._hvd_update_expected()
        result = self._hvd_apply(grads, trainable_variables)
        if len(grads) and update_expected and not self._hvd_reduced and size() > 1:
            raise RuntimeError(
                f"hvd_keras: the optimizer {type(self).__name__} applied gradients on "
                f"{size()} ranks without averaging them across ranks, so the ranks "
                "would silently train different models. HINT: apply gradients only "
                "through the optimizer returned by hvd_keras.DistributedOptimizer; if "
                "this is Keras's own train step, this Keras version changed the "
                "optimizer internals: install a supported Keras (tools/versions.txt)."
            )
        return result

    def _hvd_apply(self, grads, trainable_variables):
        return super().apply(grads, trainable_variables)

    def _hvd_update_expected(self):
        # Compiled steps trace both branches of the accumulation cond, so the
        # allreduce is always traced; eagerly only update steps reach it.
        steps = getattr(self, "gradient_accumulation_steps", None)
        if not steps or not tf.executing_eagerly():
            return True
        return int(_compat.micro_steps(self).numpy() + 1) % steps == 0


class _DistributedGradients(_AllreduceMixin):
    # Every Keras 3 optimizer passes the gradients of a real update, after
    # unscaling and after averaging micro-batches under gradient
    # accumulation, through `_clip_gradients` exactly once. Reducing there
    # means clipping sees the global gradient (as on one process) and
    # accumulation steps communicate only on the update step.
    def _clip_gradients(self, grads):
        grads = self.reduce(grads)
        scale = self._hvd_settings.aggregate_scale
        if scale != 1.0:
            grads = [None if g is None else g * tf.cast(scale, g.dtype) for g in grads]
        return super()._clip_gradients(grads)


class _DistributedLossScale(_AllreduceMixin):
    # LossScaleOptimizer decides per step whether the gradients are finite;
    # reducing before that decision makes every rank decide the same way.
    def _hvd_apply(self, grads, trainable_variables):
        return super()._hvd_apply(self.reduce(grads), trainable_variables)


@functools.lru_cache(maxsize=None)
def _distributed_class(cls):
    mixin = (
        _DistributedLossScale
        if issubclass(cls, keras.optimizers.LossScaleOptimizer)
        else _DistributedGradients
    )
    # Same name and module as the wrapped class (its public module for
    # Keras's own optimizers): a saved model records the user's optimizer
    # class and loads with plain Keras, without hvd_keras.
    public = getattr(keras.optimizers, cls.__name__, None) is cls
    return type(
        cls.__name__,
        (mixin, cls),
        {
            "__module__": "keras.optimizers" if public else cls.__module__,
            "__qualname__": cls.__qualname__,
            "__doc__": cls.__doc__,
        },
    )


def is_distributed(optimizer):
    """True for an optimizer that averages gradients across ranks, itself or inside a LossScaleOptimizer."""
    return isinstance(optimizer, _AllreduceMixin) or isinstance(
        getattr(optimizer, "inner_optimizer", None), _AllreduceMixin)


def primary_optimizer(model):
    """The distributed optimizer whose allreduce carries the step's extras (stop flags, timing), or None.

    Compile's optimizer when it is distributed, else the first distributed
    optimizer set as an attribute; None for a model that trains without one.
    """
    distributed = [o for o in model_optimizers(model).values() if is_distributed(o)]
    return distributed[0] if distributed else None


def distribute_in_place(optimizer):
    """Makes an existing optimizer average its gradients across ranks, keeping the object.

    `hvd_keras.auto` does this to the optimizers a model keeps as attributes,
    which its `train_step` reaches through `self`: every reference stays
    valid. The defaults of `DistributedOptimizer` apply (average, no
    compression). Returns `optimizer`.
    """
    if is_distributed(optimizer):
        return optimizer
    _compat.check_optimizer(optimizer)
    _compat.set_class(optimizer, _distributed_class(type(optimizer)))
    optimizer._hvd_settings = _Settings(op=hvd.Average, compression=hvd.Compression.none, sparse_as_dense=False)
    optimizer._hvd_reduced = False
    return optimizer


_guarded = {"model": None}
#: Set to 1 to let optimizers that do not average update on several ranks (independent models per rank).
LOCAL_UPDATES = "HVD_KERAS_LOCAL_UPDATES"


def local_updates_allowed(environ=None):
    return (os.environ if environ is None else environ).get(LOCAL_UPDATES, "0") == "1"


@contextlib.contextmanager
def updates_guarded(model):
    """Within the block (a train step being traced or run eagerly), only distributed optimizers may update.

    On several ranks an update by an optimizer that does not average its
    gradients would let the ranks drift apart in silence; it raises at
    trace time instead, before any update ran (see `before_apply`).
    """
    saved, _guarded["model"] = _guarded["model"], model
    try:
        yield
    finally:
        _guarded["model"] = saved


def before_apply(optimizer):
    """Runs before the outermost `apply` of every Keras optimizer (`_compat.install_apply_hook`).

    Returns True when it changed the optimizer's class (a LossScaleOptimizer
    around a distributed one, put in the order that agrees across ranks).
    """
    if reduce_before_loss_scaling(optimizer, changed=True):
        return True
    model = _guarded["model"]
    if model is None or size() == 1 or is_distributed(optimizer):
        return False
    name = next((n for n, o in model_optimizers(model).items() if o is optimizer), None)
    if name == "optimizer":
        where, fix = "compile's optimizer", "model.compile(optimizer=hvd_keras.DistributedOptimizer(opt), ...)"
    else:
        where = f"the model's attribute `{name}`" if name else "an optimizer the model does not hold"
        fix = f"self.{name or 'my_optimizer'} = hvd_keras.DistributedOptimizer(opt) where the model gets it"
    raise RuntimeError(
        f"hvd_keras: {type(optimizer).__name__} ({where}) would apply gradients on {size()} ranks without "
        "averaging them across ranks, so the ranks would silently train different models; nothing was "
        f"updated. HINT: {fix}; or `import hvd_keras.auto`, which distributes every optimizer the model "
        f"holds; or, to train independent models on purpose, set {LOCAL_UPDATES}=1.")


def reduce_before_loss_scaling(optimizer, changed=False):
    """Turns `LossScaleOptimizer(DistributedOptimizer(opt))` into the order that agrees across ranks.

    Under a `mixed_float16` policy Keras's `compile` wraps the optimizer it
    is given in a `LossScaleOptimizer`, so a distributed optimizer ends up
    inside one. There the allreduce would come after the loss-scale
    optimizer's finiteness check, which each rank makes on its own gradients:
    a step that overflows on one rank only would be skipped there and applied
    elsewhere. This makes the outer optimizer reduce (before its check, as
    `DistributedOptimizer(LossScaleOptimizer(opt))` does) and the inner one
    pass the reduced gradients through. The objects stay the same, so
    references the user holds remain valid. Returns `optimizer`.
    """
    inner = getattr(optimizer, "inner_optimizer", None)
    swap = (isinstance(optimizer, _compat.LossScaleOptimizer) and not isinstance(optimizer, _AllreduceMixin)
            and isinstance(inner, _AllreduceMixin))
    if swap:
        _compat.set_class(optimizer, _distributed_class(type(optimizer)))
        optimizer._hvd_settings = inner._hvd_settings
        optimizer._hvd_reduced = False
        inner._hvd_pass_through = True
    return swap if changed else optimizer


def DistributedOptimizer(
    optimizer,
    compression=None,
    op="average",
    sparse_as_dense=False,
    backward_passes_per_step=1,
    average_aggregated_gradients=True,
):
    """Wraps a Keras 3 optimizer so that gradients are averaged across ranks.

    Inside the compiled train step the gradients of all trainable variables
    are combined across ranks by one fused Horovod grouped allreduce before
    they are clipped and applied, so N ranks with per-rank batch `b` train the
    same model as one process with batch `N * b`. At size 1 nothing is
    communicated.

    The result is a new optimizer of a subclass of the optimizer's own class
    (`isinstance(wrapped, type(optimizer))` holds), re-created from
    `optimizer.get_config()`; the optimizer passed in is left untouched. A
    model saved with it loads with plain `keras.saving.load_model`.

    If a step ever applies gradients on several ranks without passing them
    through the allreduce, it raises instead of letting the ranks drift apart.

    Args:
        optimizer: a Keras 3 optimizer instance (`SGD`, `Adam`, `AdamW`, a
            subclass, `keras.mixed_precision.LossScaleOptimizer`) or a name
            such as `"adam"`. It must not have been built yet.
        compression: `None`, `"none"` or `"fp16"` (or Horovod's
            `hvd.Compression.none` / `hvd.Compression.fp16`): fp16 casts float
            gradients to float16 for the allreduce (halves the bytes sent,
            costs precision).
        op: `"average"` (default), `"sum"` or `"adasum"`, or Horovod's
            `hvd.Average`, `hvd.Sum`, `hvd.Adasum`. Adasum needs a
            power-of-two number of ranks and the MPI controller on CPU.
        sparse_as_dense: reduce `tf.IndexedSlices` gradients (embeddings) as
            dense tensors by allreduce instead of by allgather. Faster when
            the slices cover much of the table.
        backward_passes_per_step: accumulate gradients locally over this many
            batches and communicate and apply them once; uses Keras's
            `gradient_accumulation_steps`.
        average_aggregated_gradients: with `backward_passes_per_step` > 1,
            True (default, Keras's behaviour) applies the average of the
            accumulated gradients; False their sum, as Horovod's own
            `DistributedOptimizer` does by default.

    Returns:
        The distributed optimizer, to pass to `model.compile`.

    Example:

    ```python
    import keras
    import hvd_keras

    hvd_keras.init()
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    opt = keras.optimizers.SGD(0.01 * hvd_keras.size(), momentum=0.9)
    model.compile(optimizer=hvd_keras.DistributedOptimizer(opt), loss="mse")
    ```
    """
    if isinstance(optimizer, str):
        optimizer = keras.optimizers.get(optimizer)
    if isinstance(optimizer, type):
        raise TypeError(
            "DistributedOptimizer expects an optimizer instance. "
            f"Received: the class {optimizer.__name__}. "
            f"HINT: pass an instance, e.g. {optimizer.__name__}(learning_rate=0.01)."
        )
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise TypeError(
            "DistributedOptimizer expects a Keras 3 optimizer "
            "(an instance of keras.optimizers.Optimizer). "
            f"Received: {optimizer!r} of type {type(optimizer).__module__}.{type(optimizer).__name__}. "
            "HINT: pass e.g. keras.optimizers.SGD(0.01) or \"adam\" (tf.keras and "
            "legacy optimizers are not supported)."
        )
    _compat.check_optimizer(optimizer)
    if isinstance(optimizer, _AllreduceMixin):
        raise ValueError(
            f"DistributedOptimizer received an optimizer that is already distributed: {optimizer.name}. "
            "HINT: wrap the plain optimizer once."
        )
    op = _named(op, _OPS, "op", "use op=\"average\".")
    compression = _named("none" if compression is None else compression, _COMPRESSIONS, "compression",
                         "pass compression=None to send gradients uncompressed.")
    if not isinstance(backward_passes_per_step, int) or backward_passes_per_step < 1:
        raise ValueError(
            "backward_passes_per_step must be an integer >= 1. "
            f"Received: backward_passes_per_step={backward_passes_per_step!r}. "
            "HINT: pass 1 to communicate every step."
        )
    if optimizer.built:
        raise ValueError(
            f"DistributedOptimizer received an optimizer that is already built: {optimizer.name} "
            "holds variables for a model. HINT: wrap the optimizer before model.compile() and fit()."
        )
    config = optimizer.get_config()
    if backward_passes_per_step > 1:
        if config.get("gradient_accumulation_steps"):
            raise ValueError(
                "backward_passes_per_step and the optimizer's gradient_accumulation_steps "
                "both ask for gradient accumulation. Received: backward_passes_per_step="
                f"{backward_passes_per_step}, gradient_accumulation_steps="
                f"{config['gradient_accumulation_steps']}. HINT: set only one of them."
            )
        config["gradient_accumulation_steps"] = backward_passes_per_step
    cls = _distributed_class(type(optimizer))
    try:
        wrapped = cls.from_config(config)
    except Exception as e:
        raise ValueError(
            f"DistributedOptimizer could not re-create {type(optimizer).__name__} from its "
            f"get_config(): {type(e).__name__}: {e}. HINT: make get_config() return every "
            "argument of the optimizer's __init__."
        ) from None
    wrapped._hvd_settings = _Settings(
        op=_OPS[op], compression=_COMPRESSIONS[compression], sparse_as_dense=bool(sparse_as_dense),
        aggregate_scale=1.0 if average_aggregated_gradients else float(backward_passes_per_step),
    )
    wrapped._hvd_reduced = False
    return wrapped
