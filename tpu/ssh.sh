#!/usr/bin/env bash
# Run a shell command in ~/jaxagent on every host of $TPU_NAME (WORKER=0, 1, ... for one), e.g.
#   tpu/ssh.sh '.venv/bin/python -c "import jax; jax.distributed.initialize(); print(jax.device_count())"'
set -euo pipefail
source "$(dirname "$0")/common.sh"
usage="usage: tpu/ssh.sh COMMAND"
(($# > 0)) || die "missing COMMAND; $usage"
worker=${WORKER:-all}
[[ $worker =~ ^([0-9]+|all)$ ]] || die "WORKER '$worker' is not a number or all; $usage"
tpu_target

on_hosts "$worker" "cd ~/jaxagent && $*"
