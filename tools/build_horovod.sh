#!/usr/bin/env bash
# Builds horovod 0.28.1 against the TensorFlow installed in the given venv and
# installs it there. The wheel is cached outside the repository, keyed by the
# horovod, TensorFlow and Python versions, so only the first run pays the
# ~8 minute build on 2 cores.
#
# Why the extra glue: horovod 0.28.1 (its last release) predates TensorFlow
# 2.19, which moved tensorflow/compiler/xla/client/xla_builder.h to
# xla/hlo/builder/xla_builder.h; TensorFlow 2.21's wheel also stopped shipping
# the highwayhash and farmhash headers (Debian's -dev packages provide them).
# A one-line forwarding header on CPLUS_INCLUDE_PATH bridges the move.
set -euo pipefail
VENV=$1
PY=$VENV/bin/python
HVD_VERSION=0.28.1
if "$PY" -c "import horovod.tensorflow" 2>/dev/null; then
  exit 0
fi
key=$("$PY" -c "import sys, tensorflow as tf; print(f'tf{tf.__version__}-py{sys.version_info[0]}{sys.version_info[1]}')" 2>/dev/null)
CACHE=${HVD_KERAS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hvd_keras}/horovod-$HVD_VERSION-$key
wheel=$(ls "$CACHE"/horovod-*.whl 2>/dev/null | head -1 || true)
if [ -z "$wheel" ]; then
  echo "[build_horovod] building horovod $HVD_VERSION against $key (about 8 minutes on 2 cores)"
  shim=$(mktemp -d)
  mkdir -p "$shim/tensorflow/compiler/xla/client"
  echo '#include "xla/hlo/builder/xla_builder.h"' > "$shim/tensorflow/compiler/xla/client/xla_builder.h"
  tmp=$(mktemp -d)
  CPLUS_INCLUDE_PATH="$shim${CPLUS_INCLUDE_PATH:+:$CPLUS_INCLUDE_PATH}" \
  HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_MPI=1 HOROVOD_WITH_GLOO=1 \
  HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
  CMAKE_POLICY_VERSION_MINIMUM=3.5 MAKEFLAGS=-j"$(nproc)" \
  PATH="$VENV/bin:$PATH" \
    "$VENV/bin/pip" wheel -q --no-cache-dir --no-build-isolation --no-deps \
      "horovod==$HVD_VERSION" -w "$tmp"
  mkdir -p "$CACHE"
  # rename last, so an interrupted build never leaves a half-written cache entry
  for f in "$tmp"/horovod-*.whl; do cp "$f" "$CACHE/.partial" && mv "$CACHE/.partial" "$CACHE/$(basename "$f")"; done
  rm -rf "$tmp" "$shim"
  wheel=$(ls "$CACHE"/horovod-*.whl | head -1)
fi
"$VENV/bin/pip" install -q --no-deps "$wheel"
# horovod's runtime dependencies (the wheel was installed with --no-deps)
"$VENV/bin/pip" install -q cloudpickle psutil pyyaml packaging cffi
"$PY" -c "import horovod.tensorflow" 
