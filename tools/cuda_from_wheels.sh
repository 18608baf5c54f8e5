#!/usr/bin/env bash
# Assembles, from PyPI wheels alone, a CUDA toolkit directory that horovod's
# NCCL build can compile with against TensorFlow's CUDA 12 wheels; prints it.
#
# Usage: tools/cuda_from_wheels.sh <venv> <dest>
#
# Why this shape (measured, see README "GPUs"): no CUDA 12 nvcc exists on
# PyPI (nvidia-cuda-nvcc-cu12 12.0 to 12.9 ship ptxas, libnvvm and headers
# only), while the CUDA 13 package nvidia-cuda-nvcc has a full nvcc. So:
#   bin/, nvvm/  nvcc, cudafe++, fatbinary, nvlink, ptxas and cicc of CUDA 13
#                (HVD_KERAS_NVCC_VERSION, default below); copied, not linked:
#                nvcc finds nvcc.profile through its real path;
#   include/     CUDA 12 headers: the venv's nvidia-cuda-runtime-cu12 plus
#                nvidia-cuda-cccl-cu12 of the same minor (cuda_fp16.h needs
#                its nv/target); crt/ and fatbinary_section.h of the CUDA 13
#                compiler (its cudafe++ writes stubs for their macros);
#   lib64/       the venv's CUDA 12 libcudart.
# Kernels built by a CUDA 13 nvcc need an NVIDIA driver that supports CUDA 13
# (>= 580); it cannot target sm_70 (V100).
set -euo pipefail
VENV=$1
DEST=$2
NVCC_VERSION=${HVD_KERAS_NVCC_VERSION:-13.0.88}
SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
CU12=$SITE/nvidia
if [ ! -f "$CU12/cuda_runtime/include/cuda_runtime.h" ]; then
  echo "cuda_from_wheels: $VENV has no nvidia-cuda-runtime-cu12 (TensorFlow's and-cuda extra)." \
       "HINT: install tensorflow[and-cuda] into it first." >&2
  exit 2
fi
runtime=$("$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('nvidia-cuda-runtime-cu12'))")
minor=$(echo "$runtime" | cut -d. -f1,2)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# --no-deps: nvcc's own dependencies are unpinned, and a newer cicc (nvvm)
# emits PTX that this ptxas rejects; its CUDA 13 runtime and crt are not used.
"$VENV/bin/pip" install -q --no-deps --target "$tmp/cu13" "nvidia-cuda-nvcc==$NVCC_VERSION" \
  "nvidia-nvvm==$NVCC_VERSION" "nvidia-cuda-crt==$NVCC_VERSION"
"$VENV/bin/pip" install -q --no-deps --target "$tmp/cccl" "nvidia-cuda-cccl-cu12==$minor.*"

rm -rf "$DEST"
inc=$DEST/targets/x86_64-linux/include
lib=$DEST/targets/x86_64-linux/lib
mkdir -p "$DEST/bin" "$inc" "$lib"
cp -a "$tmp/cu13/nvidia/cu13/bin/." "$DEST/bin/"
cp -a "$tmp/cu13/nvidia/cu13/nvvm" "$DEST/nvvm"
cp -a "$CU12/cuda_runtime/include/." "$inc/"
cccl=$(find "$tmp/cccl" -type d -name include -path '*cuda_cccl*' | head -1)
cp -a "$cccl/." "$inc/"
# crt/ and fatbinary_section.h belong to the compiler: the stubs its
# cudafe++ writes use their macros.
cp -a "$tmp/cu13/nvidia/cu13/include/." "$inc/"
cp -a "$CU12/cuda_runtime/lib/." "$lib/"
so=$(cd "$lib" && ls libcudart.so.* | sort | head -1)
ln -sf "$so" "$lib/libcudart.so"
ln -sfn targets/x86_64-linux/include "$DEST/include"
ln -sfn targets/x86_64-linux/lib "$DEST/lib64"
"$DEST/bin/nvcc" --version >/dev/null
echo "$DEST"
