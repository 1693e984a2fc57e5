#!/usr/bin/env bash
# Install jaxagent at one commit or tag, with jax[tpu], on every host of $TPU_NAME: the code in ~/jaxagent (runs/
# and the virtualenv .venv kept across reinstalls), Python $PYTHON_VERSION through uv. Run it again to move to
# another REF. The hosts clone $JAXAGENT_REPO where it is set; otherwise REF of this checkout is copied to them.
set -euo pipefail
source "$(dirname "$0")/common.sh"
usage="usage: tpu/setup.sh [REF] (a commit or tag; default \$JAXAGENT_REF, else this checkout's HEAD)"
(($# <= 1)) || die "too many arguments; $usage"
ref=${1:-$JAXAGENT_REF}
tpu_target

if [[ -n $JAXAGENT_REPO ]]; then
  [[ -n $ref ]] || ref=$(git -C "$TPU_KIT" rev-parse HEAD 2>/dev/null) || die "missing REF (no checkout here); $usage"
  code="if [ ! -d ~/jaxagent/.git ]; then git clone -q $(printf %q "$JAXAGENT_REPO") ~/jaxagent; fi
cd ~/jaxagent && git fetch -q --tags origin && git checkout -q --force $(printf %q "$ref")"
else
  ref=$(git -C "$TPU_KIT" rev-parse --verify -q "${ref:-HEAD}^{commit}") || die "REF '${1:-$JAXAGENT_REF}' is not a commit of this checkout; $usage"
  tarball="${TMPDIR:-/tmp}/jaxagent-$ref.tar.gz"
  run git -C "$TPU_KIT/.." archive --format=tar.gz -o "$tarball" "$ref"
  run gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:jaxagent.tar.gz" "${WHERE[@]}" --worker=all
  code="mkdir -p ~/jaxagent
find ~/jaxagent -mindepth 1 -maxdepth 1 ! -name .venv ! -name runs ! -name launched -exec rm -rf {} +
tar -xzf ~/jaxagent.tar.gz -C ~/jaxagent && rm ~/jaxagent.tar.gz"
fi

on_hosts all "set -e
$code
cd ~/jaxagent
python3 -m pip install -q --user uv
if [ ! -x .venv/bin/python ]; then ~/.local/bin/uv venv -q --python $PYTHON_VERSION .venv; fi
~/.local/bin/uv pip install -q --python .venv/bin/python -e '.[cloud]' 'jax[tpu]==$JAX_VERSION'
.venv/bin/jaxagent --help > /dev/null
echo \"\$(hostname): jaxagent $ref, jax \$(.venv/bin/python -c 'import jax; print(jax.__version__)')\""
