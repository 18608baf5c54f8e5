"""An elastic job for tests/test_elastic.py: a small MLP trained by hvd_keras.elastic.fit under horovodrun.

Writes into --out: `progress` (rank 0: epoch, committed step, size, after
every step), `ledger-<pid>.jsonl` (every process: the samples it trained in
each committed step), `final-<rank>.npz` (each process that finishes: its
weights, the state's ledger, history, recoveries and commit times) and
`initial.npz` (the initial weights).
"""

import json
import os
import signal
import time

import _common

_common.quiet_tf()

import keras  # noqa: E402
import numpy as np  # noqa: E402

import hvd_keras  # noqa: E402
import hvd_keras.elastic as elastic  # noqa: E402
from hvd_keras import _compat  # noqa: E402
from elastic_train_model import LEARNING_RATE, build  # noqa: E402

out = _common.arg("out")
mode = _common.arg("mode", "global")
epochs = int(_common.arg("epochs", "3"))
batch = int(_common.arg("batch", "6"))
pace = float(_common.arg("pace", "0.05"))
commit_every = int(_common.arg("commit-every", "5"))
kill_in_commit = int(_common.arg("kill-in-commit", "-1"))  # rank 0 kills itself inside this commit
warmup = float(_common.arg("warmup-epochs", "0"))
# Rank 0 writes these hosts into the discovery file in the last step of the first epoch, and waits there
# until horovodrun's notice has reached it: heard after that step's flags were carried.
hosts_at_epoch_end = _common.arg("hosts-at-epoch-end")


hvd_keras.init()
x, y = _common.regression_data(n=int(_common.arg("samples", "240")))
model = build()
if not os.path.exists(f"{out}/initial.npz"):  # every process starts from these weights; the first one writes them
    np.savez(f"{out}/initial.{os.getpid()}.npz", *[np.asarray(v) for v in model.weights])
    os.replace(f"{out}/initial.{os.getpid()}.npz", f"{out}/initial.npz")
rate = LEARNING_RATE * (hvd_keras.size() if mode == "per_rank" else 1)
model.compile(optimizer=hvd_keras.DistributedOptimizer(keras.optimizers.SGD(rate, momentum=0.9)),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
hvd_keras.exact_metrics(model)
# A process started for a new host resumes too, while the others train: hvd_keras.resume runs no collective in
# an elastic job (the state's sync then gives it rank 0's state).
initial_epoch = hvd_keras.resume(model, f"{out}/ckpt")
state = elastic.KerasState(model, epoch=initial_epoch, seed=11)
ledger_file = f"{out}/ledger-{os.getpid()}.jsonl"


def record(state):
    # The samples this process trained in each step the commit made durable.
    with open(ledger_file, "a") as f:
        for step, ids in state.committed_steps:
            f.write(json.dumps({"pid": os.getpid(), "rank": hvd_keras.rank(), "size": step.size,
                                "epoch": step.epoch, "start": step.start, "batch": step.batch,
                                "ids": [int(i) for i in ids]}) + "\n")


state.register_commit_callbacks([record])
if kill_in_commit >= 0:
    save = state.save

    def save_or_die():
        # Inside the commit, before its collective: the others fail in it.
        if hvd_keras.rank() == 0 and hvd_keras.size() > 1 and state.global_step == kill_in_commit:
            with open(f"{out}/killed-in-commit", "w") as f:
                f.write(f"{time.time()}\n")
            os.kill(os.getpid(), signal.SIGKILL)
        save()

    state.save = save_or_die


class Pace(keras.callbacks.Callback):
    # Slow enough for the test to change the hosts mid-training; rank 0 tells it where training is.
    def on_train_batch_end(self, batch, logs=None):
        time.sleep(pace)
        if (hosts_at_epoch_end and hvd_keras.rank() == 0 and state.epoch == 0 and batch + 1 == self.params["steps"]
                and not os.path.exists(f"{out}/hosts-changed")):
            with open(f"{out}/hosts.tmp", "w") as f:
                f.write(hosts_at_epoch_end.replace(",", "\n") + "\n")
            os.replace(f"{out}/hosts.tmp", f"{out}/hosts")
            open(f"{out}/hosts-changed", "w").close()
            deadline = time.monotonic() + 30
            while _compat.hosts_updated_messages(state).empty() and time.monotonic() < deadline:
                time.sleep(0.05)
        if hvd_keras.rank() == 0:
            with open(f"{out}/progress.tmp", "w") as f:
                f.write(f"{state.epoch} {state.global_step} {hvd_keras.size()} {time.time()}\n")
            os.replace(f"{out}/progress.tmp", f"{out}/progress")


callbacks = [Pace(), hvd_keras.callbacks.Checkpoint(f"{out}/ckpt", save_freq="epoch")]
if warmup:
    callbacks.insert(0, hvd_keras.callbacks.LearningRateWarmup(warmup, steps_per_epoch=len(x) // batch))
history = elastic.fit(model, x, y, batch_size=batch, epochs=epochs, batch_mode=mode, callbacks=callbacks,
                      commit_every=commit_every, verbose=0, state=state)
np.savez(f"{out}/final-{hvd_keras.rank()}.tmp.npz", weights=_common.flat_weights(model.weights),
         ledger=np.array(state.ledger, dtype=np.int64).reshape(-1, 5), seed=state.seed,
         history=json.dumps(history.history), epochs=json.dumps(history.epoch),
         recoveries=json.dumps(state.recoveries), commit_seconds=np.array(state.commit_seconds),
         learning_rate=elastic.rates.learning_rate(model.optimizer), size=hvd_keras.size())
os.replace(f"{out}/final-{hvd_keras.rank()}.tmp.npz", f"{out}/final-{hvd_keras.rank()}.npz")
print(f"ELASTIC DONE rank {hvd_keras.rank()} size {hvd_keras.size()} pid {os.getpid()}", flush=True)
