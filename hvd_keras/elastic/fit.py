"""`elastic.fit`: Keras's `fit` under Horovod's elastic loop, with the data resharded and the rate kept right at every size."""

import os

from hvd_keras import _compat
from hvd_keras import data as _data
from hvd_keras.elastic import rates
from hvd_keras.elastic.callback import ElasticCommit
from hvd_keras.elastic.data import epoch_order, num_samples, plan_segment, take
from hvd_keras.elastic.errors import classify
from hvd_keras.elastic.state import KerasState
from hvd_keras._compat import HorovodInternalError, HostsUpdatedInterrupt
from hvd_keras._horovod import keras
from hvd_keras.callbacks import BroadcastInitialState, Checkpoint, LearningRateWarmup, RankAgreement
from hvd_keras.optimizer import primary_optimizer
from hvd_keras.output import rank_zero_output
from hvd_keras.runtime import elastic_launch, rank, reinit, size

#: Steps between commits by default: a commit copies the variables to host
#: memory and sums the metric states over the ranks (bench/elastic_commit.py).
DEFAULT_COMMIT_EVERY = 100
#: Set by `hvd-keras run --elastic`: the sizes the job may take, checked before the first step.
MIN_NP_VARIABLE, MAX_NP_VARIABLE = "HVD_KERAS_ELASTIC_MIN_NP", "HVD_KERAS_ELASTIC_MAX_NP"


is_elastic = elastic_launch


def reset():
    """Horovod's reset between two runs of the elastic loop: shut down, start again with the new ranks."""
    reinit()


def run(func):
    """Horovod's elastic loop (`hvd.elastic.run`) for a function of a `KerasState`, with hvd_keras's error mapping.

    The loop is Horovod's own (`horovod.common.elastic.run_fn`): sync the
    state, call `func(state)`; on a failed collective restore the last
    commit; on new or removed hosts keep it; then reset (shut Horovod down
    and start it with the new ranks) and go round again. Horovod's TensorFlow
    wrapper is replaced: it recognises three op names only and returns None
    for any other error (the `HorovodGroupedAllreduce` of hvd_keras's step
    among them); here every failed Horovod collective is a
    `HorovodInternalError` and every other error is raised as it is.

    Args:
        func: a function whose first argument is the state.

    Example:

    ```python
    @hvd_keras.elastic.run
    def train(state):
        ...  # commit with state.commit(); no collective before the first use of the state
    train(hvd_keras.elastic.KerasState(model))
    ```
    """
    def wrapper(state, *args, **kwargs):
        try:
            return func(state, *args, **kwargs)
        except HostsUpdatedInterrupt:
            _note(state, "a change of hosts")
            raise
        except HorovodInternalError:
            _note(state, "a failed collective")
            raise
        except Exception as e:  # noqa: BLE001 - classified, never swallowed
            mapped = classify(e)
            if mapped is None:
                raise
            _note(state, "a failed collective")
            raise mapped from e

    return _compat.elastic_run_fn(wrapper, reset)


def _note(state, reason):
    if hasattr(state, "note_failure"):
        state.note_failure(reason)


