"""Checked access to Keras 3 on TensorFlow and to Horovod's TensorFlow layer.

Every hvd_keras module gets `keras`, `tf` and `hvd` from here, so that the two
preconditions (TensorFlow backend, horovod built with TensorFlow) are checked
in one place and fail with one line that names the fix.
"""

import json
import os


def _configured_backend():
    # Read the backend before importing keras: importing keras with an
    # uninstalled backend (KERAS_BACKEND=jax without jax) fails inside keras
    # with an error that does not mention hvd_keras.
    backend = os.environ.get("KERAS_BACKEND")
    if backend:
        return backend, "KERAS_BACKEND"
    keras_home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    config = os.path.join(keras_home, "keras.json")
    try:
        with open(config) as f:
            backend = json.load(f).get("backend")
    except (OSError, ValueError):
        backend = None
    return (backend or "tensorflow"), config


def check_backend():
    backend, source = _configured_backend()
    if backend != "tensorflow":
        raise ImportError(
            "hvd_keras needs the TensorFlow backend of Keras 3. "
            f"Received: backend={backend!r} (from {source}). "
            "HINT: set KERAS_BACKEND=tensorflow before starting Python."
        )


check_backend()

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

if keras.backend.backend() != "tensorflow":  # a backend set programmatically
    raise ImportError(
        "hvd_keras needs the TensorFlow backend of Keras 3. "
        f"Received: backend={keras.backend.backend()!r}. "
        "HINT: set KERAS_BACKEND=tensorflow before importing keras."
    )

try:
    import horovod.tensorflow as hvd  # noqa: E402
except ImportError as e:  # horovod missing, or built without TensorFlow
    raise ImportError(
        "hvd_keras needs horovod built with TensorFlow support. "
        f"Received: `import horovod.tensorflow` failed ({str(e).splitlines()[0]}). "
        "HINT: rebuild horovod against the installed TensorFlow with "
        "`make setup` (or HOROVOD_WITH_TENSORFLOW=1 pip install "
        "--no-build-isolation horovod==0.28.1)."
    ) from None

__all__ = ["hvd", "keras", "tf"]
