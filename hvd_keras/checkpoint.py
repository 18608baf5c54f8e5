"""Atomic checkpoints written by rank 0, and resume on every rank."""

import json
import os
import re
import shutil
import tempfile

from hvd_keras._horovod import hvd, keras, tf
from hvd_keras.broadcast import broadcast_state, state_variables
from hvd_keras.runtime import rank, size

MODEL_FILE = "model.keras"
META_FILE = "meta.json"
BEST_FILE = "best.json"
_NAME = re.compile(r"^ckpt-(\d{10})$")


def _fsync_path(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def versions():
    import horovod

    import hvd_keras

    return {"hvd_keras": hvd_keras.__version__, "tensorflow": tf.__version__,
            "keras": keras.__version__, "horovod": horovod.__version__}


def write_json_atomic(path, data):
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_path(directory)


def save_checkpoint(model, directory, *, initial_epoch, global_step, step_in_epoch=0, extra=None):
    """Writes one checkpoint atomically; call it on one rank only.

    The model (with its optimizer state, loadable by plain
    `keras.saving.load_model`) and `meta.json` are written into a temporary
    directory, flushed to disk, and renamed into place: a kill at any instant
    leaves either the complete new checkpoint or none, never a partial one.

    Returns the checkpoint's path, `directory/ckpt-<global_step>`.
    """
    os.makedirs(directory, exist_ok=True)
    final = os.path.join(directory, f"ckpt-{int(global_step):010d}")
    tmp = tempfile.mkdtemp(prefix=".tmp-ckpt-", dir=directory)
    model_path = os.path.join(tmp, MODEL_FILE)
    model.save(model_path)
    _fsync_path(model_path)
    meta = {"initial_epoch": int(initial_epoch), "global_step": int(global_step),
            "step_in_epoch": int(step_in_epoch), "versions": versions(), **(extra or {})}
    with open(os.path.join(tmp, META_FILE), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    _fsync_path(tmp)
    if os.path.exists(final):  # same step saved twice (epoch end and step count)
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_path(directory)
    return final


def list_checkpoints(directory):
    """Complete checkpoints in `directory`, oldest first."""
    if not os.path.isdir(directory):
        return []
    names = sorted(n for n in os.listdir(directory) if _NAME.match(n))
    return [os.path.join(directory, n) for n in names
            if os.path.exists(os.path.join(directory, n, META_FILE))]


def latest_checkpoint(directory):
    """Path of the newest complete checkpoint in `directory`, or None."""
    found = list_checkpoints(directory)
    return found[-1] if found else None


def read_meta(path):
    with open(os.path.join(path, META_FILE)) as f:
        return json.load(f)


def remove_stale_temporaries(directory):
    """Deletes what a save killed half-way left behind."""
    if os.path.isdir(directory):
        for name in os.listdir(directory):
            if name.startswith(".tmp-"):
                path = os.path.join(directory, name)
                shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)


def resume(model, directory, root_rank=0):
    """Loads the newest checkpoint on `root_rank` and gives it to every rank.

    Rank `root_rank` looks for the newest complete checkpoint in `directory`
    and loads its weights and optimizer state into `model`; then the state is
    broadcast, so every rank continues from it, and all ranks agree on the
    epoch to continue from. Without a checkpoint nothing changes. Every rank
    must call it, after `compile` and before `fit`.

    Args:
        model: the compiled, built model to load into.
        directory: the `Checkpoint` callback's directory.
        root_rank: the rank that reads the files.

    Returns:
        The `initial_epoch` to pass to `fit`: 0 without a checkpoint.

    Example:

    ```python
    initial_epoch = hvd_keras.resume(model, "ckpt")
    model.fit(x, y, epochs=10, initial_epoch=initial_epoch,
              callbacks=[hvd_keras.callbacks.Checkpoint("ckpt")])
    ```
    """
    meta = None
    state_variables(model)  # build optimizer slots to load into, on every rank (a collective)
    if rank() == root_rank:
        path = latest_checkpoint(directory)
        if path is not None:
            model.load_weights(os.path.join(path, MODEL_FILE))
            meta = read_meta(path)
            meta["path"] = path
    if size() > 1:
        meta = hvd.broadcast_object(meta, root_rank=root_rank, name="hvd_keras.resume")
    if meta is None:
        return 0
    broadcast_state(model, root_rank=root_rank)
    if rank() == root_rank:
        print(f"hvd_keras: resumed from {meta['path']} (epoch {meta['initial_epoch']}, "
              f"step {meta['global_step']})", flush=True)
    return meta["initial_epoch"]



def read_best(best_file):
    """Name of the best checkpoint recorded by `Checkpoint(monitor=...)`."""
    with open(best_file) as f:
        return json.load(f)["path"]
