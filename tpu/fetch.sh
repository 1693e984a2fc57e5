#!/usr/bin/env bash
# Copy a run directory (logs, summaries, plots, checkpoints, policy/) from worker 0 of $TPU_NAME, the process that
# writes the reports, into LOCAL_DIR. RUN_DIR is run.output_dir/run.name as the hosts see it: relative to
# ~/jaxagent (runs/NAME) or absolute. A subdirectory (runs/NAME/policy) fetches less.
set -euo pipefail
source "$(dirname "$0")/common.sh"
usage="usage: tpu/fetch.sh RUN_DIR [LOCAL_DIR] (e.g. runs/mab_button_10arms_2b; LOCAL_DIR default .)"
run_dir=${1:-}
[[ -n $run_dir ]] || die "missing RUN_DIR; $usage"
(($# <= 2)) || die "too many arguments; $usage"
dest=${2:-.}
tpu_target

[[ $run_dir == /* ]] || run_dir="jaxagent/$run_dir"
run mkdir -p "$dest"
run gcloud compute tpus tpu-vm scp --recurse "$TPU_NAME:$run_dir" "$dest" "${WHERE[@]}" --worker=0
