"""Two processes joined by ``jax.distributed`` (gloo over localhost, one CPU device each) train SFT then RLFT through
the command line as one run: both exit 0, one run directory holds one set of checkpoints, and the summary equals
that of one process on two CPU devices."""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = ["model.checkpoint=shipped:nano-greedy-base", "model.tokenizer=shipped", "model.mesh=[2,1,1]",
            "env.options={num_arms: 3, horizon: 3}", "env.pool_size=8", "rollout.max_new_tokens=24",
            "rollout.history_segments=1", "rollout.envs_per_rollout=4", "sft.expert=ucb", "sft.rationale_stats=false",
            "sft.batch_size=6", "sft.num_updates=2", "rl.batch_size=12", "rl.num_updates=2", "optim.name=adamw",
            "optim.learning_rate=0.01", "optim.warmup_steps=1", "run.checkpoint_every=1", "run.log_every=1",
            "eval.num_episodes=8"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(out: Path, name: str, *extra: str) -> list[str]:
    config = out / "tiny.yaml"
    config.write_text("trainer: sft_then_rlft\n")
    return [sys.executable, "-m", "jaxagent.cli", "train", str(config), *SETTINGS, f"run.output_dir={out}",
            f"run.name={name}", *extra]


def _env(devices: int) -> dict:
    flags = os.environ.get("XLA_FLAGS", "")
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
                XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={devices}")


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def test_two_processes_train_as_one_run_on_two_devices(tmp_path):
    port = _free_port()
    # process 0 joins through the config's keys, process 1 through a launcher's environment variables
    keys = ["run.distributed=true", f"run.coordinator_address=127.0.0.1:{port}", "run.num_processes=2",
            "run.process_id=0"]
    launcher = {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
    procs = [subprocess.Popen(_command(tmp_path, "two_hosts", *extra), env={**_env(1), **variables}, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for extra, variables in ((keys, {}), (["run.distributed=true"], launcher))]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    one = subprocess.run(_command(tmp_path, "one_host"), env=_env(2), cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]

    two_hosts, one_host = tmp_path / "two_hosts", tmp_path / "one_host"
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["one_host", "two_hosts"]
    for phase in ("sft", "rlft"):
        steps = sorted(p.name for p in (two_hosts / phase / "checkpoints").iterdir() if p.name.isdigit())
        assert steps == sorted(p.name for p in (one_host / phase / "checkpoints").iterdir() if p.name.isdigit())
    assert len(json.loads((two_hosts / "run.json").read_text())["starts"]) == 1  # written by process 0 alone
    # the same rollouts, batches and updates: a gradient summed over two processes' shards is reduced in another
    # order than over one process's two devices, so parameters agree to float32 rounding carried through 4 updates
    from jaxagent.model import load_policy

    start, got, want = (load_policy(path).params for path in (ROOT / "jaxagent" / "assets" / "nano-greedy-base",
                                                               two_hosts / "policy", one_host / "policy"))
    moved = [float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in
             zip(jax.tree.leaves(want), jax.tree.leaves(start))]
    assert max(moved) > 1e-3  # the updates trained
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-4),
                 got, want)
    got, want = _summary(two_hosts), _summary(one_host)
    assert got.keys() == want.keys()
    for method in want:
        for metric in want[method]:
            np.testing.assert_allclose(got[method][metric]["mean"], want[method][metric]["mean"], atol=1e-4,
                                       err_msg=f"{method} {metric}")


def test_a_checkpoint_restores_onto_another_mesh_and_device_count(tmp_path):
    """Trained on 4 devices (data 2 x fsdp 2) and stopped after the checkpoint of update 2, the same run resumes on
    2 devices (fsdp 2) and ends where the 4-device run ended (float32 rounding of reductions in another order);
    its last checkpoint evaluates on 1 device."""
    settings = ["trainer=sft", "model.checkpoint=shipped:nano-greedy-base", "model.tokenizer=shipped",
                "env.options={num_arms: 3, horizon: 3}", "env.pool_size=8", "rollout.max_new_tokens=24",
                "rollout.history_segments=1", "sft.expert=ucb", "sft.rationale_stats=false", "sft.batch_size=12",
                "sft.num_updates=4", "optim.name=adamw", "optim.learning_rate=0.01", "optim.warmup_steps=1",
                "run.checkpoint_every=2", "eval.num_episodes=4", f"run.output_dir={tmp_path}"]
    config = tmp_path / "tiny.yaml"
    config.write_text("trainer: sft\n")

    def cli(devices, *args):
        proc = subprocess.run([sys.executable, "-m", "jaxagent.cli", *args], env=_env(devices), cwd=ROOT,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stderr

    train = ["train", str(config), *settings]
    cli(4, *train, "model.mesh=[2,2,1]", "run.name=four")
    shutil.copytree(tmp_path / "four", tmp_path / "moved")
    shutil.rmtree(tmp_path / "moved" / "sft" / "checkpoints" / "4")
    shutil.rmtree(tmp_path / "moved" / "policy")
    progress = cli(2, *train, "model.mesh=[1,2,1]", "run.name=moved")
    assert "2/4" in progress and "0/4" not in progress  # resumed at update 2
    assert len(json.loads((tmp_path / "moved" / "run.json").read_text())["starts"]) == 2
    from jaxagent.model import load_policy
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-4),
                 load_policy(tmp_path / "moved" / "policy").params, load_policy(tmp_path / "four" / "policy").params)
    cli(1, "eval", str(config), *settings, "model.mesh=[1,1,1]",
        f"checkpoint={tmp_path / 'moved' / 'sft' / 'checkpoints' / '4'}")
    assert json.loads((tmp_path / "moved" / "sft" / "eval_4" / "summary.json").read_text())["policy"]
