#!/usr/bin/env bash
# Start `jaxagent train CONFIG OVERRIDES run.distributed=true` on every host of $TPU_NAME, detached (it outlives
# the ssh session): the local CONFIG file is written to ~/jaxagent/launched/ on each host, the output goes to
# ~/jaxagent.log and the process id to ~/jaxagent.pid there. Run from ~/jaxagent, so the config's relative
# run.output_dir (runs/ by default) is ~/jaxagent/runs. The same command resumes a stopped run from its last
# checkpoint. It refuses to start while a run is going; LAUNCH_CHECK_S (default 20) seconds after the start it
# reports a process that has already ended, with the end of its log.
set -euo pipefail
source "$(dirname "$0")/common.sh"
usage="usage: tpu/launch.sh CONFIG [section.key=value ...]"
config=${1:-}
[[ -n $config ]] || die "missing CONFIG; $usage"
[[ -f $config ]] || die "CONFIG '$config' is not a file; $usage"
shift
for arg in "$@"; do [[ $arg == ?*=* ]] || die "override '$arg' is not section.key=value; $usage"; done
tpu_target

file="launched/$(basename "$config")"
train="$(printf %q "$file")$(quote_args "$@") run.distributed=true"
on_hosts all "set -e
$ALIVE
cd ~/jaxagent
if [ -f ~/jaxagent.pid ] && alive \"\$(cat ~/jaxagent.pid)\"; then
  echo \"\$(hostname): a run is going (pid \$(cat ~/jaxagent.pid)); stop it first: tpu/stop.sh\" >&2; exit 1
fi
mkdir -p launched
printf '%s\n' $(printf %q "$(cat "$config")") > $(printf %q "$file")
echo \"== \$(date -u +%FT%TZ) jaxagent train\" $train >> ~/jaxagent.log
setsid nohup .venv/bin/jaxagent train $train >> ~/jaxagent.log 2>&1 < /dev/null &
echo \$! > ~/jaxagent.pid
sleep ${LAUNCH_CHECK_S:-20}
if ! alive \"\$(cat ~/jaxagent.pid)\"; then
  tail -n 5 ~/jaxagent.log >&2; echo \"\$(hostname): the run ended at once (above: the end of ~/jaxagent.log)\" >&2; exit 1
fi
echo \"\$(hostname): running, pid \$(cat ~/jaxagent.pid), log ~/jaxagent.log\""
