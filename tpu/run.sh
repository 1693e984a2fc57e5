#!/usr/bin/env bash
# Run the same jaxagent command on every host; hosts join through jax.distributed.initialize(),
# which on TPU VMs discovers the coordinator and process ids by itself (run.distributed=true).
# Usage: tpu/run.sh NAME ZONE train configs/paper/mab_button_5arms_2b.yaml model.checkpoint=/mnt/gemma-2-2b-it
set -euo pipefail
name=${1:?TPU name}; zone=${2:?zone}; shift 2
args=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command "
  cd jaxagent && .venv/bin/jaxagent$args run.distributed=true
"
