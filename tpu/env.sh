# Settings the tpu/ scripts share. Fill them in here; an environment variable of the same name wins
# (e.g. TPU_NAME=other tpu/logs.sh). Keep the VAR=${VAR:-value} form.

TPU_NAME=${TPU_NAME:-jaxagent}   # the TPU VM (and, with QUEUED=1, the queued resource) to create and use
TPU_ZONE=${TPU_ZONE:-}           # a zone that offers your generation: gcloud compute tpus accelerator-types list --zone=Z
TPU_PROJECT=${TPU_PROJECT:-}     # empty: gcloud's default project (gcloud config get project)

# What setup.sh installs on every host, into ~/jaxagent with its virtualenv ~/jaxagent/.venv
JAXAGENT_REPO=${JAXAGENT_REPO:-}     # a git URL the hosts clone; empty: setup.sh copies REF of this checkout to them
JAXAGENT_REF=${JAXAGENT_REF:-}       # the commit or tag to install; empty: this checkout's HEAD
JAX_VERSION=${JAX_VERSION:-0.10.2}   # jax[tpu]==JAX_VERSION (the version the tests run with)
PYTHON_VERSION=${PYTHON_VERSION:-3.11}  # jax >= 0.7 needs Python >= 3.11; uv fetches it where the image's is older

WEIGHTS_DIR=${WEIGHTS_DIR:-/mnt/models}  # where weights.sh puts model directories on every host
