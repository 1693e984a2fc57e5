#!/usr/bin/env bash
# Create the TPU VM or pod slice $TPU_NAME, with the TPU software version of its generation.
# SPOT=1: a Spot TPU (cheaper, can be preempted at any time); QUEUED=1: request it as a queued resource, which
# waits for capacity (watch it with: gcloud compute tpus queued-resources list --zone=$TPU_ZONE).
# TPU_VERSION=... overrides the software version.
set -euo pipefail
source "$(dirname "$0")/common.sh"
usage="usage: tpu/create.sh ACCELERATOR_TYPE (v4-8, v5litepod-8, v5p-8, v6e-8, ...)"

accel=${1:-}
[[ -n $accel ]] || die "missing ACCELERATOR_TYPE; $usage"
case $accel in
  v4-[0-9]*) version=tpu-ubuntu2204-base ;;
  v5litepod-[0-9]*) version=v2-alpha-tpuv5-lite ;;  # v5e
  v5p-[0-9]*) version=v2-alpha-tpuv5 ;;
  v6e-[0-9]*) version=v2-alpha-tpuv6e ;;
  *) die "ACCELERATOR_TYPE '$accel' is none of v4-N, v5litepod-N (v5e), v5p-N, v6e-N; $usage" ;;
esac
version=${TPU_VERSION:-$version}
tpu_target

if [[ ${QUEUED:-0} == 1 ]]; then
  cmd=(gcloud compute tpus queued-resources create "$TPU_NAME" --node-id="$TPU_NAME" "${WHERE[@]}"
       --accelerator-type="$accel" --runtime-version="$version")
else
  cmd=(gcloud compute tpus tpu-vm create "$TPU_NAME" "${WHERE[@]}" --accelerator-type="$accel" --version="$version")
fi
if [[ ${SPOT:-0} == 1 ]]; then cmd+=(--spot); fi
run "${cmd[@]}"