def fit(model, x=None, y=None, *, batch_size, epochs=1, batch_mode="global", sample_weight=None,
        validation_data=None, callbacks=None, verbose="auto", initial_epoch=0, shuffle=True, seed=None,
        commit_every=DEFAULT_COMMIT_EVERY, state=None):
    """Trains `model` on arrays as an elastic job: it goes on when ranks die or hosts come and go.

    Each epoch's samples are taken in an order that depends on the seed and
    the epoch only; the steps trained and committed are recorded as an
    offset into that order. After a reset the rest of the epoch is resharded
    over the new number of ranks (`hvd_keras.elastic.data`), so every sample
    of an epoch is trained at most once; per epoch, fewer samples than the
    ranks at its end are left out. The state (`KerasState`) is committed
    every `commit_every` steps and at each epoch's end; a failed collective
    rolls back to the last commit, and a change of hosts is agreed through
    the step's gradient allreduce, so every rank commits after the same step.
    Keras's `fit` runs once per epoch (and again for the rest of an epoch
    after a reset), with the train function traced again for the new size;
    `Checkpoint`, `RankAgreement`, `LearningRateWarmup`, exact metrics and
    preemption keep working across resets. Launched without elastic mode it
    trains as a fixed job. Returns a `History` of the completed epochs.

    Args:
        model: a compiled model with a `DistributedOptimizer` (its variables
            built).
        x, y, sample_weight: arrays (or tuples or dicts of arrays) of equal length.
        batch_size: with `batch_mode="global"`, the samples of one step over
            all ranks, which must split evenly over every size the job takes;
            with `"per_rank"`, each rank's.
        epochs: the epoch to stop after.
        batch_mode: `"global"` keeps the global batch and the learning rate
            at every size; `"per_rank"` keeps each rank's batch and scales the
            rate with the size, SGD's momentum with it (`elastic.rates`).
        validation_data: `(x_val, y_val)` arrays, sharded over the ranks of
            each epoch's end (exact metrics combine them).
        callbacks: Keras callbacks; they see `on_train_begin` once per
            Keras `fit` (once per epoch, and after each reset).
            `BroadcastInitialState` is dropped: the state's sync does it.
        verbose: as Keras's; output from rank 0 only.
        initial_epoch: the epoch to start from (`hvd_keras.resume`).
        shuffle: draw each epoch's order from `seed` and the epoch.
        seed: the data seed; default: the job's seed from the launcher.
        commit_every: steps between commits (0: at epoch ends only).
        state: a `KerasState` of `model`; default: made here.

    Example:

    ```python
    import hvd_keras, hvd_keras.elastic

    hvd_keras.init()
    model.compile(optimizer=hvd_keras.DistributedOptimizer(keras.optimizers.SGD(0.1, momentum=0.9)), loss="mse")
    hvd_keras.elastic.fit(model, x, y, batch_size=96, epochs=10)
    # horovodrun -np 2 --min-np 1 --max-np 4 --host-discovery-script ./hosts.sh python train.py
    ```
    """
    rates.check_mode(batch_mode)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1. Received: batch_size={batch_size!r}. HINT: with "
                         "batch_mode=\"global\" it is the samples of one step over all ranks.")
    if not isinstance(commit_every, int) or commit_every < 0:
        raise ValueError(f"commit_every must be an integer >= 0. Received: commit_every={commit_every!r}. "
                         f"HINT: {DEFAULT_COMMIT_EVERY} (the default), or 0 to commit at epoch ends only.")
    if size() > 1 and primary_optimizer(model) is None:
        raise ValueError("hvd_keras.elastic.fit needs the model compiled with hvd_keras.DistributedOptimizer: the "
                         "step's allreduce carries the hosts-updated notice. HINT: model.compile(optimizer="
                         "hvd_keras.DistributedOptimizer(opt), ...).")
    arrays = {"x": x, "y": y, "sample_weight": sample_weight}
    arrays = {k: v for k, v in arrays.items() if v is not None}
    n = num_samples(arrays)
    callbacks = _checked_callbacks(callbacks)
    if batch_mode == "global":
        _check_sizes(batch_size)
    resumed = getattr(model, "_hvd_resumed", None)
    if resumed and resumed.get("step_in_epoch"):
        # hvd_keras.resume would skip that many of Keras's batches; the
        # elastic order and batches are others: that epoch starts over.
        model._hvd_resumed = None
        if rank() == 0:
            print(f"hvd_keras.elastic: {resumed.get('path')} was taken inside epoch {initial_epoch + 1}; that epoch "
                  "is trained from its start", flush=True)
    state = state if state is not None else KerasState(model, epoch=initial_epoch, seed=seed)
    history = keras.callbacks.History()
    history.set_model(model)
    history.epoch = []

    @run
    def train(state):
        while state.epoch < epochs:
            outcome = _train_segment(model, state, arrays, n, batch_size, batch_mode, shuffle, validation_data,
                                     callbacks, verbose, commit_every, history)
            if outcome == "interrupt" and state.epoch < epochs:  # after the last epoch: nothing left to resize
                raise state.interrupt()
            if outcome == "stop":
                break
        return history

    return train(state)


def _checked_callbacks(callbacks):
    kept = []
    for callback in callbacks or []:
        if isinstance(callback, BroadcastInitialState):
            continue  # a worker joining later would broadcast alone; the state's sync does it for everyone
        if isinstance(callback, Checkpoint) and callback.save_freq != "epoch":
            raise ValueError(
                "hvd_keras.elastic.fit commits the state inside epochs itself; Checkpoint must save at epoch ends. "
                f"Received: Checkpoint(save_freq={callback.save_freq!r}). HINT: Checkpoint(directory, "
                "save_freq=\"epoch\"), and commit_every=N for the in-memory commits.")
        kept.append(callback)
    return kept


def _check_sizes(global_batch):
    low, high = os.environ.get(MIN_NP_VARIABLE), os.environ.get(MAX_NP_VARIABLE)
    if not (low and high and low.isdigit() and high.isdigit()):
        return
    bad = [n for n in range(int(low), int(high) + 1) if global_batch % n]
    if bad:
        raise ValueError(
            f"the global batch must split evenly over every size the job may take ({low} to {high} ranks). "
            f"Received: batch_size={global_batch}, which {bad[0]} ranks cannot split. HINT: a multiple of "
            f"{_lcm(range(int(low), int(high) + 1))}, or batch_mode=\"per_rank\".")


def _lcm(numbers):
    import math

    result = 1
    for n in numbers:
        result = result * n // math.gcd(result, n)
    return result


