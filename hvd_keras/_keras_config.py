"""Keras's configured backend, read without importing Keras (which fails for a backend that is not installed)."""

import json
import os


def configured_backend(environ=None):
    # Read the backend before importing keras: importing keras with an
    # uninstalled backend (KERAS_BACKEND=jax without jax) fails inside keras
    # with an error that does not mention hvd_keras.
    environ = os.environ if environ is None else environ
    backend = environ.get("KERAS_BACKEND")
    if backend:
        return backend, "KERAS_BACKEND"
    keras_home = environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    config = os.path.join(keras_home, "keras.json")
    try:
        with open(config) as f:
            backend = json.load(f).get("backend")
    except (OSError, ValueError):
        backend = None
    return (backend or "tensorflow"), config
