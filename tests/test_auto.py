"""import hvd_keras.auto: plain Keras scripts run distributed with one line."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, load_ranks, run_workers, worker_env

EXAMPLES = os.path.join(ROOT, "examples")


def _final(stdout, rank=None):
    lines = [line for line in stdout.splitlines() if "FINAL " in line
             and (rank is None or line.startswith(f"[{rank}]"))]
    assert lines, stdout[-3000:]
    return json.loads(lines[-1].split("FINAL ", 1)[1])


def _run_example(name, distributed, tmp_path, auto=True):
    script = os.path.join(EXAMPLES, name)
    args = [str(tmp_path / "out")] if name == "cnn_digits.py" else []
    env = worker_env()
    if distributed:
        cmd = [os.path.join(os.path.dirname(sys.executable), "horovodrun"), "-np", "2", "--gloo",
               sys.executable, "-m", "hvd_keras.auto", script, *args]
    else:
        cmd = [sys.executable, *(["-m", "hvd_keras.auto"] if auto else []), script, *args]
    proc = subprocess.run(cmd, env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


# Tolerances: 2 ranks see the same samples per epoch in larger global batches
# (hence fewer, larger steps), so the final metrics are close, not equal.
@pytest.mark.parametrize("name,keys,tolerance", [
    ("mlp_digits.py", ["accuracy"], 0.04),
    ("cnn_digits.py", ["accuracy"], 0.08),
    ("subclassed_imbalanced.py", ["f1", "precision_0", "recall_0", "recall_2"], 0.06),
])
def test_examples_distributed_match_single_process(tmp_path, name, keys, tolerance):
    single = _final(_run_example(name, False, tmp_path, auto=False))
    out = _run_example(name, True, tmp_path)
    r0, r1 = _final(out, 0), _final(out, 1)
    assert r0 == r1  # evaluation results are equal on every rank
    for k in keys:
        np.testing.assert_allclose(r0[k], single[k], atol=tolerance, err_msg=k)
    assert r0["loss"] < 2 * single["loss"] + 0.05


def test_single_process_with_the_import_is_exactly_plain_keras(tmp_path):
    plain = _final(_run_example("mlp_digits.py", False, tmp_path, auto=False))
    wrapped = _final(_run_example("mlp_digits.py", False, tmp_path, auto=True))
    assert wrapped == plain


@pytest.mark.parametrize("kind", ["numpy", "pydataset"])
def test_each_sample_once_per_epoch_and_only_rank0_writes(tmp_path, kind):
    work, out = tmp_path / "work", tmp_path / "res"
    run_workers("auto_count.py", ["--work", str(work), "--out", str(out), "--kind", kind])
    r0, r1 = load_ranks(str(out), 2)
    total = r0["counts"] + r1["counts"]
    # 3 epochs; the remainder is sample 100 (arrays) or the last batch of 8, samples 96-100 (PyDataset)
    kept = 100 if kind == "numpy" else 96
    assert np.all(total[:kept] == 3) and np.all(total[kept:] == 0)
    np.testing.assert_array_equal(r0["val_loss"], r1["val_loss"])  # validation sharded, exact
    assert np.all((r0["counts"] == 0) | (r1["counts"] == 0))  # disjoint shards
    assert sorted(os.listdir(work / "rank0")) == ["ckpt.keras", "log.csv", "model.keras", "model.weights.h5"]
    assert os.listdir(work / "rank1") == []
    assert float(r0["accuracy"]) == float(r1["accuracy"]) and float(r0["loss"]) == float(r1["loss"])


def test_compile_before_import_is_refused(tmp_path):
    proc = run_workers("auto_after_compile.py", [], check=False, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "UNREACHABLE" not in out
    assert "compiled before `import hvd_keras.auto`" in out and "HINT" in out


@pytest.mark.parametrize("env,match", [
    ({"KERAS_BACKEND": "jax"}, "KERAS_BACKEND=tensorflow"),
    ({"HVD_KERAS_LR_SCALING": "cubic"}, "HVD_KERAS_LR_SCALING must be one of linear, sqrt, none"),
    ({"HVD_KERAS_WARMUP_EPOCHS": "-2"}, "HVD_KERAS_WARMUP_EPOCHS must be a number >= 0"),
    ({"HVD_KERAS_EXACT_METRICS": "yes"}, "HVD_KERAS_EXACT_METRICS must be 1 or 0"),
])
def test_bad_settings_get_one_line(env, match):
    proc = subprocess.run([sys.executable, "-c", "import hvd_keras.auto"], capture_output=True, text=True,
                          env=worker_env(**env), timeout=120)
    assert proc.returncode != 0
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    assert match in last and "HINT" in last


def test_describe_lists_patches_and_settings():
    code = "import hvd_keras.auto as a; a.describe()"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=worker_env(HVD_KERAS_LR_SCALING="sqrt"), timeout=120)
    assert "keras.Model.compile" in proc.stdout and "keras.Model.fit" in proc.stdout
    assert "HVD_KERAS_LR_SCALING=sqrt" in proc.stdout and "HVD_KERAS_WARMUP_EPOCHS=0.0 (default)" in proc.stdout


def test_compile_twice_scales_once_and_rank_zero_reloads_alone(tmp_path):
    out = tmp_path / "res"
    run_workers("auto_reload.py", ["--out", str(out)], timeout=180)
    r0, r1 = load_ranks(str(out), 2)
    for r in (r0, r1):
        # The caller's optimizer is untouched; each compile scales its own copy by size() = 2.
        assert float(r["caller_rate"]) == pytest.approx(0.05)
        assert float(r["first_rate"]) == float(r["second_rate"]) == pytest.approx(0.1)
    for fmt in ("keras", "h5"):
        assert float(r0[f"reloaded_{fmt}"]) == pytest.approx(float(r0["trained"]), rel=1e-6)
