# Sourced by the tpu/ scripts: the settings of env.sh, one-line errors and the gcloud calls.
# DRY_RUN=1 prints every command a script would run instead of running it.
TPU_KIT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=env.sh
source "$TPU_KIT/env.sh"

die() {  # a one-line error naming what is wrong, exit status 2
  echo "$(basename "$0"): $*" >&2
  exit 2
}

run() {  # run a command, or with DRY_RUN=1 print it (quoted as a shell would need it)
  if [[ ${DRY_RUN:-0} == 1 ]]; then
    printf '%q' "$1"; shift; printf ' %q' "$@"; echo
  else
    "$@"
  fi
}

tpu_target() {  # check the settings every gcloud TPU call needs; sets WHERE (zone and project flags)
  [[ -n ${TPU_NAME:-} ]] || die "TPU_NAME is not set (tpu/env.sh)"
  [[ -n ${TPU_ZONE:-} ]] || die "TPU_ZONE is not set (tpu/env.sh)"
  WHERE=(--zone="$TPU_ZONE")
  if [[ -n ${TPU_PROJECT:-} ]]; then WHERE+=(--project="$TPU_PROJECT"); fi
}

on_hosts() {  # on_hosts WORKER COMMAND: run COMMAND in a shell on worker WORKER (0, 1, ... or all)
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${WHERE[@]}" --worker="$1" --command "$2"
}

quote_args() {  # the arguments quoted for a remote shell, each with a leading space (nothing for none)
  if (($#)); then printf ' %q' "$@"; fi
}

# For remote commands: `alive PID` is true while that process runs (one that has ended but is not yet reaped, a
# zombie, does not count)
# shellcheck disable=SC2016,SC2034
ALIVE='alive() { kill -0 "$1" 2>/dev/null && ! ps -o stat= -p "$1" | grep -q Z; }'
