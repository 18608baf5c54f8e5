#!/usr/bin/env bash
# Prints the device kind hvd_keras installs for: "gpu" or "cpu".
#
# HVD_KERAS_DEVICE=gpu|cpu forces one; unset (or "auto") means gpu when
# `nvidia-smi -L` lists at least one NVIDIA GPU, cpu otherwise.
set -euo pipefail
device=${HVD_KERAS_DEVICE:-auto}
case "$device" in
  gpu|cpu) ;;
  auto)
    device=cpu
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU [0-9]'; then
      device=gpu
    fi
    ;;
  *)
    echo "HVD_KERAS_DEVICE must be gpu, cpu or auto. Received: HVD_KERAS_DEVICE=$device." \
         "HINT: unset HVD_KERAS_DEVICE to detect the device." >&2
    exit 2
    ;;
esac
echo "$device"
