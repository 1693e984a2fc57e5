#!/usr/bin/env bash
# Start `jaxagent train CONFIG OVERRIDES` over ssh on GPU nodes, one process per node that sees all the node's GPUs,
# detached (output in ~/jaxagent.log, process id in ~/jaxagent.pid on each node). With several nodes, node I gets
# run.distributed=true run.coordinator_address=NODE0:PORT run.num_processes=N run.process_id=I. Each node runs it
# from $GPU_DIR (default jaxagent, relative to the home directory), where jaxagent is installed in .venv and CONFIG
# is found. GPU_COORDINATOR (default FIRST_NODE:8476) must be an address the other nodes reach.
set -euo pipefail
source "$(dirname "$0")/common.sh"
usage="usage: tpu/gpu_launch.sh NODE[,NODE...] CONFIG [section.key=value ...]"
nodes=${1:-}
[[ -n $nodes ]] || die "missing NODE list; $usage"
config=${2:-}
[[ -n $config ]] || die "missing CONFIG; $usage"
shift 2
for arg in "$@"; do [[ $arg == ?*=* ]] || die "override '$arg' is not section.key=value; $usage"; done

IFS=, read -r -a hosts <<< "$nodes"
count=${#hosts[@]}
coordinator=${GPU_COORDINATOR:-${hosts[0]}:8476}
for i in "${!hosts[@]}"; do
  [[ -n ${hosts[$i]} ]] || die "empty NODE in '$nodes'; $usage"
  train="$(printf %q "$config")$(quote_args "$@")"
  if ((count > 1)); then
    train+=" run.distributed=true run.coordinator_address=$coordinator run.num_processes=$count run.process_id=$i"
  fi
  run ssh "${hosts[$i]}" "cd ${GPU_DIR:-jaxagent} && echo \"== \$(date -u +%FT%TZ) jaxagent train\" $train >> ~/jaxagent.log
setsid nohup .venv/bin/jaxagent train $train >> ~/jaxagent.log 2>&1 < /dev/null &
echo \$! > ~/jaxagent.pid; echo \"\$(hostname): started pid \$!\""
done
