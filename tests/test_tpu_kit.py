"""The tpu/ scripts run under bash with a stand-in ``gcloud`` (and ``ssh``) first on PATH that records its arguments:
each composes the commands tpu/README.md promises (the software version of each TPU generation, every host, the
detached launch of the user's config with run.distributed=true) and refuses a missing argument in one line. The
remote shell commands of launch and stop also run here, in a scratch home with a stand-in jaxagent: the run is
left going after the launch returns and stops on SIGTERM. No network, a few seconds."""
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KIT = ROOT / "tpu"
SCRIPTS = sorted(KIT.glob("*.sh"))
COMMANDS = [p for p in SCRIPTS if p.name not in ("env.sh", "common.sh")]
TPU = ["--zone=us-east5-a", "--project=my-project"]

# Records its arguments, one JSON list a line; with FAKE_REMOTE=1 it also runs an ssh --command (gcloud) or the
# command after the host (ssh) in bash, in $HOME, as the remote host would.
FAKE = f"""#!{sys.executable}
import json, os, subprocess, sys
name, args = os.path.basename(sys.argv[0]), sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps([name] + args) + "\\n")
if os.environ.get("FAKE_REMOTE") == "1":
    command = args[args.index("--command") + 1] if "--command" in args else args[-1] if name == "ssh" else None
    if command is not None:
        sys.exit(subprocess.run(["bash", "-c", command], cwd=os.environ["HOME"]).returncode)
"""

