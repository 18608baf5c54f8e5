"""The state an elastic job commits, restores after a failure, and syncs to every rank after a reset."""

import copy
import time

import numpy as np
from hvd_keras import _compat, preemption, seeds
from hvd_keras import optimizer as _optimizer
from hvd_keras._compat import ElasticState, HostsUpdatedInterrupt
from hvd_keras._horovod import hvd, tf
from hvd_keras.broadcast import broadcast_variables, state_variables
from hvd_keras.elastic.errors import collective_failures
from hvd_keras.runtime import rank, size

# The training progress committed with the variables, in the order sync sends it.
PROGRESS = ("epoch", "offset", "global_step", "seed", "size", "metric_totals", "ledger", "warmups")


class KerasState(ElasticState):
    """A Keras 3 model's training state for Horovod's elastic loop: committed, restored, synced.

    Horovod's `TensorFlowKerasState` fails on Keras 3 when it is made (it
    calls `optimizer.variables()`, a list there). This state holds, as of
    the last commit: every variable of the model and of its optimizers
    (slots, iteration counter and learning rate included; slots are built
    without a collective, so a worker joining a running job builds its own
    before the sync), and the progress: `epoch`, `offset` (samples of the
    epoch's order trained), `global_step`, the data `seed`, the `size` the
    job had, `metric_totals` (the epoch's metric states summed over all
    ranks, so the epoch's metrics stay exact across a reset), `ledger` (the
    committed global batches, see `ledger_batches`) and `warmups` (the
    `LearningRateWarmup` callbacks' rates). `commit()` copies all of it to
    host memory without any collective beyond one small allreduce of the
    metric states; `restore()` puts it back after a failed collective;
    `sync()` gives every rank rank 0's state after a reset. Keyword
    arguments become attributes committed and synced alike.

    A hosts-updated notice from horovodrun reaches rank 0 only; `fit` carries
    it to every rank in the step's gradient allreduce, so that every rank
    commits after the same step (`take_hosts_update`, `interrupt`), instead of
    Horovod's broadcast at every commit.

    Args:
        model: a built, compiled Keras 3 model.
        epoch: the epoch to start from (`hvd_keras.resume`'s result).
        seed: the data seed; rank 0's is synced. Default: the job's seed
            from the launcher's variables.
        **kwargs: more values to commit and sync (picklable).

    Example:

    ```python
    state = hvd_keras.elastic.KerasState(model, epoch=hvd_keras.resume(model, "ckpt"))
    hvd_keras.elastic.fit(model, x, y, batch_size=64, epochs=10, state=state)
    ```
    """

    def __init__(self, model, epoch=0, seed=None, **kwargs):
        super().__init__(bcast_object=self._broadcast_object, get_rank=rank)
        if not model.variables:
            raise ValueError(f"KerasState needs a built model; {model.name} has no weights yet. HINT: give the model "
                             "an Input layer or call model.build(input_shape) before making the state.")
        self.model = model
        self._variables = self._local_state_variables()
        self._reader = self._writer = None
        self.epoch = int(epoch)
        self.offset = 0
        self.global_step = 0
        if seed is None:
            seed = seeds.job_seed()
        self.seed = int(np.random.SeedSequence().entropy % (2 ** 31)) if seed is None else int(seed)
        self.size = size()
        self.metric_totals = None
        self.ledger = []
        self.warmups = []
        self._extra = tuple(kwargs)
        for name, value in kwargs.items():
            setattr(self, name, value)
        # Set by fit while an epoch's steps run: a commit then takes the
        # epoch's metric states, summed over the ranks.
        self.in_epoch = False
        # The steps the latest commit added, with this rank's samples of each
        # (for commit callbacks: a per-rank sample ledger).
        self.committed_steps = []
        self.commit_seconds = []
        self.recoveries = []
        self.reset_reason = None
        self.failed_at = None
        # Rank 0 heard of new hosts and asked the others through a step; not
        # yet agreed (it carries over to the next fit of the same size).
        self.hosts_request_pending = False
        self._commit_callbacks = []
        self._snapshot = (self._read()[0], self._progress())

    # --- Horovod's State interface -------------------------------------------

    def commit(self):
        """Copies the variables and the progress to host memory: what a failure rolls back to.

        No collective runs, except one allreduce of the metric states while
        an epoch is in progress. Every rank commits after the same step.
        Host updates are not checked here (see `take_hosts_update`).
        """
        self.save()

    def save(self):
        start = time.perf_counter()
        values, totals = self._read(with_metric_totals=self.in_epoch)
        if self.in_epoch:
            self.metric_totals = totals
        progress = self._progress()
        self._snapshot = (values, progress)  # one assignment: a failure leaves the old or the new, never half
        self.commit_seconds.append(time.perf_counter() - start)
        for callback in self._commit_callbacks:
            callback(self)

    def restore(self):
        """Puts back the variables and progress of the last commit (after a failed collective)."""
        values, progress = self._snapshot
        self._write(values)
        self._set_progress(copy.deepcopy(progress))

    def sync(self):
        """Gives every rank rank 0's variables and progress; every rank calls it after a reset.

        Optimizer slots that a new worker lacks are built first, locally;
        then the variables' structure is compared across ranks (one
        allgather) and broadcast in one fused call, and the progress follows
        as one object. A collective that fails here is a `HorovodInternalError`.
        """
        with collective_failures():
            variables = self._local_state_variables()
            if len(variables) != len(self._variables) or any(a is not b for a, b in zip(variables, self._variables)):
                self._variables, self._reader, self._writer = variables, None, None
            broadcast_variables(variables, root_rank=0)
            if size() > 1:
                seeds.per_rank_seed_states(variables, rank())  # each rank's own dropout masks, as after any broadcast
                progress = hvd.broadcast_object(self._progress(), root_rank=0, name="hvd_keras.elastic.sync")
                self._set_progress(progress)
        self._snapshot = (self._read()[0], self._progress())

    def reset(self):
        # The train function holds the old job's collectives (or none, at
        # size 1): it is traced again for the new size.
        self.model.train_function = None
        self._reader = None  # its metric allreduce too
        preemption.requests.reset()
        self.hosts_request_pending = False  # this reset takes in every change of hosts heard before it

    def _broadcast_object(self, obj):
        # Horovod's own check_host_updates (not used by fit) broadcasts with this.
        return hvd.broadcast_object(obj, root_rank=0, name="hvd_keras.elastic.hosts") if size() > 1 else obj

    # --- hosts updated ---------------------------------------------------------

    def take_hosts_update(self):
        """Whether horovodrun announced added or removed hosts since the last call (rank 0 hears it); no collective."""
        found, messages = False, _compat.hosts_updated_messages(self)
        while not messages.empty():
            timestamp, _ = messages.get()
            if timestamp > _compat.last_hosts_update(self):
                _compat.last_hosts_update(self, timestamp)
                found = True
        return found

    @staticmethod
    def interrupt():
        """The exception that makes Horovod's loop reset for new hosts, the state committed just before.

        Always with a sync after the reset: Horovod skips it when hosts were
        only removed, and deadlocks there (horovod#3494).
        """
        return HostsUpdatedInterrupt(skip_sync=False)

    def register_commit_callbacks(self, callbacks):
        """Functions called with the state after every commit, on every rank (a ledger, a log)."""
        self._commit_callbacks.extend(callbacks)

    def note_failure(self, reason):
        """Records why and when training left its loop, for the recovery time `fit` prints."""
        self.reset_reason, self.failed_at = reason, time.monotonic()

    # --- internals -------------------------------------------------------------

    def _local_state_variables(self):
        with _optimizer.built_locally():
            return state_variables(self.model)

    def _progress(self):
        progress = {name: getattr(self, name) for name in PROGRESS + self._extra}
        return copy.deepcopy(progress)

    def _set_progress(self, progress):
        for name, value in progress.items():
            setattr(self, name, value)

    def _read(self, with_metric_totals=False):
        """The variables' values, and the metric totals over all ranks when asked; one compiled call."""
        metrics = self._metric_variables() if with_metric_totals else []
        key = tuple(id(v) for v in metrics)
        if self._reader is None:
            self._reader = {}
        if key not in self._reader:  # one function with the metric totals, one without: each traced once
            variables = self._variables

            def read():
                values = [tf.identity(tf.convert_to_tensor(v)) for v in variables]
                return values, self._metric_totals_of(metrics)

            self._reader[key] = tf.function(read)
        values, totals = self._reader[key]()
        return [t.numpy() for t in values], ([t.numpy() for t in totals] if metrics else None)

    def _write(self, values):
        if self._writer is None:
            variables = self._variables

            def write(new):
                for v, value in zip(variables, new):
                    v.assign(value)

            self._writer = tf.function(write)
        self._writer([tf.convert_to_tensor(v) for v in values])

    def _metric_variables(self):
        return [v for m in self.model.metrics for v in m.variables]

    def _metric_totals_of(self, variables):
        # Inside the reader's function: the metric states summed over the
        # ranks (totals and counts, aggregation "sum", every Keras metric's),
        # anything else averaged, as exact_metrics does; one grouped allreduce each.
        local = [tf.convert_to_tensor(v) for v in variables]
        if size() == 1 or not local:
            return local
        summed = [i for i, v in enumerate(variables) if _compat.variable_aggregation(v) == "sum"]
        other = [i for i in range(len(variables)) if i not in summed]
        totals = list(local)
        for indices, op, name in ((summed, hvd.Sum, "sum"), (other, hvd.Average, "mean")):
            if indices:
                reduced = hvd.grouped_allreduce([local[i] for i in indices], op=op,
                                                name=f"hvd_keras.elastic.metric_totals.{name}")
                for i, value in zip(indices, reduced):
                    totals[i] = value
        return totals

    def add_metric_totals(self):
        """After a reset inside an epoch: rank 0's metric states take the committed totals of the epoch's earlier steps."""
        if self.metric_totals is None:
            return
        variables = self._metric_variables()
        if len(variables) != len(self.metric_totals):
            return
        for v, total in zip(variables, self.metric_totals):
            if _compat.variable_aggregation(v) == "sum":
                if rank() == 0:
                    v.assign_add(total)
            else:
                v.assign(total)
