"""The train function of a model with a distributed optimizer: one step per call, XLA and loss scaling.

Keras builds `model.train_function` from `train_step` when `fit` (or
`train_on_batch`) starts. hvd_keras takes part in that build for models
compiled with a `DistributedOptimizer` (at size 1 only in the first way below:
Keras's step runs as Keras compiles it, nothing added):

- Per-step cost. With one step per call (`steps_per_execution=1`, the
  default) the compiled function takes the batch from the iterator itself,
  without Keras's Optional round trip through eager Python
  (`_compat.make_step_function`), at every size, so that a 1-process profile
  and an N-rank run time the same function (XLA on several ranks aside: the
  split step below).
- Mixed precision. A `LossScaleOptimizer` that Keras put around the
  distributed optimizer is made to reduce before its finiteness check
  (`optimizer.reduce_before_loss_scaling`), so every rank skips the same steps.
- XLA. Keras compiles the whole step with XLA when `jit_compile` is True, and
  `jit_compile="auto"` (the default) means True on any machine with a GPU.
  Horovod's collectives have no XLA kernels, so such a step cannot compile.
  hvd_keras splits it instead: forward pass, loss, gradients and metric
  updates compile as one XLA cluster, the fused allreduce runs between the
  clusters, and the optimizer update compiles as a second cluster. Where the
  step cannot be split (a `train_step` that does not call the optimizer's
  `apply`/`apply_gradients` exactly once), `"auto"` falls back to a step
  without XLA with one line on rank 0, and an explicit `jit_compile=True`
  is an error that names the fix.
"""

import itertools
import types

from hvd_keras import _compat, preemption, watchdog
from hvd_keras._horovod import tf
from hvd_keras.broadcast import model_optimizers
from hvd_keras.layers.sync_batch_normalization import has_collectives, synchronize_batch_norms
from hvd_keras.optimizer import (
    is_distributed,
    local_updates_allowed,
    primary_optimizer,
    reduce_before_loss_scaling,
    updates_guarded,
)
from hvd_keras.runtime import is_chief, size


class SplitError(ValueError):
    """The train step cannot be split around the allreduce."""


def build(model, original, force):
    """`Model.make_train_function` as hvd_keras builds it; `original(force)` is Keras's.

    Sets and returns `model.train_function` (Keras's own returns None).
    """
    if primary_optimizer(model) is None:
        if size() == 1 or local_updates_allowed():
            original(force)
            return model.train_function
        # No optimizer of this model averages gradients: Keras's step, traced
        # under the guard, so that its first update on several ranks is an
        # error, not ranks drifting apart.
        if model.train_function is None or force:
            model.train_function = _compat.make_step_function(model, _guarded(model, model.train_step),
                                                              model.jit_compile)
        return model.train_function
    for optimizer in model_optimizers(model).values():
        reduce_before_loss_scaling(optimizer)
    if model.train_function is not None and not force:
        return model.train_function
    if size() > 1:
        synchronize_batch_norms(model)
    if size() == 1:
        # Nothing crosses ranks: Keras's step with Keras's XLA decision, in
        # the same one-step function as on several ranks.
        model.train_function = _compat.make_step_function(model, model.train_step, model.jit_compile)
        return model.train_function
    model._hvd_xla_split = False
    if model.run_eagerly or not model.jit_compile:
        return _build_plain(model)
    if has_collectives(model):
        # XLA cannot compile a collective inside the forward pass.
        return _fallback(model, SplitError("a layer of the model (SyncBatchNormalization) runs a collective in "
                                           "the forward pass, which XLA cannot compile."))
    split = _make(model, split_xla_step(model))

    def train_function(iterator):
        # The split is decided while the first call traces the step; a step
        # that cannot be split raises before anything ran. train_on_batch's
        # generator cannot be read twice: its batches are kept for the retry.
        retry = iterator
        if not _compat.is_dataset_iterator(iterator):
            batches = list(itertools.islice(iterator, model.steps_per_execution))
            iterator, retry = iter(batches), iter(batches)
        try:
            return split(iterator)
        except SplitError as e:
            model.train_function = _fallback(model, e)
            return model.train_function(retry)

    model.train_function = train_function
    model._hvd_xla_split = True
    return train_function


