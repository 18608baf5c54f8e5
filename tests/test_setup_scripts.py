"""The set-up scripts' decisions: device detection and the version table.

These run the scripts for real against stand-in tools; the horovod build's
own decisions are tested in test_install.py.
"""

import os
import stat
import subprocess

import pytest
from conftest import ROOT

TOOLS = os.path.join(ROOT, "tools")


def _run(script, env, *args):
    base = {"PATH": env.pop("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root")}
    return subprocess.run(["bash", os.path.join(TOOLS, script), *args], env={**base, **env},
                          capture_output=True, text=True, timeout=60)


def _fake_nvidia_smi(bin_dir, listing):
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / "nvidia-smi"
    path.write_text(f"#!/bin/sh\n[ \"$1\" = -L ] && printf '%s' '{listing}'\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.mark.parametrize("listing,forced,expected", [
    ("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1)\n", None, "gpu"),
    ("", None, "cpu"),
    (None, None, "cpu"),  # no nvidia-smi at all
    ("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1)\n", "cpu", "cpu"),
    (None, "gpu", "gpu"),
])
def test_device_detection(tmp_path, listing, forced, expected):
    if listing is not None:
        _fake_nvidia_smi(tmp_path / "bin", listing)
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"}
    if forced:
        env["HVD_KERAS_DEVICE"] = forced
    proc = _run("detect_device.sh", env)
    assert proc.returncode == 0 and proc.stdout.strip() == expected


def test_bad_device_setting_is_one_line():
    proc = _run("detect_device.sh", {"HVD_KERAS_DEVICE": "tpu"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "HVD_KERAS_DEVICE must be gpu, cpu or auto. Received: HVD_KERAS_DEVICE=tpu. "
        "HINT: unset HVD_KERAS_DEVICE to detect the device."]


def test_unknown_tensorflow_version_is_one_line():
    proc = _run("bootstrap.sh", {"HVD_KERAS_TF": "2.99.0", "HVD_KERAS_DEVICE": "cpu"})
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert "HVD_KERAS_TF=2.99.0 is not in tools/versions.txt" in line and "2.21.0" in line


def test_version_table_rows_are_well_formed():
    rows = [line.split() for line in open(os.path.join(TOOLS, "versions.txt"))
            if line.strip() and not line.startswith("#")]
    assert rows and all(len(r) == 3 for r in rows)
    for tf_version, keras_version, _ in rows:
        assert tf_version.startswith("2.") and keras_version.startswith("3.")
