#!/usr/bin/env bash
# Prints the CUDA toolkit directory that the GPU build of horovod compiles with.
#
# horovod compiles CUDA kernels of its own, so its NCCL build needs nvcc and
# the CUDA headers: a directory with bin/nvcc and include/cuda_runtime.h.
# Looked for, in order: HOROVOD_CUDA_HOME (horovod's own variable; an invalid
# one is an error, not skipped), CUDA_HOME, CUDA_PATH, the toolkit of the nvcc
# on PATH, /usr/local/cuda (HVD_KERAS_CUDA_DEFAULT overrides this last
# place). Exits 2 with one line naming the fixes when none
# is found. (TensorFlow's pip CUDA wheels have the headers and libraries but
# no nvcc: tools/cuda_from_wheels.sh assembles a toolkit from PyPI instead.)
set -euo pipefail

is_toolkit() { [ -n "$1" ] && [ -x "$1/bin/nvcc" ] && [ -f "$1/include/cuda_runtime.h" ]; }

if [ -n "${HOROVOD_CUDA_HOME:-}" ]; then
  if is_toolkit "$HOROVOD_CUDA_HOME"; then echo "$HOROVOD_CUDA_HOME"; exit 0; fi
  echo "HOROVOD_CUDA_HOME is not a CUDA toolkit. Received: HOROVOD_CUDA_HOME=$HOROVOD_CUDA_HOME" \
       "(expected bin/nvcc and include/cuda_runtime.h under it). HINT: point it at the toolkit's" \
       "top directory, e.g. /usr/local/cuda-12.5." >&2
  exit 2
fi
candidates=("${CUDA_HOME:-}" "${CUDA_PATH:-}")
if command -v nvcc >/dev/null 2>&1; then
  nvcc_path=$(readlink -f "$(command -v nvcc)")
  candidates+=("$(dirname "$(dirname "$nvcc_path")")")
fi
candidates+=("${HVD_KERAS_CUDA_DEFAULT:-/usr/local/cuda}")
for dir in "${candidates[@]}"; do
  if is_toolkit "$dir"; then echo "$dir"; exit 0; fi
done
echo "hvd_keras: no CUDA toolkit found for the NCCL build of horovod (it compiles CUDA kernels" \
     "with nvcc; looked at HOROVOD_CUDA_HOME, CUDA_HOME, CUDA_PATH, the nvcc on PATH and" \
     "/usr/local/cuda). HINT: \`module load cuda\` or set HOROVOD_CUDA_HOME=/path/to/cuda-12.x;" \
     "or set HVD_KERAS_CUDA_FROM_WHEELS=1 to build with PyPI's CUDA 13 nvcc (needs NVIDIA driver" \
     ">= 580); or HVD_KERAS_DEVICE=cpu for a CPU-only install." >&2
exit 2
