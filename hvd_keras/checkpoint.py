"""Atomic checkpoints written by rank 0, and resume on every rank."""

import hashlib
import json
import os
import re
import shutil
import tempfile

import numpy as np

from hvd_keras import _compat
from hvd_keras.cluster import host
from hvd_keras._version import __version__
from hvd_keras._horovod import hvd, keras, tf
from hvd_keras.broadcast import broadcast_state, state_variables
from hvd_keras.optimizer import built_locally
from hvd_keras.runtime import elastic_launch, is_chief, rank, size

MODEL_FILE = "model.keras"
META_FILE = "meta.json"
BEST_FILE = "best.json"
METRICS_FILE = "metric_states.npz"
_NAME = re.compile(r"^ckpt-(\d{10})$")


def _fsync_path(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def damage(path):
    """What is wrong with the checkpoint at `path`, as a phrase, or None when its files match their checksums.

    Checkpoints written before checksums were recorded pass unchecked.
    """
    files = read_meta(path).get("files", {})
    for name, expected in sorted(files.items()):
        file = os.path.join(path, name)
        if not os.path.exists(file):
            return f"{name} is missing"
        if os.path.getsize(file) != expected["bytes"]:
            return f"{name} has {os.path.getsize(file)} bytes, {expected['bytes']} were written"
        if _sha256(file) != expected["sha256"]:
            return f"{name} does not match the checksum recorded when it was written"
    return None


def versions():
    import horovod

    return {"hvd_keras": __version__, "tensorflow": tf.__version__,
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


def checkpoint_path(directory, global_step):
    """Where the checkpoint after `global_step` batches goes: `directory/ckpt-<global_step>`."""
    return os.path.join(directory, f"ckpt-{int(global_step):010d}")


def save_checkpoint(model, directory, *, initial_epoch, global_step, step_in_epoch=0, extra=None,
                    metric_states=None):
    """Writes one checkpoint atomically; call it on one rank only.

    The model (with its optimizer state, loadable by plain
    `keras.saving.load_model`) and `meta.json` are written into a temporary
    directory, flushed to disk, and renamed into place: a kill at any instant
    leaves either the complete new checkpoint or none, never a partial one.
    `metric_states` (every rank's metric variables, from
    `gather_metric_states`) are kept for a checkpoint taken inside an epoch.

    Returns the checkpoint's path, `directory/ckpt-<global_step>`.
    """
    os.makedirs(directory, exist_ok=True)
    final = checkpoint_path(directory, global_step)
    tmp = tempfile.mkdtemp(prefix=".tmp-ckpt-", dir=directory)
    try:
        _write_checkpoint(model, tmp, final, directory, initial_epoch, global_step, step_in_epoch,
                          extra, metric_states)
    except BaseException:
        # A failed save (a full disk, a kill) leaves the previous checkpoints as they were.
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _write_checkpoint(model, tmp, final, directory, initial_epoch, global_step, step_in_epoch, extra,
                      metric_states):
    model_path = os.path.join(tmp, MODEL_FILE)
    model.save(model_path)
    _fsync_path(model_path)
    if metric_states is not None:
        arrays = {f"rank{r}_{i}": a for r, states in enumerate(metric_states) for i, a in enumerate(states)}
        metrics_path = os.path.join(tmp, METRICS_FILE)
        np.savez(metrics_path, ranks=np.int64(len(metric_states)), **arrays)
        _fsync_path(metrics_path)
    files = {name: {"bytes": os.path.getsize(os.path.join(tmp, name)),
                    "sha256": _sha256(os.path.join(tmp, name))}
             for name in sorted(os.listdir(tmp))}
    meta = {"initial_epoch": int(initial_epoch), "global_step": int(global_step),
            "step_in_epoch": int(step_in_epoch), "versions": versions(), "files": files,
            **(extra or {})}
    with open(os.path.join(tmp, META_FILE), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    _fsync_path(tmp)
    if os.path.exists(final):  # same step saved twice (epoch end and step count)
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_path(directory)


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


def _metric_variables(model):
    return [v for m in model.metrics for v in m.variables]


def gather_metric_states(model):
    """Every rank's metric variables as numpy arrays, [rank][variable]; every rank must call it."""
    mine = [np.asarray(v) for v in _metric_variables(model)]
    if size() == 1:
        return [mine]
    return hvd.allgather_object(mine, name="hvd_keras.metric_states")


def _read_metric_states(path):
    file = os.path.join(path, METRICS_FILE)
    if not os.path.exists(file):
        return None
    with np.load(file) as data:
        ranks = int(data["ranks"])
        count = sum(1 for k in data.files if k.startswith("rank0_"))
        return [[data[f"rank{r}_{i}"] for i in range(count)] for r in range(ranks)]


def _restore_metric_states(model, states):
    variables = _metric_variables(model)
    if states is None:
        return
    if len(states) != size() or len(states[rank()]) != len(variables):
        if is_chief():
            print(f"hvd_keras: the resumed epoch's metrics cover only the batches after the resume "
                  f"(the checkpoint holds {len(states[0])} metric variables of {len(states)} ranks, "
                  f"this job has {len(variables)} of {size()})", flush=True)
        return
    for v, value in zip(variables, states[rank()]):
        v.assign(value)


def skip_resumed_batches(model, train_function):
    """Wraps `train_function` so that a run resumed inside an epoch continues from the next batch.

    The checkpoint recorded how many batches of its epoch had been trained
    (`step_in_epoch`); the first calls of the resumed `fit` draw those batches
    from the data without training on them, and the epoch's metric states
    come back as they were, so the epoch ends as in the uninterrupted run.
    Afterwards the plain train function runs, with nothing added.
    """
    resumed = getattr(model, "_hvd_resumed", None)
    if not resumed or not resumed.get("step_in_epoch") or getattr(train_function, "_hvd_resuming", False):
        return train_function
    # Kept on the resume record, not here: the train function may be rebuilt
    # (a callback turning on a step option) before the first batch.
    resumed.setdefault("to_skip", int(resumed["step_in_epoch"]))
    if resumed["to_skip"] <= 0:
        return train_function

    def resuming(iterator):
        if resumed["to_skip"] <= 0:
            model.train_function = train_function
            return train_function(iterator)
        for _ in range(min(int(model.steps_per_execution), resumed["to_skip"])):
            data = next(iterator)
            resumed["to_skip"] -= 1
            if "metric_states" in resumed:  # after fit reset the metrics for the epoch
                _compat.build_metrics(model, data)  # Keras builds them in the first step otherwise
                _restore_metric_states(model, resumed.pop("metric_states"))
        model._hvd_local_metrics = True  # no collective for a skipped step's logs
        try:
            return model.get_metrics_result()
        finally:
            model._hvd_local_metrics = False

    resuming._hvd_resuming = True
    model.train_function = resuming
    return resuming


def _load_newest_intact(model, directory):
    # A checkpoint damaged after it was written (a truncated copy, a full
    # disk, a bad sector) is passed over for the previous one, with a line.
    for path in reversed(list_checkpoints(directory)):
        try:
            meta = read_meta(path)
            problem = damage(path)
            if problem:
                print(f"hvd_keras: checkpoint {path} is damaged ({problem}); trying the previous one",
                      flush=True)
                continue
            model.load_weights(os.path.join(path, MODEL_FILE))
            if meta.get("step_in_epoch"):
                meta["metric_states"] = _read_metric_states(path)
        except Exception as e:  # noqa: BLE001 - any unreadable file means: try the previous one
            print(f"hvd_keras: checkpoint {path} cannot be loaded ({type(e).__name__}: {e}); "
                  "trying the previous one", flush=True)
            continue
        meta["path"] = path
        return meta
    return None


def resume(model, directory, root_rank=0):
    """Loads the newest checkpoint on `root_rank` and gives it to every rank.

    Rank `root_rank` looks for the newest complete checkpoint in `directory`
    and loads its weights and optimizer state into `model`; then the state is
    broadcast, so every rank continues from it, and all ranks agree on the
    epoch to continue from. A checkpoint taken inside an epoch
    (`Checkpoint(save_freq=N)`, or on preemption) resumes at the next batch
    of that epoch: pass the returned epoch to `fit` as `initial_epoch` and
    the same data, in the same order (see the README's "Resuming"). Without
    a checkpoint nothing changes. Every rank must call it, after `compile`
    and before `fit`. In an elastic job (`hvd_keras.elastic`) it runs no
    collective, since a process may start while the others train: every
    process reads the directory, which must be shared, and the first sync
    of `hvd_keras.elastic.fit` gives every rank rank 0's state.

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
    if elastic_launch():
        return _resume_in_elastic_job(model, directory)
    meta = None
    state_variables(model)  # build optimizer slots to load into, on every rank (a collective)
    if size() > 1:
        check_same_view(directory, root_rank)
    if rank() == root_rank:
        meta = _load_newest_intact(model, directory)
    if size() > 1:
        meta = hvd.broadcast_object(meta, root_rank=root_rank, name="hvd_keras.resume")
    if meta is None:
        return 0
    broadcast_state(model, root_rank=root_rank)
    model._hvd_resumed = meta
    if rank() == root_rank:
        within = f", batch {meta['step_in_epoch']} of the epoch" if meta.get("step_in_epoch") else ""
        print(f"hvd_keras: resumed from {meta['path']} (epoch {meta['initial_epoch']}{within}, "
              f"step {meta['global_step']})", flush=True)
    return meta["initial_epoch"]


def _resume_in_elastic_job(model, directory):
    # A process of an elastic job may start while the others train (a host
    # added): a collective here would meet theirs. So no collective: each
    # process reads the directory itself (it must be shared), and the first
    # sync of hvd_keras.elastic.fit gives every rank rank 0's state and progress.
    with built_locally():
        state_variables(model)
    meta = _load_newest_intact(model, directory)
    if meta is None:
        return 0
    model._hvd_resumed = meta
    if rank() == 0:
        print(f"hvd_keras: resumed from {meta['path']} (epoch {meta['initial_epoch']}, step {meta['global_step']})",
              flush=True)
    return meta["initial_epoch"]


#: A file naming the directory (a random token), which every host that mounts it reads alike.
DIRECTORY_MARKER = ".hvd_keras-directory"


def directory_token(directory):
    """The directory's token (written once, atomically, by the first `Checkpoint` to use it)."""
    marker = os.path.join(directory, DIRECTORY_MARKER)
    if not os.path.exists(marker):
        tmp = f"{marker}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(os.urandom(16).hex())
        os.replace(tmp, marker)
    with open(marker) as f:
        return f.read().strip()


def check_same_view(directory, root_rank=0):
    """Raises on every rank when the ranks' hosts see different checkpoints in `directory`.

    A directory on one node's local disk (`/tmp/ckpt`, a scratch SSD) holds
    the checkpoints of the node that wrote them; when a resumed job puts
    `root_rank` on another node, it would find none there and train again
    from epoch 0 without a word. Every rank lists the directory; one
    allgather compares what each host sees. Every rank must call it.
    """
    found = list_checkpoints(directory) if os.path.isdir(directory) else []
    mine = (host.identity().name, os.path.basename(found[-1]) if found else None)
    views = hvd.allgather_object(mine, name="hvd_keras.checkpoint_view")
    if len({newest for _, newest in views}) <= 1:
        return
    seen = {}
    for r, (name, newest) in enumerate(views):
        seen.setdefault((name, newest), []).append(r)
    detail = "; ".join(f"{name} (rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}) sees "
                       f"{newest or 'no checkpoint'}" for (name, newest), ranks in seen.items())
    raise ValueError(
        f"hvd_keras: the checkpoint directory {directory!r} differs between hosts: {detail}. Rank {root_rank} "
        "would resume from what its own host holds, or start over. HINT: keep checkpoints on a file system every "
        "node mounts (the job's shared home, NFS, Lustre), or copy the directory to every node before resuming.")


def read_json(path):
    with open(path) as f:
        return json.load(f)


def read_best(best_file):
    """Name of the best checkpoint recorded by `Checkpoint(monitor=...)`."""
    return read_json(best_file)["path"]
