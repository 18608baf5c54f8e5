#!/usr/bin/env bash
# One-minute GPU smoke check, wherever a GPU is visible (make check-gpu): on
# min(GPUs, 2) ranks, one GPU each,
#   1. an exact allreduce right after a long kernel (tests/scripts/gpu_smoke.py),
#   2. a 2-rank split-XLA train step (jit_compile=True) with equal weights on
#      both ranks and equal to one process (tests/scripts/train_equivalence.py),
#   3. NCCL in use: horovod built with it, and NCCL's own INFO lines in the log.
# Without a GPU it says so in one line and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
BIN=$(dirname "$PY")
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2} OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
gpus=$("$PY" -c "import tensorflow as tf; print(len(tf.config.list_physical_devices('GPU')))" 2>/dev/null || echo 0)
if [ "$gpus" -lt 1 ]; then
  echo "[check_gpu] no GPU visible to TensorFlow: nothing to check here (run it on a GPU node)"
  exit 0
fi
np=$(( gpus < 2 ? gpus : 2 ))
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
run() { (cd tests/scripts && PYTHONPATH=$PWD:$OLDPWD "$@"); }
log=$out/smoke.log
run env NCCL_DEBUG=INFO "$BIN/horovodrun" -np "$np" "$PY" gpu_smoke.py --out "$out/smoke" >"$log" 2>&1 \
  || { tail -40 "$log"; echo "[check_gpu] FAILED: the allreduce after a long kernel"; exit 1; }
grep "allreduce after a long kernel" "$log" | sed 's/^/[check_gpu] /'
if [ "$np" -gt 1 ]; then
  grep -q "NCCL INFO" "$log" || { echo "[check_gpu] FAILED: no NCCL INFO line: the allreduce did not go through NCCL"; exit 1; }
  echo "[check_gpu] NCCL in use: $(grep -m1 -o 'NCCL version [0-9.+a-z]*' "$log" || echo 'NCCL INFO lines seen')"
  run "$PY" train_equivalence.py --out "$out/one" --jit yes --optimizer adam >/dev/null 2>&1
  run "$BIN/horovodrun" -np 2 "$PY" train_equivalence.py --out "$out/two" --jit yes --optimizer adam \
    >"$out/xla.log" 2>&1 || { tail -40 "$out/xla.log"; echo "[check_gpu] FAILED: the split XLA step"; exit 1; }
  "$PY" - "$out" <<'PYEOF'
import sys, numpy as np
out = sys.argv[1]
one = np.load(f"{out}/one/rank0.npz"); a, b = (np.load(f"{out}/two/rank{r}.npz") for r in (0, 1))
assert bool(a["xla_split"]), "the XLA step was not split around the allreduce"
assert (a["weights"] == b["weights"]).all(), "the ranks' weights differ"
gap = float(np.abs(a["weights"] - one["weights"]).max())
assert gap < 1e-4, f"2 ranks differ from 1 process by {gap}"
print(f"[check_gpu] split XLA step on 2 GPUs: equal weights, {gap:.1e} from one process")
PYEOF
else
  echo "[check_gpu] one GPU: the 2-rank NCCL and XLA checks need two"
fi
echo "[check_gpu] OK"
