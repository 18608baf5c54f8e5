"""Keeping output and file writes on rank 0, and plotting training history."""

import os

from hvd_keras._horovod import keras
from hvd_keras.runtime import is_chief

# Callbacks that write files: on other ranks they would race rank 0 for the
# same paths.
_WRITERS = (keras.callbacks.TensorBoard, keras.callbacks.CSVLogger, keras.callbacks.ModelCheckpoint)


class _RestoreOnly(keras.callbacks.Callback):
    # BackupAndRestore must restore on every rank (each rank must start at the
    # same epoch) but back up from rank 0 only.
    def __init__(self, backup):
        super().__init__()
        self.backup = backup

    def set_model(self, model):
        super().set_model(model)
        self.backup.set_model(model)

    def on_train_begin(self, logs=None):
        self.backup.on_train_begin(logs)


def rank_zero_output(callbacks=None, verbose="auto"):
    """Keyword arguments for `fit` that keep output and file writes on rank 0.

    On rank 0 everything is kept. On other ranks `verbose` becomes 0,
    `TensorBoard`, `CSVLogger` and `ModelCheckpoint` are dropped, and
    `BackupAndRestore` only restores (every rank must resume at the same
    epoch) and never writes.

    Args:
        callbacks: the list of callbacks the script passes to `fit`.
        verbose: the verbosity rank 0 uses.

    Returns:
        A dict with `callbacks` and `verbose`, to unpack into `fit`.

    Example:

    ```python
    model.fit(x, y, epochs=5, **hvd_keras.rank_zero_output(
        [keras.callbacks.CSVLogger("log.csv")], verbose=2))
    ```
    """
    callbacks = list(callbacks or [])
    if is_chief():
        return {"callbacks": callbacks, "verbose": verbose}
    kept = []
    for cb in callbacks:
        if isinstance(cb, keras.callbacks.BackupAndRestore):
            kept.append(_RestoreOnly(cb))
        elif not isinstance(cb, _WRITERS):
            kept.append(cb)
    return {"callbacks": kept, "verbose": 0}


def plot_history(history, path):
    """Writes a PNG of every loss and metric against epoch.

    One panel per quantity, training and validation (`val_` keys) on the
    same axes. Call it on rank 0 (it writes a file).

    Args:
        history: the `History` returned by `fit`, or its `.history` dict.
        path: the PNG file to write.

    Example:

    ```python
    history = model.fit(x, y, validation_split=0.1, epochs=10)
    if hvd_keras.is_chief():
        hvd_keras.plot_history(history, "history.png")
    ```
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = getattr(history, "history", history)
    epochs_offset = (getattr(history, "epoch", None) or [0])[0]
    names = [k for k in logs if not k.startswith("val_") and k != "learning_rate"]
    names += [k[4:] for k in logs if k.startswith("val_") and k[4:] not in logs]
    if not names:
        raise ValueError(f"plot_history found nothing to plot. Received keys: {sorted(logs)}. "
                         "HINT: pass the History that fit() returns.")
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.4 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for key, label, style in ((name, "training", "-o"), (f"val_{name}", "validation", "--s")):
            if key in logs:
                values = [float(v) for v in logs[key]]
                ax.plot(range(epochs_offset + 1, epochs_offset + len(values) + 1), values, style,
                        label=label, markersize=3)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
