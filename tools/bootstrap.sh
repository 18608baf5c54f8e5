#!/usr/bin/env bash
# Installs everything hvd_keras needs on a fresh Debian machine (run as root):
# system packages, a virtual environment, TensorFlow and Keras from
# tools/versions.txt, and horovod built from source against that TensorFlow.
# Idempotent: a second run only checks.
#
# Usage: tools/bootstrap.sh [--with-slurm]
# Environment:
#   HVD_KERAS_DEVICE=auto|gpu|cpu  gpu: tensorflow[and-cuda] and horovod with NCCL;
#                                  auto (default): gpu when nvidia-smi lists a GPU
#   HVD_KERAS_TF=2.18.1            a row of tools/versions.txt (default: its first row)
#   HVD_KERAS_KERAS=3.15.1         overrides that row's Keras (default: the row's); the
#                                  extra constraints come from the row with both versions
#                                  if there is one, else from the TensorFlow's row
#   HVD_KERAS_VENV=dir             the virtual environment (default: .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${HVD_KERAS_VENV:-$ROOT/.venv}
case "$VENV" in /*) ;; *) VENV=$ROOT/$VENV ;; esac
PY=${PYTHON:-python3}
WITH_SLURM=0
[ "${1:-}" = "--with-slurm" ] && WITH_SLURM=1

log() { echo "[bootstrap] $*"; }
die() { echo "[bootstrap] error: $*" >&2; exit 2; }

# --- what to install -------------------------------------------------------
DEVICE=$(bash tools/detect_device.sh) || exit 2
row=$(awk -v tf="${HVD_KERAS_TF:-}" '!/^#/ && NF >= 2 && (tf == "" || $1 == tf) { print; exit }' tools/versions.txt)
if [ -z "$row" ]; then
  die "HVD_KERAS_TF=${HVD_KERAS_TF} is not in tools/versions.txt. Received: HVD_KERAS_TF=${HVD_KERAS_TF}." \
      "HINT: use one of: $(awk '!/^#/ && NF >= 2 && !seen[$1]++ { printf "%s ", $1 }' tools/versions.txt)"
fi
read -r TF_VERSION KERAS_VERSION EXTRA <<<"$row"
if [ -n "${HVD_KERAS_KERAS:-}" ]; then
  [[ "$HVD_KERAS_KERAS" =~ ^3\.[0-9]+\.[0-9]+$ ]] ||
    die "HVD_KERAS_KERAS must be a Keras 3 release such as 3.15.1. Received: HVD_KERAS_KERAS=${HVD_KERAS_KERAS}." \
        "HINT: unset HVD_KERAS_KERAS to use the Keras of tools/versions.txt."
  both=$(awk -v tf="$TF_VERSION" -v k="$HVD_KERAS_KERAS" '!/^#/ && NF >= 2 && $1 == tf && $2 == k { print; exit }' tools/versions.txt)
  [ -n "$both" ] && read -r TF_VERSION KERAS_VERSION EXTRA <<<"$both"
  KERAS_VERSION=$HVD_KERAS_KERAS
fi
if [ "$DEVICE" = gpu ]; then
  TF_PKG=tensorflow TF_REQ="tensorflow[and-cuda]"
else
  TF_PKG=tensorflow-cpu TF_REQ=tensorflow-cpu
fi

# --- system packages -------------------------------------------------------
# openmpi: MPI controller and mpirun; cmake, g++, make: horovod's build
# (hvd-keras build-horovod needs no other system package).
APT_PKGS="openmpi-bin libopenmpi-dev cmake g++ make"
# The tests' Slurm, and their hosts: network namespaces (iproute2) with sshd.
[ "$WITH_SLURM" = 1 ] && APT_PKGS="$APT_PKGS slurm-wlm munge iproute2 openssh-server openssh-client"
missing=""
for p in $APT_PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  log "apt-get install$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# --- virtual environment ---------------------------------------------------
# A venv holds one TensorFlow for one device; asking for another starts afresh.
FLAVOUR="tf$TF_VERSION-keras$KERAS_VERSION-$DEVICE"
if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.hvd_keras-flavour" 2>/dev/null)" != "$FLAVOUR" ]; then
  log "$VENV holds $(cat "$VENV/.hvd_keras-flavour" 2>/dev/null || echo 'another install'); recreating it for $FLAVOUR"
  rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV for $FLAVOUR"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip wheel setuptools
  echo "$FLAVOUR" > "$VENV/.hvd_keras-flavour"
fi
PIP="$VENV/bin/pip"
CONSTRAINTS=$VENV/hvd_keras-constraints.txt
{
  echo "$TF_PKG==$TF_VERSION"
  echo "keras==$KERAS_VERSION"
  echo "horovod==0.28.1"
  [ "${EXTRA:--}" != "-" ] && echo "$EXTRA" | tr ',' '\n'
  true
} > "$CONSTRAINTS"
STAMP=$VENV/.hvd_keras-deps
want="$(find hvd_keras/horovod_glue -type f | sort | xargs cat "$CONSTRAINTS" setup.cfg tools/bootstrap.sh \
        hvd_keras/horovod_build.py | sha256sum | cut -c1-16)-$DEVICE"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  log "installing $TF_PKG $TF_VERSION, keras $KERAS_VERSION and Python dependencies into $VENV"
  "$PIP" install -q -c "$CONSTRAINTS" "$TF_REQ" keras numpy mpi4py scikit-learn matplotlib pytest psutil
  "$PIP" install -q -c "$CONSTRAINTS" --no-build-isolation --no-deps -e .
  # The same command a user runs in an environment of their own (README
  # "Install into your own environment"); a build of the same key is reused.
  build_args=("--$DEVICE")
  [ "${HVD_KERAS_CUDA_FROM_WHEELS:-0}" = 1 ] && build_args+=(--cuda-from-wheels)
  "$VENV/bin/hvd-keras" build-horovod "${build_args[@]}"
  echo "$want" > "$STAMP"
fi
log "ready ($DEVICE): $("$VENV/bin/python" -c 'import tensorflow as tf, keras, horovod; print("tensorflow", tf.__version__, "keras", keras.__version__, "horovod", horovod.__version__)' 2>/dev/null)"
