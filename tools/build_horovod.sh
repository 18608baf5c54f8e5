#!/usr/bin/env bash
# Builds horovod 0.28.1 against the TensorFlow installed in a venv and
# installs it there.
#
# Usage: tools/build_horovod.sh <venv> [cpu|gpu]
#   cpu: MPI and Gloo controllers.
#   gpu: the same plus CUDA and NCCL (HOROVOD_GPU_OPERATIONS=NCCL), linked
#        against the venv's nvidia-nccl-cu12 wheel; needs a CUDA toolkit
#        (tools/find_cuda.sh), or HVD_KERAS_CUDA_FROM_WHEELS=1 to assemble
#        one from PyPI (tools/cuda_from_wheels.sh).
#
# The wheel is cached outside the repository, keyed by horovod, TensorFlow,
# Python and the device, so only the first run pays the build (3 to 8 minutes
# on 2 cores). Set HVD_KERAS_CACHE to move the cache.
#
# Why the glue: horovod 0.28.1 (its last release) predates TensorFlow 2.19.
# Each piece below is applied only when the installed TensorFlow needs it,
# found by looking at its headers and library, never by version number:
# - TensorFlow 2.19 moved tensorflow/compiler/xla/client/xla_builder.h to
#   xla/hlo/builder/xla_builder.h: a forwarding header on CPLUS_INCLUDE_PATH.
#   Only horovod/tensorflow/xla_mpi_ops.cc includes it, so the two GPU-only
#   fixes below live in the same header:
# - XLA removed xla::StatusOr (used by the GPU part of xla_mpi_ops.cc): an
#   alias template to absl::StatusOr.
# - TensorFlow 2.21 no longer exports stream_executor::gpu::AsGpuStreamValue,
#   which mpi_ops.cc declares and calls to get TensorFlow's CUDA stream: it is
#   defined as the cudaStream_t that the Stream hands out.
# - TensorFlow 2.21's wheel stopped shipping the highwayhash and farmhash
#   headers: Debian's -dev packages (tools/bootstrap.sh installs them).
# - TensorFlow 2.19's xla/stream_executor/gpu/tma_metadata.h (reached from
#   xla_op_kernel.h, which xla_mpi_ops.cc includes) includes LLVM's ArrayRef.h
#   and SmallVector.h, which its wheel does not ship (2.20 moved to absl):
#   two stand-ins that only declare llvm::ArrayRef and llvm::SmallVector,
#   next to the forwarding header on CPLUS_INCLUDE_PATH. horovod never uses
#   the class that needs them (TmaDescriptor), so nothing of them ends up in
#   horovod; they only let the header parse.
set -euo pipefail
VENV=$1
DEVICE=${2:-cpu}
PY=$VENV/bin/python
HVD_VERSION=0.28.1
here=$(cd "$(dirname "$0")" && pwd)

built_for() {
  # Prints "gpu" for an importable horovod with NCCL, "cpu" for one without, "" for none.
  "$PY" -c "import horovod.tensorflow as h; print('gpu' if h.nccl_built() else 'cpu')" 2>/dev/null || true
}
[ "$(built_for)" = "$DEVICE" ] && exit 0

