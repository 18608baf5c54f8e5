"""Helpers shared by the worker scripts that the tests launch."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402


def quiet_tf(deterministic=True, threads=True):
    import tensorflow as tf

    if threads:
        # Two ranks on two cores: one thread each keeps runs fast and repeatable.
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    tf.random.set_seed(1234)  # determinism needs a seed; scripts reseed per rank where they mean to


def save_result(out_dir, rank, **arrays):
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"rank{rank}.npz")
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def flat_weights(variables):
    return np.concatenate([np.asarray(v).ravel().astype(np.float64) for v in variables])


def regression_data(n=96, d=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype("float32")
    w = rng.normal(size=(d, 3)).astype("float32")
    y = np.argmax(x @ w + 0.1 * rng.normal(size=(n, 3)), axis=1).astype("int32")
    return x, y


def arg(name, default=None):
    """Reads `--name value` from argv (tiny, so scripts stay dependency-free)."""
    if f"--{name}" in sys.argv:
        return sys.argv[sys.argv.index(f"--{name}") + 1]
    return default


def pretend_gpu():
    """Makes `tf.config.list_physical_devices()` report one GPU, as on a GPU machine.

    Only the listing changes (Keras's jit_compile="auto" decision reads it);
    nothing runs on a GPU.
    """
    import tensorflow as tf

    real = tf.config.list_physical_devices
    fake = tf.config.PhysicalDevice(name="/physical_device:GPU:0", device_type="GPU")

    def list_physical_devices(device_type=None):
        devices = real(device_type)
        return devices + [fake] if device_type in (None, "GPU") else devices

    tf.config.list_physical_devices = list_physical_devices
