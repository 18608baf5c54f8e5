"""Installing hvd_keras as a user would, without root: a fresh venv outside the checkout, TensorFlow and Keras of
the default row, `pip install` of the checkout, `hvd-keras build-horovod`, `hvd-keras doctor`, and a 2-rank run of
an example from that venv.

It runs as a user the test creates (so it needs root to start, and skips with the reason elsewhere), with
Debian's Python rather than the one that built the suite's horovod: a second environment of the same cache key.
The horovod build is taken from the cache that `make setup` filled, after proving that this environment computes
the same key; readelf then shows that the reused library searches nothing of the environment that built it.
"""

import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from conftest import ROOT

from hvd_keras import horovod_build

USER = "hvdkeras-user"
PYTHON = "/usr/bin/python3.11"
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists(PYTHON) or not shutil.which("useradd"),
                                reason="needs root (to create the user) and Debian's python3.11")


def _default_row():
    for line in open(os.path.join(ROOT, "tools", "versions.txt")):
        if line.strip() and not line.startswith("#"):
            return line.split()[:2]


def _as_user(workdir, command, env=None, timeout=900):
    base = {"HOME": workdir, "PATH": f"{workdir}/env/bin:/usr/local/bin:/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_FIND_LINKS": os.path.join(workdir, "wheels")}
    # /etc/xdg/pip may cap versions on this machine kind; the user's pip reads it too, as it should.
    proc = subprocess.run(["runuser", "-u", USER, "--", "env", "-i", *(f"{k}={v}" for k, v in {**base, **(env or {})}.items()),
                           "bash", "-c", command], cwd=workdir, capture_output=True, text=True, timeout=timeout)
    return proc


def _ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def workdir():
    if subprocess.run(["id", USER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", USER], check=True)
    path = tempfile.mkdtemp(prefix="hvdkeras-user-")
    os.chmod(path, 0o755)
    # The user's own copy of the checkout (pip builds in the source tree).
    shutil.copytree(ROOT, os.path.join(path, "src"), ignore=shutil.ignore_patterns(
        ".venv*", ".git", "runs", "build", "*.egg-info", "__pycache__", ".pytest_cache"))
    # The wheels root's pip already downloaded: the install goes to PyPI only for what is not among them.
    tf_version, keras_version = _default_row()
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "-d", os.path.join(path, "wheels"),
                    f"tensorflow-cpu=={tf_version}", f"keras=={keras_version}", "scikit-learn"],
                   check=True, capture_output=True, timeout=900)
    user = pwd.getpwnam(USER)
    for root, dirs, files in os.walk(path):
        for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
            os.lchown(name, user.pw_uid, user.pw_gid)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_install_build_doctor_and_train_without_root(workdir):
    tf_version, keras_version = _default_row()
    _ok(_as_user(workdir, f"{PYTHON} -m venv env && env/bin/pip install -q tensorflow-cpu=={tf_version} "
                          f"keras=={keras_version} && env/bin/pip install -q './src[examples]'"))
    site = _ok(_as_user(workdir, "env/bin/python -c 'import sysconfig; print(sysconfig.get_paths()[\"platlib\"])'"))
    site = site.stdout.strip()
    assert site.startswith(workdir)

    # pip did not try to build horovod; the package imports and says what is missing.
    assert not os.path.exists(os.path.join(site, "horovod"))
    proc = _as_user(workdir, "env/bin/python -c 'import hvd_keras; hvd_keras.init()'")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("ImportError: hvd_keras needs horovod 0.28.1 built")
    assert "HINT: run `hvd-keras build-horovod`" in proc.stderr
    proc = _as_user(workdir, "env/bin/hvd-keras doctor")
    assert proc.returncode == 1 and "BLOCKER: horovod is not installed" in proc.stdout, proc.stdout

    # The same key as the suite's own environment (another Python install, another venv).
    mine = subprocess.run([os.path.join(os.path.dirname(sys.executable), "hvd-keras"), "build-horovod", "--cpu",
                           "--dry-run"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    theirs = _ok(_as_user(workdir, "env/bin/hvd-keras build-horovod --cpu --dry-run")).stdout.splitlines()[0]
    assert theirs == mine
    key = mine.split(": ", 1)[1]
    cached = os.path.join(horovod_build.cache_root(), key)
    assert horovod_build.cached_wheel(cached), f"make setup left no build in {cached}"
    user_cache = os.path.join(workdir, "cache")
    shutil.copytree(cached, os.path.join(user_cache, key))
    user = pwd.getpwnam(USER)
    subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", user_cache], check=True)

    built = _ok(_as_user(workdir, "env/bin/hvd-keras build-horovod --cpu", {"HVD_KERAS_CACHE": user_cache}))
    assert "[build-horovod] using the cached build" in built.stdout
    assert f"[build-horovod] installed horovod 0.28.1 (MPI and Gloo) into {site}" in built.stdout

    # The reused library searches nothing of the environment that built it.
    library = [os.path.join(site, "horovod", "tensorflow", n) for n in os.listdir(os.path.join(site, "horovod",
                                                                                          "tensorflow"))
               if n.startswith("mpi_lib") and n.endswith(".so")][0]
    dynamic = subprocess.run(["readelf", "-d", library], capture_output=True, text=True, check=True).stdout
    runpath = re.search(r"Library runpath: \[(.*)\]", dynamic)
    for directory in (runpath.group(1).split(":") if runpath else []):
        assert "site-packages" not in directory and not directory.startswith(sys.prefix), directory

    doctor = _as_user(workdir, "env/bin/hvd-keras doctor")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "controllers MPI, Gloo" in doctor.stdout

    # An example, unedited, on 2 ranks from the user's venv: equal weights on both ranks.
    out = os.path.join(workdir, "out")
    run = _as_user(workdir, f"env/bin/horovodrun -np 2 --gloo env/bin/python src/tests/scripts/example_weights.py "
                            f"{out} src/examples/mlp_digits.py", timeout=600)
    _ok(run)
    assert "FINAL" in run.stdout
    ranks = [np.load(os.path.join(out, f"rank{r}.npz")) for r in (0, 1)]
    assert len(ranks[0].files) == 4
    for name in ranks[0].files:
        np.testing.assert_array_equal(ranks[0][name], ranks[1][name])
