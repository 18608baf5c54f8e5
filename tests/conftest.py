"""Launch helpers: the distributed tests start real `horovodrun -np 2` jobs."""

import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "tests", "scripts")
BIN = os.path.dirname(sys.executable)


def worker_env(**extra):
    env = dict(os.environ)
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = SCRIPTS + os.pathsep + ROOT
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # OpenMPI refuses root unless told; CI runs as root.
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_workers(script, args=(), np_=2, controller="gloo", timeout=240, env=None, check=True):
    """Runs tests/scripts/<script> on `np_` ranks (plain python when np_ == 1).

    Returns the CompletedProcess; raises with the output when it fails and
    `check` is set.
    """
    script_path = os.path.join(SCRIPTS, script)
    if np_ == 1:
        cmd = [sys.executable, script_path, *args]
    else:
        cmd = [os.path.join(BIN, "horovodrun"), "-np", str(np_), f"--{controller}",
               sys.executable, script_path, *args]
    proc = subprocess.run(
        cmd, env=env or worker_env(), cwd=SCRIPTS, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}\n"
            f"--- stderr\n{_errors(proc.stderr)}"
        )
    return proc


def _errors(stderr):
    # Keep what explains a failure: tracebacks' last lines and errors, not TF's chatter.
    lines = [line for line in stderr.splitlines() if line.strip() and "oneDNN" not in line
             and "absl::" not in line and "cpu_feature" not in line and "To enable" not in line]
    return "\n".join(lines[-60:])


def load_ranks(out_dir, n):
    return [dict(np.load(os.path.join(out_dir, f"rank{r}.npz"))) for r in range(n)]


def pytest_collection_modifyitems(config, items):
    # GPU tests run where TensorFlow sees a GPU and are skipped, not failed, elsewhere.
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        skip = pytest.mark.skip(reason="no GPU visible to TensorFlow")
        for item in gpu_items:
            item.add_marker(skip)


@pytest.fixture(params=["gloo", "mpi"])
def controller(request):
    return request.param


@pytest.fixture(autouse=True)
def _restore_recommended_env():
    # An in-process hvd_keras.init() (a test's fit) sets the recommended
    # variables in os.environ; later tests must see the environment they set up.
    from hvd_keras.launcher import recommended_env

    keys = set(recommended_env(gpus=True)) | set(recommended_env(gpus=False))
    saved = {k: os.environ.get(k) for k in keys}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
