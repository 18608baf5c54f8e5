#!/usr/bin/env bash
# Checks a GPU (NCCL) build of horovod in a venv: CUDA and NCCL are built in,
# horovodrun lists them, and 2 ranks still train to identical weights on CPU
# tensors through Gloo and MPI (a GPU build must not break the CPU path).
#
# Usage: tools/check_gpu_build.sh <venv>
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=$(cd "$1" && pwd)
PY=$VENV/bin/python
export TF_CPP_MIN_LOG_LEVEL=3 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
"$PY" - <<'EOF'
import horovod.tensorflow as hvd
built = {"cuda": hvd.cuda_built(), "nccl": hvd.nccl_built(), "mpi": hvd.mpi_built(), "gloo": hvd.gloo_built()}
print("[check_gpu_build] horovod", built)
assert all(built.values()), built
EOF
"$VENV/bin/horovodrun" --check-build | sed -n '/Available Tensor Operations/,$p'
# The NCCL of the venv's nvidia-nccl wheel is found relative to the library,
# not through a path into this venv (a cached build serves any venv of its key).
lib=$(ls "$VENV"/lib/python3*/site-packages/horovod/tensorflow/mpi_lib*.so)
runpath=$(readelf -d "$lib" | sed -n 's/.*Library runpath: \[\(.*\)\]/\1/p')
echo "[check_gpu_build] RUNPATH: $runpath"
case ":$runpath:" in *":\$ORIGIN/../../nvidia/nccl/lib:"*) ;; *) echo "[check_gpu_build] no \$ORIGIN NCCL entry" >&2; exit 1 ;; esac
case "$runpath" in *"$VENV"*|*site-packages*) echo "[check_gpu_build] RUNPATH points into an environment" >&2; exit 1 ;; esac
"$VENV/bin/horovodrun" --check-build | grep -q '\[X\] NCCL'
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for controller in gloo mpi; do
  (cd tests/scripts && PYTHONPATH=$PWD:$OLDPWD "$VENV/bin/horovodrun" -np 2 --$controller "$PY" \
    train_equivalence.py --out "$out/$controller" --optimizer adam) >"$out/log" 2>&1 \
    || { tail -30 "$out/log"; exit 1; }
  "$PY" -c "
import numpy as np, sys
a, b = (np.load(f'$out/$controller/rank{r}.npz') for r in (0, 1))
assert (a['weights'] == b['weights']).all() and int(a['iterations']) == 6
print('[check_gpu_build] $controller: 2 ranks trained to identical weights')"
done
echo "[check_gpu_build] OK: horovod with CUDA and NCCL; CPU training through Gloo and MPI works"
