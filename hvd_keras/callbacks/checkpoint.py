"""Checkpoint callback."""

import os
import shutil

import numpy as np

from hvd_keras import _compat, preemption
from hvd_keras import checkpoint as ckpt
from hvd_keras._horovod import hvd, keras
from hvd_keras.cluster import host
from hvd_keras.optimizer import enable_step_option, primary_optimizer
from hvd_keras.runtime import is_chief, size


class Checkpoint(keras.callbacks.Callback):
    """Saves atomic checkpoints from rank 0 and stops cleanly on preemption.

    Each checkpoint is a directory `ckpt-<batches trained>` holding `model.keras`
    (the model with its optimizer state, loadable by plain
    `keras.saving.load_model`) and `meta.json` (epoch, step, and the versions
    of hvd_keras, TensorFlow, Keras and Horovod). It is written into a
    temporary directory, fsynced and renamed into place, so a kill at any
    instant leaves the last complete checkpoint loadable. Only rank 0 writes.
    `hvd_keras.resume(model, directory)` continues from the newest one, at
    the next batch when it was taken inside an epoch. Before the first step
    rank 0 checks that it can write the directory, and every rank stops with
    one line if not.

    On SIGTERM or SIGUSR1 (what Slurm sends before it kills or requeues a
    job) to any rank, all ranks stop after the same step, rank 0 writes a
    checkpoint, and every process exits with
    `hvd_keras.PREEMPTED_EXIT_CODE` (75); running the same command again
    resumes. The ranks agree through the gradient allreduce, so on several
    ranks the model must be compiled with `hvd_keras.DistributedOptimizer`.

    Args:
        directory: where checkpoints go (created by rank 0).
        save_freq: `"epoch"`, or an integer: save every that many steps.
        keep_last: how many recent checkpoints to keep; older ones are
            deleted (the best one is kept too).
        monitor: a log key such as `"val_loss"`; the checkpoint of the best
            epoch is kept and recorded in `best.json`, which a resumed run
            reads back, so only a real improvement replaces it.
        mode: `"min"` or `"max"`: whether smaller or larger `monitor` is better.
        save_on_preemption: handle SIGTERM and SIGUSR1 as above.

    Example:

    ```python
    initial_epoch = hvd_keras.resume(model, "ckpt")
    model.fit(x, y, epochs=20, initial_epoch=initial_epoch,
              callbacks=[hvd_keras.callbacks.Checkpoint("ckpt", monitor="val_loss")])
    ```
    """

    def __init__(self, directory, save_freq="epoch", keep_last=3, monitor=None, mode="min",
                 save_on_preemption=True):
        super().__init__()
        if save_freq != "epoch" and not (isinstance(save_freq, int) and save_freq > 0):
            raise ValueError(
                f"save_freq must be \"epoch\" or a positive number of steps. Received: save_freq={save_freq!r}. "
                "HINT: pass save_freq=\"epoch\"."
            )
        if not isinstance(keep_last, int) or keep_last < 1:
            raise ValueError(
                f"keep_last must be an integer >= 1. Received: keep_last={keep_last!r}. "
                "HINT: pass keep_last=3."
            )
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be \"min\" or \"max\". Received: mode={mode!r}. "
                             "HINT: \"min\" for losses, \"max\" for accuracies.")
        self.directory = os.fspath(directory)
        self.save_freq = save_freq
        self.keep_last = keep_last
        self.monitor = monitor
        self.mode = mode
        self.save_on_preemption = save_on_preemption
        self.best = None
        self.preempted = False
        self._old_handlers = {}
        self._epoch = 0
        self._batch = 0
        # Batches trained since the first run began: the checkpoint names.
        # It only grows (under gradient accumulation and steps_per_execution
        # too), so the newest checkpoint has the largest name.
        self._global_step = 0
        self._epoch_start = 0
        self._preempt_states = None

    def on_train_begin(self, logs=None):
        if self.save_on_preemption:
            if size() > 1 and primary_optimizer(self.model) is None:
                raise ValueError(
                    "Checkpoint(save_on_preemption=True) on several ranks needs the model "
                    "compiled with hvd_keras.DistributedOptimizer (ranks agree to stop through "
                    "its allreduce). HINT: wrap the optimizer, or pass save_on_preemption=False."
                )
            if size() > 1:
                enable_step_option(self.model, "_hvd_carry_stop")
            preemption.requests.reset()
            self._old_handlers = preemption.install_handlers()
        optimizer = self.model.optimizer
        counted = int(_compat.micro_steps(getattr(optimizer, "inner_optimizer", optimizer)).numpy())
        resumed = getattr(self.model, "_hvd_resumed", None) or {}
        start = resumed.get("global_step", 0) - resumed.get("step_in_epoch", 0)
        self._global_step = max(self._global_step, counted, start)
        if resumed.get("step_in_epoch") and counted == resumed["global_step"]:
            self._global_step = start  # the first fit after resume re-counts the skipped batches
        state = self._prepare_directory() if is_chief() else None
        if size() > 1:
            state = hvd.broadcast_object(state, root_rank=0, name="hvd_keras.checkpoint_directory")
        if state["error"]:
            raise OSError(state["error"])
        if size() > 1:
            self._warn_if_not_shared(state["token"])
        if self.monitor is not None and state["best"] is not None and self.best is None:
            self.best = state["best"]

    def _warn_if_not_shared(self, token):
        # Rank 0's directory marker, as each host sees it: a node-local
        # directory is fine for writing, but a job resumed with rank 0 on
        # another node would not find it (resume() then refuses, naming hosts).
        marker = os.path.join(self.directory, ckpt.DIRECTORY_MARKER)
        try:
            with open(marker) as f:
                sees = f.read().strip() == token
        except OSError:
            sees = False
        views = hvd.allgather_object((host.identity().name, sees), name="hvd_keras.checkpoint_shared")
        blind = sorted({name for name, ok in views if not ok})
        if blind and is_chief():
            print(f"hvd_keras: Checkpoint directory {self.directory!r} is not shared: {', '.join(blind)} cannot see "
                  "what rank 0 writes there. A job resumed with rank 0 on such a node would not find the "
                  "checkpoints (hvd_keras.resume refuses it, naming the hosts). HINT: checkpoint to a file system "
                  "every node mounts.", flush=True)

    def _prepare_directory(self):
        # Rank 0 proves it can write before the first step; every rank learns the outcome.
        try:
            os.makedirs(self.directory, exist_ok=True)
            ckpt.remove_stale_temporaries(self.directory)
            probe = os.path.join(self.directory, f".tmp-write-test-{os.getpid()}")
            with open(probe, "wb") as f:
                f.write(b"hvd_keras")
                f.flush()
                os.fsync(f.fileno())
            os.remove(probe)
            token = ckpt.directory_token(self.directory)
        except OSError as e:
            return {"error": (f"hvd_keras: Checkpoint cannot write to {self.directory!r} "
                              f"(checked on rank 0 before training): {e.strerror or e}. HINT: pass a "
                              "directory that rank 0 can create and write, on a filesystem every "
                              "rank of a resumed job can read."), "best": None, "token": None}
        best = None
        best_file = os.path.join(self.directory, ckpt.BEST_FILE)
        if self.monitor is not None and os.path.exists(best_file):
            record = ckpt.read_json(best_file)
            if record.get("monitor") == self.monitor and os.path.isdir(
                    os.path.join(self.directory, record["path"])):
                best = record["value"]
        return {"error": None, "best": best, "token": token}

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._batch = 0
        self._epoch_start = self._global_step

    def on_train_batch_end(self, batch, logs=None):
        # `batch` is the last batch of the execution (steps_per_execution).
        before = self._global_step
        self._batch = batch + 1
        self._global_step = self._epoch_start + self._batch
        if self.save_on_preemption and preemption.requests.agreed()[preemption.StopRequests.PREEMPT]:
            self.preempted = True
            self.model.stop_training = True
            # Now, before validation resets the metrics; every rank is here.
            self._preempt_states = ckpt.gather_metric_states(self.model)
            return
        if self.save_freq != "epoch" and self._global_step // self.save_freq > before // self.save_freq:
            self._save(initial_epoch=self._epoch, step_in_epoch=self._batch,
                       metric_states=ckpt.gather_metric_states(self.model))

    def on_epoch_end(self, epoch, logs=None):
        if self.preempted:
            return
        improved = False
        if self.monitor is not None:
            value = (logs or {}).get(self.monitor)
            if value is None:
                raise ValueError(
                    f"Checkpoint monitors {self.monitor!r}, which the logs do not have. "
                    f"Received logs: {sorted(logs or {})}. HINT: pass validation_data, or monitor one of those."
                )
            value = float(np.asarray(value))
            improved = self.best is None or (value < self.best if self.mode == "min" else value > self.best)
            if improved:
                self.best = value
        if self.save_freq == "epoch" or improved:
            best = {"monitor": self.monitor, "value": self.best, "epoch": epoch} if improved else None
            self._save(initial_epoch=epoch + 1, step_in_epoch=0, best=best)

    def on_train_end(self, logs=None):
        if self.save_on_preemption:
            preemption.restore_handlers(self._old_handlers)
        if self.preempted:
            self.preempted = False
            self._save(initial_epoch=self._epoch, step_in_epoch=self._batch, extra={"preempted": True},
                       metric_states=self._preempt_states)
            # The process exits when fit returns, after every callback's on_train_end.
            self.model._hvd_preempted = self.directory

    def _save(self, initial_epoch, step_in_epoch, extra=None, metric_states=None, best=None):
        # Rank 0 writes; every rank learns whether it could, so that a failed
        # save (a full disk) ends every rank with rank 0's reason.
        error = path = None
        if is_chief():
            path = ckpt.checkpoint_path(self.directory, self._global_step)
            try:
                ckpt.save_checkpoint(self.model, self.directory, initial_epoch=initial_epoch,
                                     global_step=self._global_step, step_in_epoch=step_in_epoch,
                                     extra=extra, metric_states=metric_states)
                if best is not None:
                    ckpt.write_json_atomic(os.path.join(self.directory, ckpt.BEST_FILE),
                                           {"path": os.path.basename(path), **best})
                self._prune(path)
            except Exception as e:  # noqa: BLE001 - any failure to write ends the job the same way
                cause = f"{e.strerror} (errno {e.errno})" if isinstance(e, OSError) and e.strerror else \
                    f"{type(e).__name__}: {e}"
                error = (f"hvd_keras: Checkpoint could not save {path!r} on rank 0: {cause}. The previous "
                         "checkpoints are intact. HINT: free space or pass another directory, then run "
                         "the same command again to resume from the newest checkpoint.")
        if size() > 1:
            error = hvd.broadcast_object(error, root_rank=0, name="hvd_keras.checkpoint_saved")
        if error:
            raise OSError(error)

    def _prune(self, written):
        found = ckpt.list_checkpoints(self.directory)
        # The one just written is intact; a newer name can only be a damaged
        # one that a resume passed over.
        keep = set(found[-self.keep_last:]) | {written}
        best_file = os.path.join(self.directory, ckpt.BEST_FILE)
        if os.path.exists(best_file):
            keep.add(os.path.join(self.directory, ckpt.read_best(best_file)))
        for path in found:
            if path not in keep:
                shutil.rmtree(path, ignore_errors=True)
