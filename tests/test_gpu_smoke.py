"""`make check-gpu`'s smoke check where no GPU is: it skips in one line, and its worker's check holds on CPU."""

import subprocess
import sys

from conftest import ROOT, load_ranks, run_workers, worker_env


def test_gpu_smoke_check_skips_in_one_line_without_a_gpu():
    proc = subprocess.run(["bash", "tools/check_gpu.sh"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**worker_env(), "PYTHON": sys.executable})
    assert proc.returncode == 0
    assert proc.stdout.strip().splitlines() == [
        "[check_gpu] no GPU visible to TensorFlow: nothing to check here (run it on a GPU node)"]


def test_gpu_smoke_allreduce_runs_exact_on_cpu(tmp_path, controller):
    # The worker of make check-gpu, on CPU tensors: the same check without CUDA streams.
    run_workers("gpu_smoke.py", ["--out", str(tmp_path)], controller=controller)
    assert all(bool(r["exact"]) for r in load_ranks(str(tmp_path), 2))