def _build_plain(model):
    # Keras's train_step in hvd_keras's train function (one step per call
    # without Keras's eager unwrapping, see _compat.make_step_function), with
    # the agreed stop flags as an output when they are carried.
    model.train_function = _make(model, model.train_step)
    return model.train_function


def _make(model, step):
    """Keras's loop (steps_per_execution) around `step`, returning the agreed flags when carried.

    RankAgreement and Checkpoint check the agreed flags after every batch;
    as an output of the step they are on the host with the loss, where
    reading the variable afterwards costs an eager op per batch.
    """
    # Each call is timed against this rank's deadline (hvd_keras.watchdog):
    # a collective waiting for a host that went down never returns.
    step = _guarded(model, step)
    if not getattr(primary_optimizer(model), "_hvd_carry_stop", False):
        return watchdog.guard(_compat.make_step_function(model, step, jit_compile=False))
    function = _compat.make_step_function(model, preemption.with_agreed_flags(step), jit_compile=False)
    return watchdog.guard(preemption.taking_agreed_flags(function, model))


def _guarded(model, step):
    # The step's Python runs while it is traced (every call when run
    # eagerly): an update by an optimizer that does not average its
    # gradients raises there, before anything was updated.
    def guarded_step(data):
        with updates_guarded(model):
            return step(data)

    return guarded_step


def uses_xla_split(model):
    """True when the model trains with the split XLA step on this rank."""
    return bool(getattr(model, "_hvd_xla_split", False))


def _fallback(model, error):
    if not _compat.jit_compile_was_auto(model):
        raise ValueError(
            f"hvd_keras: jit_compile=True cannot be honoured on {size()} ranks: {error} "
            "HINT: compile with jit_compile=False (or leave the default \"auto\", which then "
            "trains without XLA), or call the optimizer once per train_step."
        ) from None
    if is_chief():
        print(f"hvd_keras: training without XLA: jit_compile=\"auto\" chose XLA on this machine, "
              f"but {error}", flush=True)
    _compat.set_jit_compile(model, False)
    model._hvd_xla_split = False
    return _build_plain(model)


def split_xla_step(model):
    """One train step as XLA(forward, backward) -> allreduce -> XLA(update).

    The first cluster runs the model's own `train_step` with the optimizer in
    capture mode: its `apply` records the gradients and variables instead of
    updating, so anything a custom `train_step` does (its loss, metrics,
    gradient transformations) is kept, except reading the updated weights
    after `apply` within the same step.
    """
    # Every distributed optimizer of the model captures: a train_step that
    # applies two (a GAN's) cannot be split, and falls back.
    optimizers = [o for o in model_optimizers(model).values() if is_distributed(o)]
    capture = types.SimpleNamespace(calls=[])
    captured = capture.calls

    def forward_backward(data):
        del captured[:]
        for o in optimizers:
            o._hvd_capture = capture
        try:
            logs = model.train_step(data)
        finally:
            for o in optimizers:
                o._hvd_capture = None
        if len(captured) != 1:
            raise SplitError(
                f"its train_step called its optimizers' apply {len(captured)} times in one step "
                "(hvd_keras keeps the allreduce outside XLA by splitting the step at that call, "
                "which must happen exactly once)."
            )
        return logs, captured[0][0]

    # Under gradient accumulation Keras's apply adds each micro-batch to its
    # accumulators and reaches `reduce` (through _clip_gradients) on update
    # steps only: the update then runs without XLA, where that collective
    # can run, and nothing crosses ranks on the other micro-batches.
    # Otherwise the gradients are reduced between the clusters and the
    # update passes them through.
    def accumulates(optimizer):
        inner = getattr(optimizer, "inner_optimizer", optimizer)
        return (getattr(inner, "gradient_accumulation_steps", None) or 1) > 1

    accumulating = any(accumulates(o) for o in optimizers)

    def update(grads):
        _, variables, optimizer = captured[0]
        optimizer._hvd_pass_through = not accumulating
        try:
            optimizer.apply(grads, variables)
        finally:
            optimizer._hvd_pass_through = False

    # autograph=False: like Keras's own step, train_step runs as plain Python.
    forward_backward = tf.function(forward_backward, jit_compile=True, reduce_retracing=True,
                                   autograph=False)
    update = tf.function(update, jit_compile=not accumulating, reduce_retracing=True, autograph=False)

    def step(data):
        logs, grads = forward_backward(data)
        update(grads if accumulating else captured[0][2].reduce(grads))
        return logs

    return step
