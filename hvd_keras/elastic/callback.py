"""The callback that commits an elastic job's state and turns a hosts-updated notice into a reset after the same step."""

import sys
import time

from hvd_keras import preemption
from hvd_keras._horovod import keras
from hvd_keras.optimizer import enable_step_option, primary_optimizer
from hvd_keras.runtime import rank, size


class ElasticCommit(keras.callbacks.Callback):
    """Commits the state every `commit_every` steps and at the epoch's end; resets for new hosts after an agreed step.

    `fit` puts it last in the callback list of each segment (the rest of an
    epoch at one size). A hosts-updated notice reaches rank 0 only (Horovod
    notifies its coordinator); rank 0 turns it into a request that rides in
    the next step's gradient allreduce, with the stop requests
    (`preemption.StopRequests.HOSTS`), so that every rank learns it from the
    same step, commits after that step and raises `HostsUpdatedInterrupt`.
    On the last step of a segment the interrupt waits for the epoch's end,
    so that the epoch ends (validation, checkpoint) at the old size.

    Args:
        state: the `KerasState`.
        segment: the `data.Segment` this fit trains.
        order: the epoch's order of samples.
        commit_every: steps between commits, counted over the whole job.
        warmups: the `LearningRateWarmup` callbacks of the fit.
    """

    def __init__(self, state, segment, order, commit_every, warmups=()):
        super().__init__()
        self.state = state
        self.warmups = list(warmups)
        self.segment = segment
        self.order = order
        self.commit_every = int(commit_every)
        self.pending_interrupt = False
        self.epoch_complete = False
        self._done = 0              # steps of this segment trained
        self._committed = 0         # steps of this segment in the last commit
        self._step0 = state.global_step

    def on_train_begin(self, logs=None):
        if size() > 1 and primary_optimizer(self.model) is not None:
            enable_step_option(self.model, "_hvd_carry_stop")  # the hosts flag rides in the step's allreduce
        if size() > 1 and rank() == 0 and self.state.hosts_request_pending:
            # Heard after the last step of the previous segment had carried its
            # flags: the callbacks before this one cleared the requests for the
            # new fit, so it rides in this segment's first step instead.
            preemption.requests.request(preemption.StopRequests.HOSTS)
        if not self.state.warmups and self.warmups:
            # Their rates as the first fit set them (after their own on_train_begin): committed and synced from now on.
            self.state.warmups = [{"warmup_target": w.warmup_target, "initial_learning_rate": w.initial_learning_rate}
                                  for w in self.warmups]

    def on_epoch_begin(self, epoch, logs=None):
        self.state.in_epoch = True

    def on_train_batch_end(self, batch, logs=None):
        self._done = done = batch + 1
        if done == 1:
            self._first_step()
        hosts = self._hosts_updated()
        if hosts and done < len(self.segment.steps):
            self._commit(done)
            raise self.state.interrupt()
        if hosts:
            self.pending_interrupt = True  # the segment's last step: after the epoch's end
        step = self._step0 + done
        if self.commit_every and step // self.commit_every > (step - 1) // self.commit_every:
            self._commit(done)

    def on_epoch_end(self, epoch, logs=None):
        preemption.requests.flush()  # the last step's flags too
        if self._hosts_updated():
            self.pending_interrupt = True
        # A stop agreed inside the epoch (every rank stopped after the same
        # step) leaves it incomplete; one decided at its end (EarlyStopping) does not.
        self.epoch_complete = self._done == len(self.segment.steps)
        self._commit(self._done, end=self.epoch_complete)

    def _first_step(self):
        state = self.state
        state.add_metric_totals()  # the epoch's steps before the reset count in its metrics
        if state.failed_at is not None:
            seconds = time.monotonic() - state.failed_at
            state.recoveries.append({"reason": state.reset_reason, "seconds": seconds, "size": size(),
                                     "epoch": state.epoch, "offset": state.offset, "time": time.time()})
            if rank() == 0:
                print(f"hvd_keras.elastic: recovered from {state.reset_reason} in {seconds:.1f} s: training on "
                      f"{size()} rank(s) from epoch {state.epoch + 1}, sample {state.offset} of its order "
                      f"(time {time.time():.3f})", file=sys.stderr, flush=True)
            state.failed_at = None

    def _hosts_updated(self):
        state = self.state
        if size() == 1:  # nothing to agree on
            return rank() == 0 and state.take_hosts_update()
        if rank() == 0 and state.take_hosts_update():
            # Every rank reads it from the same step's allreduce, one step later.
            preemption.requests.request(preemption.StopRequests.HOSTS)
            state.hosts_request_pending = True
        return preemption.requests.hosts_updated()

    def _commit(self, done, end=False):
        state, segment = self.state, self.segment
        new = segment.steps[self._committed:done]
        runs = state.ledger
        for step in new:
            last = runs[-1] if runs else None
            if last and last[0] == step.epoch and last[2] == step.batch and last[4] == step.size \
                    and last[1] + last[2] * last[3] == step.start:
                last[3] += 1
            else:
                runs.append([step.epoch, step.start, step.batch, 1, step.size])
        state.global_step = self._step0 + done
        state.size = size()
        state.committed_steps = [(step, segment.block(self.order, step)) for step in new]
        if end:
            state.epoch, state.offset, state.metric_totals, state.in_epoch = segment.epoch + 1, 0, None, False
        else:
            state.offset = segment.offset_after(done)
        self._committed = done
        state.commit()
