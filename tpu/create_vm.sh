#!/usr/bin/env bash
# Create a TPU VM (single host or pod slice) for jaxagent.
# Usage: tpu/create_vm.sh NAME ZONE ACCELERATOR_TYPE   e.g. tpu/create_vm.sh rlft-v5p us-east5-a v5p-32
set -euo pipefail
name=${1:?TPU name}; zone=${2:?zone}; accel=${3:?accelerator type, e.g. v5p-32}
version=${TPU_SOFTWARE_VERSION:-v2-alpha-tpuv5}
gcloud compute tpus tpu-vm create "$name" --zone "$zone" --accelerator-type "$accel" --version "$version"
