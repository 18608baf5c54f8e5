"""Checkpoint callback."""

import os
import shutil

import numpy as np

from hvd_keras import checkpoint as ckpt
from hvd_keras import preemption
from hvd_keras._horovod import keras
from hvd_keras.optimizer import enable_step_option, is_distributed
from hvd_keras.runtime import barrier, is_chief, size


class Checkpoint(keras.callbacks.Callback):
    """Saves atomic checkpoints from rank 0 and stops cleanly on preemption.

    Each checkpoint is a directory `ckpt-<global step>` holding `model.keras`
    (the model with its optimizer state, loadable by plain
    `keras.saving.load_model`) and `meta.json` (epoch, step, and the versions
    of hvd_keras, TensorFlow, Keras and Horovod). It is written into a
    temporary directory, fsynced and renamed into place, so a kill at any
    instant leaves the last complete checkpoint loadable. Only rank 0 writes.
    `hvd_keras.resume(model, directory)` continues from the newest one.

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
            epoch is kept and recorded in `best.json`.
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
        self._global_step = 0

    def on_train_begin(self, logs=None):
        if self.save_on_preemption:
            if size() > 1 and not is_distributed(self.model.optimizer):
                raise ValueError(
                    "Checkpoint(save_on_preemption=True) on several ranks needs the model "
                    "compiled with hvd_keras.DistributedOptimizer (ranks agree to stop through "
                    "its allreduce). HINT: wrap the optimizer, or pass save_on_preemption=False."
                )
            if size() > 1:
                enable_step_option(self.model, "_hvd_carry_stop")
            preemption.reset()
            self._old_handlers = preemption.install_handlers()
        self._global_step = int(self.model.optimizer.iterations.numpy())
        if is_chief():
            ckpt.remove_stale_temporaries(self.directory)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._batch = 0

    def on_train_batch_end(self, batch, logs=None):
        self._batch = batch + 1
        self._global_step += 1
        if self.save_on_preemption and preemption.stop_agreed():
            self.preempted = True
            self.model.stop_training = True
            return
        if self.save_freq != "epoch" and self._global_step % self.save_freq == 0:
            self._save(initial_epoch=self._epoch, step_in_epoch=self._batch)

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
            path = self._save(initial_epoch=epoch + 1, step_in_epoch=0)
            if improved and is_chief():
                ckpt.write_json_atomic(os.path.join(self.directory, ckpt.BEST_FILE),
                                       {"path": os.path.basename(path), "monitor": self.monitor,
                                        "value": self.best, "epoch": epoch})

    def on_train_end(self, logs=None):
        if self.save_on_preemption:
            preemption.restore_handlers(self._old_handlers)
        if self.preempted:
            self._save(initial_epoch=self._epoch, step_in_epoch=self._batch, extra={"preempted": True})
            barrier("hvd_keras.preempted")  # no rank exits before the checkpoint is on disk
            if is_chief():
                print(f"hvd_keras: preempted; checkpoint written to {self.directory}; "
                      f"exiting with code {preemption.PREEMPTED_EXIT_CODE}", flush=True)
            raise SystemExit(preemption.PREEMPTED_EXIT_CODE)

    def _save(self, initial_epoch, step_in_epoch, extra=None):
        if not is_chief():
            return None
        path = ckpt.save_checkpoint(self.model, self.directory, initial_epoch=initial_epoch,
                                    global_step=self._global_step, step_in_epoch=step_in_epoch,
                                    extra=extra)
        self._prune()
        return path

    def _prune(self):
        found = ckpt.list_checkpoints(self.directory)
        keep = set(found[-self.keep_last:])
        best_file = os.path.join(self.directory, ckpt.BEST_FILE)
        if os.path.exists(best_file):
            keep.add(os.path.join(self.directory, ckpt.read_best(best_file)))
        for path in found:
            if path not in keep:
                shutil.rmtree(path, ignore_errors=True)
