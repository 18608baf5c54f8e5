"""`hvd-keras doctor`: every blocker it names, judged from facts (one process), and real runs that exit 0 and 1."""

import dataclasses
import os
import subprocess
import sys

import pytest

from hvd_keras import doctor

HVD_KERAS = os.path.join(os.path.dirname(sys.executable), "hvd-keras")


def _healthy(**changes):
    facts = doctor.Facts(
        python="3.11.7", executable="/env/bin/python",
        tensorflow={"version": "2.21.0", "cuda": None, "gpus": 0},
        keras={"version": "3.15.1", "backend": "tensorflow"},
        horovod={"version": "0.28.1", "mpi": True, "gloo": True, "nccl": 0, "cuda": False,
                 "build": {"tensorflow": {"version": "2.21.0"}, "cuda": None, "built": "2026-12-06"}},
        nvidia=None, mpi={"vendor": "openmpi", "version": "4.1.4", "mpirun": "/usr/bin/mpirun"},
        launchers={"horovodrun": "/env/bin/horovodrun", "mpirun": "/usr/bin/mpirun", "srun": None})
    return dataclasses.replace(facts, **changes)


def _gpu_node(**changes):
    return _healthy(**{
        "tensorflow": {"version": "2.21.0", "cuda": "12.5.1", "gpus": 8},
        "horovod": {"version": "0.28.1", "mpi": True, "gloo": True, "nccl": 22105, "cuda": True,
                    "build": {"tensorflow": {"version": "2.21.0"}, "cuda": {"version": "12.5"}}},
        "nvidia": {"gpus": ["NVIDIA H100 80GB HBM3"] * 8, "driver": "550.54.15", "cuda": "12.4"}, **changes})


def test_a_healthy_environment_has_no_problem():
    assert doctor.diagnose(_healthy()) == []
    # A GPU node whose driver runs CUDA 12.5 kernels.
    assert doctor.diagnose(_gpu_node(nvidia={"gpus": ["H100"] * 8, "driver": "555.42", "cuda": "12.5"})) == []


# (facts, what the blocker line must say, what its fix must say)
BLOCKERS = {
    "tensorflow missing": (_healthy(tensorflow={"error": "No module named 'tensorflow'"}, horovod=None),
                           "TensorFlow does not import", "pip install 'tensorflow-cpu>=2.16,<2.22'"),
    "tensorflow too new": (_healthy(tensorflow={"version": "2.22.0", "cuda": None, "gpus": 0}),
                           "TensorFlow 2.22.0 is outside the supported 2.16 to 2.21", "hvd-keras build-horovod"),
    "tensorflow too old": (_healthy(tensorflow={"version": "2.15.1", "cuda": None, "gpus": 0}),
                           "TensorFlow 2.15.1 is outside", "tensorflow-cpu==2.21.0"),
    "keras 2": (_healthy(keras={"version": "2.15.0", "backend": "tensorflow"}),
                "Keras 2.15.0 is outside the supported 3.0 to 3.15", "pip install 'keras==3.15.1'"),
    "keras backend": (_healthy(keras={"version": "3.15.1", "backend": "jax", "backend_from": "KERAS_BACKEND"}),
                      "Keras is set to the 'jax' backend (by KERAS_BACKEND)", "export KERAS_BACKEND=tensorflow"),
    "horovod missing": (_healthy(horovod={"missing": True, "error": "No module named 'horovod'"}),
                        "horovod is not installed", "hvd-keras build-horovod"),
    "horovod without tensorflow ops": (
        _healthy(horovod={"version": "0.28.1", "build": None,
                          "error": "Extension horovod.tensorflow has not been built"}),
        "horovod's TensorFlow layer does not load: Extension horovod.tensorflow has not been built",
        "hvd-keras build-horovod"),
    "horovod of another release": (_healthy(horovod={"version": "0.27.0", "mpi": True, "gloo": True, "nccl": 0}),
                                   "horovod 0.27.0 is installed; hvd_keras needs 0.28.1", "hvd-keras build-horovod"),
    "horovod built for another tensorflow": (
        _healthy(horovod={"version": "0.28.1", "mpi": True, "gloo": True, "nccl": 0,
                          "build": {"tensorflow": {"version": "2.20.0"}}}),
        "horovod was built for TensorFlow 2.20.0, but TensorFlow 2.21.0 is installed", "hvd-keras build-horovod"),
    "no controller": (_healthy(horovod={"version": "0.28.1", "mpi": False, "gloo": False, "nccl": 0}),
                      "without a controller", "hvd-keras build-horovod"),
    "gpus without nccl": (_gpu_node(horovod={"version": "0.28.1", "mpi": True, "gloo": True, "nccl": 0}),
                          "horovod was built without NCCL", "hvd-keras build-horovod --gpu"),
    "gpus tensorflow cannot see": (_gpu_node(tensorflow={"version": "2.21.0", "cuda": None, "gpus": 0}),
                                   "nvidia-smi lists 8 GPU(s) but TensorFlow sees none (a CPU-only TensorFlow)",
                                   "pip install 'tensorflow[and-cuda]==2.21.0'"),
    "driver older than tensorflow's cuda": (
        _gpu_node(nvidia={"gpus": ["A100"], "driver": "470.82", "cuda": "11.4"}),
        "the NVIDIA driver 470.82 supports CUDA 11.4, but TensorFlow needs CUDA 12.5.1", "update the NVIDIA driver"),
    "driver older than horovod's kernels": (
        _gpu_node(horovod={"version": "0.28.1", "mpi": True, "gloo": True, "nccl": 22105,
                           "build": {"tensorflow": {"version": "2.21.0"}, "cuda": {"version": "13.0"}}},
                  nvidia={"gpus": ["H100"], "driver": "555.42", "cuda": "12.5"}),
        "but horovod's kernels needs CUDA 13.0", "module load cuda"),
    "python too old": (_healthy(python="3.10.12"), "hvd_keras needs Python 3.11 or newer", "python3.11"),
    "a crash while importing": (_healthy(crashed="importing tensorflow killed the process (signal 4; last line: )",
                                         tensorflow=None, keras=None, horovod=None),
                                "Python crashed: importing tensorflow killed the process (signal 4", "reinstall"),
}


