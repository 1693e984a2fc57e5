#!/usr/bin/env bash
# Install jaxagent (with TPU jax) on every host of a TPU VM / pod slice.
# Usage: tpu/setup.sh NAME ZONE [GIT_URL] [REF]
set -euo pipefail
name=${1:?TPU name}; zone=${2:?zone}
repo=${3:-$(git config --get remote.origin.url)}; ref=${4:-$(git rev-parse HEAD)}
gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command "
  set -e
  [ -d jaxagent ] || git clone '$repo' jaxagent
  cd jaxagent && git fetch -q origin && git checkout -q '$ref'
  python3 -m venv .venv && .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e . 'jax[tpu]' -f https://storage.googleapis.com/jax-releases/libtpu_releases.html
"
