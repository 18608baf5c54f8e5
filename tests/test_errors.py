"""Bad input gets one line that names the fix, and never a hang."""

import os
import shutil
import subprocess
import sys
import time

import keras
import pytest
from conftest import run_workers, worker_env

import hvd_keras


def _last_line(text):
    return [line for line in text.strip().splitlines() if line.strip()][-1]


def test_jax_backend_is_refused_at_first_use():
    # `import hvd_keras` alone imports no Keras (hvd-keras doctor must run); the first use checks.
    proc = subprocess.run([sys.executable, "-c", "import hvd_keras; hvd_keras.init"], capture_output=True, text=True,
                          env=worker_env(KERAS_BACKEND="jax"), timeout=120)
    assert proc.returncode != 0
    line = _last_line(proc.stderr)
    assert "TensorFlow backend" in line and "backend='jax'" in line and "KERAS_BACKEND=tensorflow" in line


def test_tensorflow_start_up_lines_follow_tf_cpp_min_log_level():
    # TensorFlow 2.21 prints them before absl's logging starts, past its own setting.
    script = "import os; os.write(2, b'mine\\n'); import hvd_keras; hvd_keras.init; os.write(2, b'after\\n')"
    quiet, loud = (subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                                  env=worker_env(TF_CPP_MIN_LOG_LEVEL=level)) for level in ("2", "0"))
    assert quiet.returncode == 0 and quiet.stderr == "mine\nafter\n", quiet.stderr
    assert "mine" in loud.stderr and "after" in loud.stderr


def test_horovod_without_tensorflow_support_is_refused(tmp_path):
    # A horovod install whose TensorFlow extension was not built: the package
    # as installed, without horovod/tensorflow/mpi_lib*.so.
    import horovod

    src = os.path.dirname(horovod.__file__)
    dst = tmp_path / "horovod"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("mpi_lib*.so", "__pycache__"))
    env = worker_env()
    env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{env['PYTHONPATH']}"
    proc = subprocess.run([sys.executable, "-c", "from hvd_keras import init"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode != 0
    line = _last_line(proc.stderr)
    assert "hvd_keras needs horovod 0.28.1 built against this TensorFlow" in line
    assert "HINT: run `hvd-keras build-horovod` in this environment" in line


@pytest.mark.parametrize("bad,error,match", [
    (object(), TypeError, "expects a Keras 3 optimizer"),
    (keras.optimizers.SGD, TypeError, "pass an instance"),
    ("not-an-optimizer", ValueError, "not-an-optimizer"),
])
def test_wrapping_a_non_optimizer(bad, error, match):
    with pytest.raises(error, match=match):
        hvd_keras.DistributedOptimizer(bad)


def test_bad_arguments_name_the_fix():
    with pytest.raises(ValueError, match="op=\"average\""):
        hvd_keras.DistributedOptimizer("sgd", op="mean")
    with pytest.raises(ValueError, match="compression=None"):
        hvd_keras.DistributedOptimizer("sgd", compression="int8")
    with pytest.raises(ValueError, match="backward_passes_per_step"):
        hvd_keras.DistributedOptimizer("sgd", backward_passes_per_step=0)
    wrapped = hvd_keras.DistributedOptimizer("sgd")
    with pytest.raises(ValueError, match="already distributed"):
        hvd_keras.DistributedOptimizer(wrapped)
    built = keras.optimizers.Adam()
    built.build([keras.Variable([1.0])])
    with pytest.raises(ValueError, match="before model.compile"):
        hvd_keras.DistributedOptimizer(built)


def test_wrapped_optimizer_keeps_type_and_config():
    base = keras.optimizers.AdamW(0.003, weight_decay=0.01)
    wrapped = hvd_keras.DistributedOptimizer(base, backward_passes_per_step=2)
    assert isinstance(wrapped, keras.optimizers.AdamW) and wrapped is not base
    assert wrapped.gradient_accumulation_steps == 2
    assert float(wrapped.learning_rate.numpy()) == pytest.approx(0.003)


@pytest.mark.parametrize("where", ["broadcast", "train_step"])
def test_models_that_differ_between_ranks_fail_fast(controller, where):
    start = time.monotonic()
    proc = run_workers("mismatch.py", ["--where", where], controller=controller, timeout=90, check=False)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert elapsed < 60
    out = proc.stdout + proc.stderr
    assert "UNREACHABLE" not in out
    # Horovod's fused allreduce reduced the mismatched gradients without a
    # word (measured): the optimizer's own check must catch it.
    assert "the model differs between ranks: rank 1" in out and "HINT" in out


def test_update_that_bypasses_the_allreduce_is_refused():
    proc = run_workers("bypass.py", [], check=False, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "TRAINED" not in out
    assert "without averaging them across ranks" in out
    single = run_workers("bypass.py", [], np_=1, check=False, timeout=120)
    assert "TRAINED on 1 ranks" in single.stdout  # nothing to average at size 1


def test_a_keras_without_an_internal_is_refused_in_one_line(monkeypatch):
    from keras.src.trainers.trainer import Trainer

    from hvd_keras import _compat

    monkeypatch.delattr(Trainer, "_symbolic_build")
    with pytest.raises(ImportError) as err:
        _compat.check()
    message = str(err.value)
    assert "\n" not in message and "lacks Trainer._symbolic_build" in message
    assert "Supported: TensorFlow 2.16 to 2.21 with Keras 3.0 to 3.15" in message and "HINT" in message


def test_a_crash_while_tensorflow_loads_still_shows_what_it_printed(tmp_path):
    # A stand-in TensorFlow that prints (as a failing native library would) and then aborts the process.
    (tmp_path / "tensorflow").mkdir()
    (tmp_path / "tensorflow" / "__init__.py").write_text(
        "import os\n"
        "os.write(2, b'I0000 00:00:1 port.cc:153] oneDNN custom operations are on.\\n')\n"
        "os.write(2, b'F0000 00:00:1 cpu_feature_guard.cc:1] The TensorFlow library was compiled to use AVX '\n"
        "            b'instructions, but these are not available on your machine.\\n')\n"
        "os.abort()\n")
    env = worker_env(TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{env['PYTHONPATH']}"
    proc = subprocess.run([sys.executable, "-c", "import hvd_keras; hvd_keras.init"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode != 0
    assert "instructions, but these are not available on your machine" in proc.stderr  # it printed nothing before
    assert "oneDNN custom operations" not in proc.stderr  # the level still hides what it asked to hide
