#!/usr/bin/env bash
# Installs everything hvd_keras needs on a fresh Debian machine (run as root):
# system packages, the virtual environment at .venv/, and horovod built from
# source against the pinned TensorFlow. Idempotent: a second run only checks.
#
# Usage: tools/bootstrap.sh [--with-slurm]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv
PY=${PYTHON:-python3}
WITH_SLURM=0
[ "${1:-}" = "--with-slurm" ] && WITH_SLURM=1

log() { echo "[bootstrap] $*"; }

# --- system packages -------------------------------------------------------
# openmpi: MPI controller and mpirun; cmake 3.25: Debian's (the PyPI cmake 4.x
# rejects gloo's CMakeLists); highwayhash/farmhash: headers that TensorFlow
# 2.21's wheel no longer ships but horovod's TensorFlow ops include.
APT_PKGS="openmpi-bin libopenmpi-dev cmake g++ make libhighwayhash-dev libfarmhash-dev"
[ "$WITH_SLURM" = 1 ] && APT_PKGS="$APT_PKGS slurm-wlm munge"
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
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip wheel setuptools
fi
PIP="$VENV/bin/pip"
STAMP=$VENV/.hvd_keras-deps
want="$(sha256sum constraints.txt setup.cfg tools/bootstrap.sh tools/build_horovod.sh | sha256sum | cut -c1-16)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  log "installing TensorFlow and Python dependencies"
  "$PIP" install -q -c constraints.txt "tensorflow-cpu" "keras" numpy mpi4py scikit-learn matplotlib pytest psutil
  bash tools/build_horovod.sh "$VENV"
  "$PIP" install -q -c constraints.txt --no-build-isolation -e ".[cpu,test]"
  echo "$want" > "$STAMP"
fi
log "ready: $("$VENV/bin/python" -c 'import tensorflow as tf, keras, horovod; print("tensorflow", tf.__version__, "keras", keras.__version__, "horovod", horovod.__version__)' 2>/dev/null)"
