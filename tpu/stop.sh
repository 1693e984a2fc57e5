#!/usr/bin/env bash
# Stop the run on every host of $TPU_NAME as a preemption would: SIGTERM, after which the trainer finishes the
# iteration under way, writes a checkpoint and exits (status 143). It waits until every process has ended;
# tpu/launch.sh with the same arguments then resumes from that checkpoint.
set -euo pipefail
source "$(dirname "$0")/common.sh"
usage="usage: tpu/stop.sh"
(($# == 0)) || die "takes no arguments; $usage"
tpu_target

on_hosts all "$ALIVE
pid=\$(cat ~/jaxagent.pid 2>/dev/null || true)
if [ -z \"\$pid\" ] || ! alive \"\$pid\"; then echo \"\$(hostname): no run going\"; exit 0; fi
kill -TERM \"\$pid\"
while alive \"\$pid\"; do sleep 1; done
echo \"\$(hostname): stopped; the end of ~/jaxagent.log:\"; tail -n 2 ~/jaxagent.log"
