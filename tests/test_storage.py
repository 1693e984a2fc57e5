"""Run directories and model checkpoints in a gs:// bucket, against a local GCS server (tests/fixtures/gcs_server.py
on 127.0.0.1): gcsfs and Orbax's tensorstore both speak to it. A run writes its checkpoints, policy and logs to the
bucket; the same command on a fresh machine (an empty local mirror) resumes it from the bucket to the same summary;
a bucket checkpoint evaluates with its report written back beside it."""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "runs-bucket"
SETTINGS = ["trainer=rlft", "model.tokenizer=shipped", "env.options={num_arms: 3, horizon: 3}", "env.pool_size=8",
            "rollout.max_new_tokens=24", "rollout.history_segments=1", "rollout.envs_per_rollout=4",
            "rl.batch_size=12", "rl.num_updates=2", "optim.name=adamw", "optim.learning_rate=0.01",
            "optim.warmup_steps=1", "run.checkpoint_every=1", "run.log_every=1", "eval.num_episodes=4",
            f"model.checkpoint=gs://{BUCKET}/models/nano-greedy-base", f"run.output_dir=gs://{BUCKET}/runs",
            "run.name=tiny"]


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """(environment for the command line, a gcsfs filesystem) with a local GCS server holding one bucket."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fixtures" / "gcs_server.py"), str(port), BUCKET],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline and server.poll() is None, "the local GCS server did not start"
            time.sleep(0.1)
    # every client goes to the local server, none to Google (no credentials lookup, no metadata server)
    # (gcsfs's bucket-type probe speaks gRPC, which the local server does not)
    home = tmp_path_factory.mktemp("home")  # no credentials of this machine's user reach the clients
    env = dict({k: v for k, v in os.environ.items() if k != "GOOGLE_APPLICATION_CREDENTIALS"},
               CLOUDSDK_CONFIG=str(home), FSSPEC_GCS_TOKEN="anon", STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url,
               GOOGLE_AUTH_TOKEN_FOR_TESTING="local", GCE_METADATA_ROOT="127.0.0.1:9", GCE_METADATA_HOST="127.0.0.1:9",
               GCE_METADATA_IP="127.0.0.1:9", NO_GCE_CHECK="true", GOOGLE_CLOUD_PROJECT="local",
               GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false", JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    old = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "NO_GCE_CHECK", "GCE_METADATA_HOST",
                                          "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT")}
    os.environ.update({k: env[k] for k in old})
    import gcsfs

    fs = gcsfs.GCSFileSystem(token="anon", project="local", skip_instance_cache=True)
    fs.put(str(ROOT / "jaxagent" / "assets" / "nano-greedy-base"), f"{BUCKET}/models/nano-greedy-base",
           recursive=True)
    yield env, fs
    for k, v in old.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    server.terminate()
    server.wait(timeout=30)


def _cli(env, mirror: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "jaxagent.cli", *args], env={**env, "JAXAGENT_MIRROR": str(mirror)},
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


def test_a_run_in_a_bucket_resumes_on_a_fresh_machine_and_evaluates_from_it(gcs, tmp_path):
    env, fs = gcs
    config = tmp_path / "tiny.yaml"
    config.write_text("trainer: rlft\n")
    run = f"{BUCKET}/runs/tiny"
    _cli(env, tmp_path / "first", "train", str(config), *SETTINGS)
    for name in ("summary.json", "curves.json", "run.json", "config.yaml", "policy/jaxagent_model.json"):
        assert fs.exists(f"{run}/{name}"), name
    assert {p.rsplit("/", 1)[-1] for p in fs.ls(f"{run}/rlft/checkpoints")} >= {"1", "2"}
    assert fs.ls(f"{run}/tb")
    assert not (tmp_path / "first" / "gs" / run / "rlft" / "checkpoints").exists()  # checkpoints: bucket only
    summary = json.loads(fs.cat(f"{run}/summary.json"))

    # a fresh machine: the run stopped after its first checkpoint (what is after it removed from the bucket)
    for path in (f"{run}/rlft/checkpoints/2", f"{run}/policy", f"{run}/summary.json"):
        fs.rm(path, recursive=True)
    progress = _cli(env, tmp_path / "second", "train", str(config), *SETTINGS)
    assert "rlft:  50%" in progress and "rlft:   0%" not in progress  # resumed from the bucket's update 1
    assert json.loads(fs.cat(f"{run}/summary.json")) == summary
    assert len(json.loads(fs.cat(f"{run}/run.json"))["starts"]) == 2

    _cli(env, tmp_path / "third", "eval", str(config), *SETTINGS, f"checkpoint=gs://{run}/policy")
    assert json.loads(fs.cat(f"{run}/eval/summary.json"))["policy"] == summary["rlft"]  # the same held-out episodes
