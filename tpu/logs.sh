#!/usr/bin/env bash
# Follow ~/jaxagent.log of one host of $TPU_NAME (worker 0, the one that reports, by default; Ctrl-C to stop
# following, the run goes on). TAIL_LINES (default 100) lines of history first.
set -euo pipefail
source "$(dirname "$0")/common.sh"
usage="usage: tpu/logs.sh [WORKER] (0, 1, ... or all; default 0)"
worker=${1:-0}
[[ $worker =~ ^([0-9]+|all)$ ]] || die "WORKER '$worker' is not a number or all; $usage"
(($# <= 1)) || die "too many arguments; $usage"
tpu_target

on_hosts "$worker" "tail -n ${TAIL_LINES:-100} -F ~/jaxagent.log"
