#!/usr/bin/env bash
# Copy a Gemma 2 model directory (HF safetensors, e.g. gemma-2-2b-it) from a bucket onto every host of $TPU_NAME,
# into $WEIGHTS_DIR/NAME; it prints the model.checkpoint=... override to launch with. Run again after an
# interruption: gcloud storage rsync copies only what is missing. The hosts' service account must read the bucket.
set -euo pipefail
source "$(dirname "$0")/common.sh"
usage="usage: tpu/weights.sh gs://BUCKET/PATH/MODEL_DIR"
src=${1:-}
[[ -n $src ]] || die "missing MODEL_DIR; $usage"
[[ $src == gs://?* ]] || die "MODEL_DIR '$src' is not a gs:// path; $usage"
(($# == 1)) || die "too many arguments; $usage"
tpu_target

src=${src%/}
dest="$WEIGHTS_DIR/$(basename "$src")"
on_hosts all "set -e
sudo mkdir -p $(printf %q "$WEIGHTS_DIR") && sudo chown \"\$(id -u):\$(id -g)\" $(printf %q "$WEIGHTS_DIR")
gcloud storage rsync -r $(printf %q "$src") $(printf %q "$dest")
echo \"\$(hostname): \$(du -sh $(printf %q "$dest"))\""
echo "model.checkpoint=$dest"