@pytest.mark.parametrize("name", sorted(BLOCKERS))
def test_each_blocker_is_one_line_with_its_fix(name):
    facts, says, fix = BLOCKERS[name]
    findings = doctor.diagnose(facts)
    blockers = [f for f in findings if f.blocker]
    assert blockers, findings
    assert any(says in f.message and fix in f.fix for f in blockers), blockers
    line = next(line for line in doctor.render(facts, findings).splitlines() if says in line)
    assert line.startswith("BLOCKER: ") and " HINT: " in line


def test_warnings_do_not_block():
    gloo_only = _healthy(horovod={"version": "0.28.1", "mpi": False, "gloo": True, "nccl": 0,
                                  "build": {"tensorflow": {"version": "2.21.0"}}}, mpi=None)
    findings = doctor.diagnose(gloo_only)
    assert findings and not any(f.blocker for f in findings)
    assert any("only Gloo" in f.message for f in findings)
    newer_python = doctor.diagnose(_healthy(python="3.12.3"))
    assert [f.blocker for f in newer_python] == [False]


def test_render_shows_every_section():
    text = doctor.render(_gpu_node(), [])
    for label in ("hvd_keras", "python", "tensorflow", "keras", "horovod", "gpus", "mpi", "launchers", "slurm",
                  "settings"):
        assert any(line.startswith(label + " ") for line in text.splitlines()), label
    assert "tensor operations NCCL 2.21.5" in text and "kernels CUDA 12.5" in text
    assert "HOROVOD_CYCLE_TIME=1 (hvd_keras sets it)" in text  # the GPU settings on a GPU node
    assert text.endswith("no problems found.")


def _doctor(env_changes, timeout=300):
    env = dict(os.environ, **env_changes)
    return subprocess.run([HVD_KERAS, "doctor"], capture_output=True, text=True, timeout=timeout, env=env)


def test_doctor_passes_in_this_environment():
    proc = _doctor({})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no problems found." in proc.stdout or "BLOCKER" not in proc.stdout
    assert "horovod     0.28.1: controllers MPI, Gloo" in proc.stdout
    assert "built by hvd-keras build-horovod" in proc.stdout


def test_doctor_blocks_on_a_real_wrong_backend():
    proc = _doctor({"KERAS_BACKEND": "jax"})
    assert proc.returncode == 1
    blockers = [line for line in proc.stdout.splitlines() if line.startswith("BLOCKER")]
    assert blockers and "backend" in blockers[0] and "KERAS_BACKEND=tensorflow" in blockers[0]


def test_doctor_blocks_on_a_real_missing_horovod(tmp_path):
    # A horovod package that is not there: a directory earlier on the path
    # whose horovod/ fails to import, as an uninstalled one would.
    (tmp_path / "horovod").mkdir()
    (tmp_path / "horovod" / "__init__.py").write_text("raise ImportError('No module named horovod (test)')\n")
    proc = _doctor({"PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 1
    assert "BLOCKER: horovod is not installed" in proc.stdout and "HINT: hvd-keras build-horovod" in proc.stdout