def _train_segment(model, state, arrays, n, batch_size, batch_mode, shuffle, validation_data, callbacks,
                   verbose, commit_every, history):
    """One Keras `fit` over the rest of `state.epoch` at this size; returns "done", "interrupt" or "stop"."""
    global_batch = batch_size * size() if batch_mode == "per_rank" else batch_size
    if batch_mode == "per_rank" and state.size != size():
        factor = size() / state.size
        rates.rescale(model.optimizer, factor)
        for warmup in state.warmups:
            warmup["warmup_target"] *= factor
        state.size = size()
    _apply_warmups(state, callbacks)
    for callback in callbacks:
        if isinstance(callback, Checkpoint):
            callback._global_step = 0  # names follow the restored step counter, not steps rolled back
    order = epoch_order(n, state.seed, state.epoch, shuffle)
    segment = plan_segment(order, state.epoch, state.offset, global_batch, size(), rank())
    if not segment.steps:
        # Fewer samples left than ranks: the epoch's remainder.
        state.epoch, state.offset, state.metric_totals = state.epoch + 1, 0, None
        return "done"
    data = take(arrays, segment.ids)
    commit = ElasticCommit(state, segment, order, commit_every,
                           [c for c in callbacks if isinstance(c, LearningRateWarmup)])
    agreement = [RankAgreement()] if size() > 1 else []
    kwargs = rank_zero_output([*callbacks, *agreement, commit], verbose)
    validation = None
    if validation_data is not None:
        validation = _data.shard(tuple(validation_data)) if size() > 1 else tuple(validation_data)
    result = _compat.trainer_fit(model, data["x"], data.get("y"), sample_weight=data.get("sample_weight"),
                                 batch_size=segment.rank_batch, epochs=state.epoch + 1, initial_epoch=state.epoch,
                                 shuffle=False, validation_data=validation, **kwargs)
    for key, values in result.history.items():
        history.history.setdefault(key, []).extend(values)
    history.epoch.extend(result.epoch)
    history.params = result.params
    if commit.pending_interrupt:
        return "interrupt"
    if model.stop_training or not commit.epoch_complete:
        return "stop"
    return "done"


def _apply_warmups(state, callbacks):
    # The warmups' rates are part of the state: a worker that joins takes
    # rank 0's, and a per_rank resize has scaled their target.
    warmups = [c for c in callbacks if isinstance(c, LearningRateWarmup)]
    if len(state.warmups) != len(warmups):
        return
    for callback, saved in zip(warmups, state.warmups):
        callback.warmup_target = saved["warmup_target"]
        callback.initial_learning_rate = saved["initial_learning_rate"]



def fit_from_auto(model, x, y, batch_size, epochs, verbose, callbacks, validation_split, validation_data, shuffle,
                  class_weight, sample_weight, initial_epoch, steps_per_epoch, validation_steps, kwargs,
                  lr_scaling, warmup_epochs):
    """`Model.fit` under `import hvd_keras.auto` in a job horovodrun started elastically.

    The script's `batch_size` stays each rank's (as `hvd_keras.auto` keeps
    it at a fixed size) and the rate, which auto's `compile` scaled to the
    starting size, follows the size: `batch_mode="per_rank"`.
    """
    refused = {"steps_per_epoch": steps_per_epoch, "validation_steps": validation_steps,
               "class_weight": class_weight, "validation_split": validation_split or None}
    given = [f"{k}={v!r}" for k, v in refused.items() if v is not None] + [f"{k}=..." for k in kwargs]
    if given:
        raise ValueError(
            "hvd_keras.auto under elastic training (horovodrun --min-np/--host-discovery-script) trains on "
            f"arrays by epochs and reshards them after every resize. Received: {', '.join(given)}. HINT: drop "
            "them (pass validation_data=(x_val, y_val) instead of validation_split), or launch without elastic mode.")
    if lr_scaling != "linear":
        raise ValueError(
            "hvd_keras.auto under elastic training scales the learning rate with the number of ranks as they come "
            f"and go, linearly. Received: HVD_KERAS_LR_SCALING={lr_scaling}. HINT: HVD_KERAS_LR_SCALING=linear, or "
            "call hvd_keras.elastic.fit(..., batch_mode=\"global\") yourself to keep the rate and the global batch.")
    callbacks = list(callbacks or [])
    if warmup_epochs > 0:
        n = num_samples({k: v for k, v in {"x": x, "y": y}.items() if v is not None})
        steps = max(1, -(-n // (size() * (batch_size or 32))))
        callbacks.insert(0, LearningRateWarmup(warmup_epochs, steps))
    return fit(model, x, y, batch_size=batch_size or 32, epochs=epochs, batch_mode="per_rank",
               sample_weight=sample_weight, validation_data=validation_data, callbacks=callbacks, verbose=verbose,
               initial_epoch=initial_epoch, shuffle=shuffle)