key=$("$PY" -c "import sys, tensorflow as tf; print(f'tf{tf.__version__}-py{sys.version_info[0]}{sys.version_info[1]}')" 2>/dev/null)
[ "$DEVICE" = gpu ] && key="$key-nccl"
CACHE=${HVD_KERAS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hvd_keras}/horovod-$HVD_VERSION-$key
wheel=$(ls "$CACHE"/horovod-*.whl 2>/dev/null | head -1 || true)
[ -n "$wheel" ] && echo "[build_horovod] using the cached build $wheel"
if [ -z "$wheel" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  TF_INC=$("$PY" -c "import tensorflow as tf; print(tf.sysconfig.get_include())")
  TF_LIB=$("$PY" -c "import tensorflow as tf; print(tf.sysconfig.get_lib())")
  shim=$tmp/shim
  flags=(HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_MPI=1 HOROVOD_WITH_GLOO=1
         HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1
         CMAKE_POLICY_VERSION_MINIMUM=3.5 MAKEFLAGS=-j"$(nproc)")
  glue=()
  if [ ! -f "$TF_INC/tensorflow/compiler/xla/client/xla_builder.h" ]; then
    mkdir -p "$shim/tensorflow/compiler/xla/client"
    header=$shim/tensorflow/compiler/xla/client/xla_builder.h
    echo '#include "xla/hlo/builder/xla_builder.h"' > "$header"
    glue+=(xla_builder.h)
    if [ "$DEVICE" = gpu ]; then
      if ! grep -rqs "StatusOr" "$TF_INC/xla/statusor.h" "$TF_INC/tensorflow/compiler/xla/statusor.h"; then
        cat >> "$header" <<'EOF'
#include "absl/status/statusor.h"
namespace xla {
template <typename T>
using StatusOr = absl::StatusOr<T>;
}  // namespace xla
EOF
        glue+=(xla::StatusOr)
      fi
      if ! nm -D --defined-only "$TF_LIB"/libtensorflow_framework.so* 2>/dev/null | grep -q AsGpuStreamValue; then
        cat >> "$header" <<'EOF'
#if HAVE_CUDA
#include <cuda_runtime.h>
#include "xla/stream_executor/stream.h"
namespace stream_executor {
namespace gpu {
// The CUDA stream of a TensorFlow GPU stream, as TensorFlow <= 2.20 exported it.
cudaStream_t AsGpuStreamValue(Stream* stream) {
  return static_cast<cudaStream_t>(stream->platform_specific_handle().stream);
}
}  // namespace gpu
}  // namespace stream_executor
#endif
EOF
        glue+=(AsGpuStreamValue)
      fi
    fi
  fi
  tma=$TF_INC/xla/stream_executor/gpu/tma_metadata.h
  if grep -qs '#include "llvm/ADT/ArrayRef.h"' "$tma" && [ ! -f "$TF_INC/llvm/ADT/ArrayRef.h" ]; then
    mkdir -p "$shim/llvm/ADT"
    cat > "$shim/llvm/ADT/ArrayRef.h" <<'EOF'
// Stand-in for LLVM's ArrayRef.h: enough for TensorFlow 2.19's tma_metadata.h to parse.
#pragma once
#include <cstddef>
#include <initializer_list>
namespace llvm {
template <typename T>
class ArrayRef {
 public:
  ArrayRef() = default;
  ArrayRef(const T* data, size_t size) : data_(data), size_(size) {}
  ArrayRef(std::initializer_list<T> list) : data_(list.begin()), size_(list.size()) {}
  template <typename C>
  ArrayRef(const C& c) : data_(c.data()), size_(c.size()) {}
  const T* data() const { return data_; }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  const T* begin() const { return data_; }
  const T* end() const { return data_ + size_; }
  const T& operator[](size_t i) const { return data_[i]; }

 private:
  const T* data_ = nullptr;
  size_t size_ = 0;
};
}  // namespace llvm
EOF
    cat > "$shim/llvm/ADT/SmallVector.h" <<'EOF'
// Stand-in for LLVM's SmallVector.h: enough for TensorFlow 2.19's tma_metadata.h to parse.
#pragma once
#include <vector>
namespace llvm {
template <typename T, unsigned N = 0>
class SmallVector : public std::vector<T> {
 public:
  using std::vector<T>::vector;
};
}  // namespace llvm
EOF
    glue+=(llvm/ADT)
  fi
  if [ "$DEVICE" = gpu ]; then
    if [ "${HVD_KERAS_CUDA_FROM_WHEELS:-0}" = 1 ]; then
      cuda_home=$(bash "$here/cuda_from_wheels.sh" "$VENV" "$tmp/cuda")
    else
      cuda_home=$(bash "$here/find_cuda.sh") || exit 2
    fi
    nccl=$("$PY" -c "import nvidia.nccl as n; print(list(n.__path__)[0])" 2>/dev/null) || {
      echo "[build_horovod] error: no nvidia-nccl-cu12 in $VENV. HINT: install tensorflow[and-cuda] first." >&2; exit 2; }
    # The wheel ships libnccl.so.2 only; cmake's find_library needs the
    # unversioned name. The link lives in the venv, so the library's RUNPATH
    # (pointing here) stays valid after the build.
    [ -e "$nccl/lib/libnccl.so" ] || ln -s libnccl.so.2 "$nccl/lib/libnccl.so"
    flags+=(HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_CUDA_HOME="$cuda_home"
            HOROVOD_NCCL_INCLUDE="$nccl/include" HOROVOD_NCCL_LIB="$nccl/lib" HOROVOD_NCCL_LINK=SHARED)
    toolkit=$("$cuda_home/bin/nvcc" --version | grep -o 'release [0-9.]*' | cut -d' ' -f2)
    tf_cuda=$("$PY" -c "import tensorflow as tf; print(tf.sysconfig.get_build_info().get('cuda_version', '?'))")
    echo "[build_horovod] CUDA toolkit: $cuda_home (CUDA $toolkit; TensorFlow was built with CUDA $tf_cuda)"
    if [ "${toolkit%%.*}" != "${tf_cuda%%.*}" ]; then
      echo "[build_horovod] note: horovod's kernels will be CUDA $toolkit code: the NVIDIA driver must" \
           "support CUDA $toolkit (CUDA 13: driver >= 580)."
    fi
  fi
  echo "[build_horovod] building horovod $HVD_VERSION against $key (3 to 8 minutes on 2 cores);" \
       "glue: ${glue[*]:-none}"
  started=$SECONDS
  env "${flags[@]}" \
    CPLUS_INCLUDE_PATH="$shim${CPLUS_INCLUDE_PATH:+:$CPLUS_INCLUDE_PATH}" \
    PATH="$VENV/bin:$PATH" \
    "$VENV/bin/pip" wheel -q --no-cache-dir --no-build-isolation --no-deps \
      "horovod==$HVD_VERSION" -w "$tmp/wheel"
  echo "[build_horovod] built horovod $HVD_VERSION against $key in $((SECONDS - started)) s"
  mkdir -p "$CACHE"
  # rename last, so an interrupted build never leaves a half-written cache entry
  for f in "$tmp"/wheel/horovod-*.whl; do cp "$f" "$CACHE/.partial" && mv "$CACHE/.partial" "$CACHE/$(basename "$f")"; done
  wheel=$(ls "$CACHE"/horovod-*.whl | head -1)
fi
"$VENV/bin/pip" install -q --no-deps --force-reinstall "$wheel"
# horovod's runtime dependencies (the wheel was installed with --no-deps)
"$VENV/bin/pip" install -q cloudpickle psutil pyyaml packaging cffi
if [ "$(built_for)" != "$DEVICE" ]; then
  "$PY" -c "import horovod.tensorflow" || true
  echo "[build_horovod] error: the installed horovod is not the $DEVICE build (cache: $CACHE)." \
       "HINT: delete that cache directory and run again." >&2
  exit 2
fi
