#!/usr/bin/env bash
# Delete the TPU VM $TPU_NAME (its disks and whatever the run left on them go too: fetch.sh first).
# QUEUED=1: delete the queued resource of that name and its VM.
set -euo pipefail
source "$(dirname "$0")/common.sh"
usage="usage: tpu/delete.sh"
(($# == 0)) || die "takes no arguments; $usage"
tpu_target

if [[ ${QUEUED:-0} == 1 ]]; then
  run gcloud compute tpus queued-resources delete "$TPU_NAME" "${WHERE[@]}" --force
else
  run gcloud compute tpus tpu-vm delete "$TPU_NAME" "${WHERE[@]}"
fi