# A stand-in for the trainer: records its arguments, checkpoints and exits 143 on SIGTERM, as the real one does.
TRAINER = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$HOME/trainer_args"
trap 'echo "stopped by SIGTERM, checkpoint saved"; exit 143' TERM
echo "training"
while :; do sleep 0.05; done
"""


class Kit:
    def __init__(self, tmp: Path):
        self.tmp, self.log, self.home = tmp, tmp / "calls.jsonl", tmp / "home"
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        self.home.mkdir()
        for name in ("gcloud", "ssh"):
            (bin_dir / name).write_text(FAKE)
            (bin_dir / name).chmod(0o755)
        self.env = {k: v for k, v in os.environ.items() if k != "DRY_RUN"}
        self.env.update(PATH=f"{bin_dir}:{os.environ['PATH']}", HOME=str(self.home), TMPDIR=str(tmp),
                        FAKE_LOG=str(self.log), TPU_NAME="rlft", TPU_ZONE="us-east5-a", TPU_PROJECT="my-project",
                        JAXAGENT_REPO="", JAXAGENT_REF="", JAX_VERSION="0.10.2", PYTHON_VERSION="3.11",
                        WEIGHTS_DIR="/mnt/models", LAUNCH_CHECK_S="0.3")

    def __call__(self, script: str, *args: str, timeout: float = 30, **env: str) -> subprocess.CompletedProcess:
        self.log.unlink(missing_ok=True)
        return subprocess.run(["bash", str(KIT / script), *args], env={**self.env, **env}, cwd=self.tmp,
                              capture_output=True, text=True, timeout=timeout)

    def calls(self) -> list[list[str]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []


@pytest.fixture
def kit(tmp_path):
    return Kit(tmp_path)


def ssh_all(command: str) -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "rlft", *TPU, "--worker=all", "--command", command]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_script_parses_and_states_its_usage(script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    if script in COMMANDS:
        assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
        assert f'usage="usage: tpu/{script.name}' in text
        assert os.access(script, os.X_OK)


@pytest.mark.parametrize("accelerator, version", [
    ("v4-8", "tpu-ubuntu2204-base"), ("v4-32", "tpu-ubuntu2204-base"), ("v5litepod-16", "v2-alpha-tpuv5-lite"),
    ("v5p-8", "v2-alpha-tpuv5"), ("v6e-8", "v2-alpha-tpuv6e"), ("v6e-256", "v2-alpha-tpuv6e")])
def test_create_picks_the_software_version_of_the_generation(kit, accelerator, version):
    assert kit("create.sh", accelerator).returncode == 0
    assert kit.calls() == [["gcloud", "compute", "tpus", "tpu-vm", "create", "rlft", *TPU,
                            f"--accelerator-type={accelerator}", f"--version={version}"]]


def test_create_spot_queued_and_overridden_version(kit):
    assert kit("create.sh", "v5p-16", SPOT="1", QUEUED="1").returncode == 0
    assert kit.calls() == [["gcloud", "compute", "tpus", "queued-resources", "create", "rlft", "--node-id=rlft", *TPU,
                            "--accelerator-type=v5p-16", "--runtime-version=v2-alpha-tpuv5", "--spot"]]
    assert kit("create.sh", "v4-8", SPOT="1", TPU_VERSION="tpu-vm-base", TPU_PROJECT="").returncode == 0
    assert kit.calls() == [["gcloud", "compute", "tpus", "tpu-vm", "create", "rlft", "--zone=us-east5-a",
                            "--accelerator-type=v4-8", "--version=tpu-vm-base", "--spot"]]
    assert kit("delete.sh", QUEUED="1").returncode == 0
    assert kit.calls() == [["gcloud", "compute", "tpus", "queued-resources", "delete", "rlft", *TPU, "--force"]]


@pytest.mark.parametrize("script, args, env, named", [
    ("create.sh", [], {}, "missing ACCELERATOR_TYPE"),
    ("create.sh", ["v3-8"], {}, "ACCELERATOR_TYPE 'v3-8'"),
    ("create.sh", ["v5p-8"], {"TPU_ZONE": ""}, "TPU_ZONE is not set"),
    ("launch.sh", ["v5p-8"], {"TPU_NAME": ""}, "CONFIG 'v5p-8' is not a file"),
    ("weights.sh", [], {}, "missing MODEL_DIR"),
    ("weights.sh", ["/data/gemma-2-2b-it"], {}, "is not a gs:// path"),
    ("launch.sh", [], {}, "missing CONFIG"),
    ("fetch.sh", [], {}, "missing RUN_DIR"),
    ("ssh.sh", [], {}, "missing COMMAND"),
    ("logs.sh", ["first"], {}, "WORKER 'first'"),
    ("stop.sh", ["now"], {}, "takes no arguments"),
    ("setup.sh", ["no-such-ref"], {}, "REF 'no-such-ref' is not a commit"),
    ("gpu_launch.sh", [], {}, "missing NODE list"),
    ("gpu_launch.sh", ["node0,node1"], {}, "missing CONFIG"),
])
def test_a_missing_or_bad_argument_is_one_line_and_runs_nothing(kit, script, args, env, named):
    out = kit(script, *args, **env)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and out.stderr.startswith(f"{script}: ") and named in out.stderr
    assert kit.calls() == []


def test_setup_installs_the_pinned_ref_and_jax_tpu_on_every_host(kit):
    assert kit("setup.sh", "v1.2", JAXAGENT_REPO="https://git.example.com/jaxagent.git").returncode == 0
    [call] = kit.calls()
    assert call[:-1] == ssh_all("")[:-1]
    script = call[-1]
    assert "git clone -q https://git.example.com/jaxagent.git ~/jaxagent" in script
    assert "git checkout -q --force v1.2" in script
    assert "uv venv -q --python 3.11 .venv" in script
    assert "uv pip install -q --python .venv/bin/python -e '.[cloud]' 'jax[tpu]==0.10.2'" in script


def test_setup_copies_a_commit_of_this_checkout_to_every_host(kit):
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode:
        pytest.skip("not a git checkout")
    sha = head.stdout.strip()
    out = kit("setup.sh")
    assert out.returncode == 0, out.stderr
    tarball = kit.tmp / f"jaxagent-{sha}.tar.gz"
    with tarfile.open(tarball) as tar:
        assert {"pyproject.toml", "jaxagent/cli.py", "configs/quickstart.yaml"} <= set(tar.getnames())
    scp, ssh = kit.calls()
    assert scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp", str(tarball), "rlft:jaxagent.tar.gz", *TPU,
                   "--worker=all"]
    assert ssh[:-1] == ssh_all("")[:-1] and "tar -xzf ~/jaxagent.tar.gz -C ~/jaxagent" in ssh[-1]
    assert f"jaxagent {sha}" in ssh[-1] and "'jax[tpu]==0.10.2'" in ssh[-1]


def test_weights_are_copied_onto_every_host(kit):
    out = kit("weights.sh", "gs://my-bucket/models/gemma-2-2b-it/")
    assert out.returncode == 0 and out.stdout == "model.checkpoint=/mnt/models/gemma-2-2b-it\n"
    [call] = kit.calls()
    assert call[:-1] == ssh_all("")[:-1]
    assert "gcloud storage rsync -r gs://my-bucket/models/gemma-2-2b-it /mnt/models/gemma-2-2b-it" in call[-1]


def test_launch_composes_one_detached_command_for_every_host(kit):
    config = kit.tmp / "my_run.yaml"
    config.write_text("trainer: rlft\nrun: {name: my_run}\n")
    overrides = ["model.checkpoint=/mnt/models/gemma-2-2b-it", "model.mesh=[1,-1,1]"]
    assert kit("launch.sh", str(config), *overrides).returncode == 0
    [call] = kit.calls()
    assert call[:-1] == ssh_all("")[:-1]
    script = call[-1]
    train = r"launched/my_run.yaml model.checkpoint=/mnt/models/gemma-2-2b-it model.mesh=\[1\,-1\,1\] run.distributed=true"
    assert f"setsid nohup .venv/bin/jaxagent train {train} >> ~/jaxagent.log 2>&1 < /dev/null &" in script
    assert "echo $! > ~/jaxagent.pid" in script
    assert "printf '%s\\n' $'trainer: rlft\\nrun: {name: my_run}' > launched/my_run.yaml" in script


def _fake_trainer(kit, body: str = TRAINER) -> None:
    venv = kit.home / "jaxagent" / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "jaxagent").write_text(body)
    (venv / "jaxagent").chmod(0o755)


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_launched_run_outlives_the_launch_and_stops_on_sigterm(kit):
    _fake_trainer(kit)
    config = kit.tmp / "quoted.yaml"
    config.write_text("# a config with 'quotes', \"double quotes\" and $HOME\ntrainer: rlft\n")
    overrides = ["model.mesh=[1,-1,1]", "run.name=two words"]
    pid = None
    try:
        out = kit("launch.sh", str(config), *overrides, FAKE_REMOTE="1")
        assert out.returncode == 0, out.stderr
        pid = int((kit.home / "jaxagent.pid").read_text())
        assert _running(pid)  # after the launch command has returned
        assert (kit.home / "trainer_args").read_text().splitlines() == [
            "train", "launched/quoted.yaml", *overrides, "run.distributed=true"]
        assert (kit.home / "jaxagent" / "launched" / "quoted.yaml").read_text() == config.read_text()
        again = kit("launch.sh", str(config), *overrides, FAKE_REMOTE="1")
        assert again.returncode != 0 and "a run is going" in again.stderr
        out = kit("stop.sh", FAKE_REMOTE="1", timeout=20)
        assert out.returncode == 0, out.stderr
        assert not _running(pid)
        log = (kit.home / "jaxagent.log").read_text()
        assert "training" in log and log.rstrip().endswith("stopped by SIGTERM, checkpoint saved")
        [call] = kit.calls()
        assert call[:-1] == ssh_all("")[:-1] and 'kill -TERM "$pid"' in call[-1]
        assert "no run going" in kit("stop.sh", FAKE_REMOTE="1").stdout
    finally:
        if pid is not None and _running(pid):
            os.kill(pid, signal.SIGKILL)


def test_launch_reports_a_run_that_ends_at_once(kit):
    _fake_trainer(kit, "#!/usr/bin/env bash\necho \"jaxagent: error: config key 'rl.batch_size': must be > 0\"\n"
                       "exit 2\n")
    config = kit.tmp / "bad.yaml"
    config.write_text("trainer: rlft\n")
    out = kit("launch.sh", str(config), "rl.batch_size=0", FAKE_REMOTE="1")
    assert out.returncode != 0
    assert "config key 'rl.batch_size'" in out.stderr and "the run ended at once" in out.stderr


def test_logs_fetch_and_ssh_address_the_right_hosts(kit):
    assert kit("logs.sh").returncode == 0
    assert kit.calls() == [["gcloud", "compute", "tpus", "tpu-vm", "ssh", "rlft", *TPU, "--worker=0", "--command",
                            "tail -n 100 -F ~/jaxagent.log"]]
    assert kit("fetch.sh", "runs/mab_button_10arms_2b", "back").returncode == 0
    assert kit.calls() == [["gcloud", "compute", "tpus", "tpu-vm", "scp", "--recurse",
                            "rlft:jaxagent/runs/mab_button_10arms_2b", "back", *TPU, "--worker=0"]]
    assert (kit.tmp / "back").is_dir()
    assert kit("ssh.sh", "ls", "runs").returncode == 0
    assert kit.calls() == [ssh_all("cd ~/jaxagent && ls runs")]


def test_gpu_launch_starts_one_process_per_node(kit):
    assert kit("gpu_launch.sh", "gpu0,gpu1,gpu2", "configs/paper/mab_button_10arms_9b.yaml",
               "model.mesh=[3,-1,1]").returncode == 0
    calls = kit.calls()
    assert [c[:2] for c in calls] == [["ssh", "gpu0"], ["ssh", "gpu1"], ["ssh", "gpu2"]]
    for i, (_, _, command) in enumerate(calls):
        assert (r"setsid nohup .venv/bin/jaxagent train configs/paper/mab_button_10arms_9b.yaml "
                r"model.mesh=\[3\,-1\,1\] run.distributed=true run.coordinator_address=gpu0:8476 "
                f"run.num_processes=3 run.process_id={i} >> ~/jaxagent.log") in command
    assert kit("gpu_launch.sh", "gpu0", "configs/quickstart.yaml").returncode == 0
    [(_, _, command)] = kit.calls()
    assert "jaxagent train configs/quickstart.yaml >> ~/jaxagent.log" in command and "distributed" not in command


def test_gpu_launch_runs_detached_on_a_node(kit):
    _fake_trainer(kit)
    out = kit("gpu_launch.sh", "localhost", "configs/quickstart.yaml", "model.mesh=[1,-1,1]", FAKE_REMOTE="1")
    assert out.returncode == 0, out.stderr
    pid = int((kit.home / "jaxagent.pid").read_text())
    try:
        for _ in range(100):
            if (kit.home / "trainer_args").exists():
                break
            time.sleep(0.05)
        assert (kit.home / "trainer_args").read_text().splitlines() == [
            "train", "configs/quickstart.yaml", "model.mesh=[1,-1,1]"]
        assert _running(pid)
    finally:
        if _running(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("script, args", [
    ("create.sh", ["v6e-8"]), ("delete.sh", []), ("setup.sh", []), ("weights.sh", ["gs://b/gemma-2-9b-it"]),
    ("launch.sh", ["configs/quickstart.yaml"]), ("logs.sh", ["all"]), ("stop.sh", []), ("fetch.sh", ["runs/x"]),
    ("ssh.sh", ["ls"]), ("gpu_launch.sh", ["a,b", "configs/quickstart.yaml"])])
def test_a_dry_run_prints_the_commands_and_runs_none(kit, script, args):
    config_args = [str(ROOT / a) if a.startswith("configs/") and script == "launch.sh" else a for a in args]
    out = kit(script, *config_args, DRY_RUN="1")
    assert out.returncode == 0, out.stderr
    assert kit.calls() == [] and out.stdout
    assert any(line.startswith(("gcloud compute tpus ", "ssh ")) for line in out.stdout.splitlines())
    assert not list(kit.tmp.glob("*.tar.gz")) and not (kit.tmp / "runs").exists()
