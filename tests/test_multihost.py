"""Multi-host runs through the command line: processes joined by ``jax.distributed`` (gloo over localhost) train
as one run (RLFT; SFT then RLFT), equal to one process holding all their devices; a run killed with SIGKILL
resumes to the uninterrupted run's summary; checkpoints restore onto another mesh and device count."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

from cpu_devices import FLAGS as CPU_FLAGS

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = ["model.checkpoint=shipped:nano-greedy-base", "model.tokenizer=shipped", "model.mesh=[2,1,1]",
            "env.options={num_arms: 3, horizon: 3}", "env.pool_size=8", "rollout.max_new_tokens=24",
            "rollout.history_segments=1", "rollout.envs_per_rollout=4", "sft.expert=ucb", "sft.rationale_stats=false",
            "sft.batch_size=6", "sft.num_updates=2", "rl.batch_size=12", "rl.num_updates=2", "optim.name=adamw",
            "optim.learning_rate=0.01", "optim.warmup_steps=1", "run.checkpoint_every=1", "run.log_every=1",
            "eval.num_episodes=8", "rollout.log_samples=2"]
RLFT_ONLY = ["trainer=rlft"]  # SFT then RLFT where the test says so


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(out: Path, name: str, *extra: str, verb: str = "train") -> list[str]:
    config = out / "tiny.yaml"
    config.write_text("trainer: sft_then_rlft\n")
    return [sys.executable, "-m", "jaxagent.cli", verb, str(config), *SETTINGS, f"run.output_dir={out}",
            f"run.name={name}", *extra]


def _env(devices: int) -> dict:
    flags = f"{os.environ.get('XLA_FLAGS', '')} {CPU_FLAGS} --xla_force_host_platform_device_count={devices}"
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), XLA_FLAGS=flags)


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def _two_processes(tmp_path: Path, name: str, devices: int, *settings: str) -> None:
    """One run of two processes with ``devices`` CPU devices each; process 0 joins through the config's keys,
    process 1 through a launcher's environment variables."""
    port = _free_port()
    keys = ["run.distributed=true", f"run.coordinator_address=127.0.0.1:{port}", "run.num_processes=2",
            "run.process_id=0"]
    launcher = {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
    procs = [subprocess.Popen(_command(tmp_path, name, *settings, *extra), env={**_env(devices), **variables},
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for extra, variables in ((keys, {}), (["run.distributed=true"], launcher))]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]


def _one_process(tmp_path: Path, name: str, devices: int, *settings: str, verb: str = "train") -> str:
    proc = subprocess.run(_command(tmp_path, name, *settings, verb=verb), env=_env(devices), cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


def _killed_once(tmp_path: Path, name: str, devices: int, after: str, *settings: str) -> None:
    """The run started, killed with SIGKILL once ``after`` (a path in its run directory) exists."""
    log = tmp_path / f"{name}.killed.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(_command(tmp_path, name, *settings), env=_env(devices), cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 600
        while not (tmp_path / name / after).exists():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (tmp_path / name / "summary.json").exists()


def _params(policy: Path):
    from jaxagent.model import load_policy

    return load_policy(policy).params


def _first_rollout(run: Path) -> list[list[list[int]]]:
    records = [json.loads(line) for line in (run / "rlft" / "samples.jsonl").read_text().splitlines()]
    return [[turn["tokens"] for turn in r["turns"]] for r in records if r["update"] == records[0]["update"]]


def test_two_processes_train_as_one_run_on_two_devices_and_a_killed_run_resumes_exactly(tmp_path):
    _two_processes(tmp_path, "two_hosts", 1, *RLFT_ONLY)
    _one_process(tmp_path, "one_host", 2, *RLFT_ONLY)
    _killed_once(tmp_path, "killed", 2, "rlft/checkpoints/1", *RLFT_ONLY)
    assert "rlft:  50%" in _one_process(tmp_path, "killed", 2, *RLFT_ONLY)  # resumed after update 1 of 2

    two_hosts, one_host, killed = tmp_path / "two_hosts", tmp_path / "one_host", tmp_path / "killed"
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["killed", "one_host", "two_hosts"]
    # SIGKILL mid-RLFT, then the same command: bit-identical to the uninterrupted run
    assert _summary(killed) == _summary(one_host)
    jax.tree.map(np.testing.assert_array_equal, _params(killed / "policy"), _params(one_host / "policy"))
    assert len(json.loads((killed / "run.json").read_text())["starts"]) == 2
    assert _first_rollout(two_hosts) == _first_rollout(one_host)
    steps = sorted(p.name for p in (two_hosts / "rlft" / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == sorted(p.name for p in (one_host / "rlft" / "checkpoints").iterdir() if p.name.isdigit())
    assert len(json.loads((two_hosts / "run.json").read_text())["starts"]) == 1  # written by process 0 alone
    # the same rollouts, batches and updates: a gradient summed over two processes' shards is reduced in another
    # order than over one process's two devices, so parameters agree to float32 rounding carried through 2 updates
    start, got, want = (_params(path) for path in (ROOT / "jaxagent" / "assets" / "nano-greedy-base",
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


def _close_under_adam(got, want, learning_rate: float = 0.01, updates: int = 4) -> None:
    """Parameters after ``updates`` AdamW steps from gradients summed in another order. Each element agrees to
    float32 rounding (1e-5) except where its gradient is itself at rounding level (e.g. an embedding row no token
    used): Adam divides by the gradient's RMS, so the reordering changes that element's step outright, by at most
    the learning rate per update. At most 1 in 1,000 elements may do so."""
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        diff = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
        assert diff.max() <= learning_rate * updates
        assert np.mean(diff > 1e-5 + 1e-4 * np.abs(np.asarray(b))) <= 1e-3


def test_two_processes_of_two_devices_train_as_one_process_of_four_and_restore_onto_other_meshes(tmp_path):
    """A (data 2 x fsdp 2) mesh over 2 processes x 2 CPU devices trains as one process on 4 devices: the same
    tokens in the first rollout, parameters equal to float32 rounding (four shards' partial gradients are summed
    in another order across processes). The 4-device run, stopped after RLFT's first checkpoint, resumes on 2
    devices (fsdp 2) and ends where it ended; its checkpoint evaluates on 1 device."""
    four = ["model.mesh=[2,2,1]", "sft.batch_size=12", "rl.batch_size=24", "rollout.envs_per_rollout=8"]
    _two_processes(tmp_path, "two_by_two", 2, *four)
    _one_process(tmp_path, "four", 4, *four)
    assert _first_rollout(tmp_path / "two_by_two") == _first_rollout(tmp_path / "four")
    _close_under_adam(_params(tmp_path / "two_by_two" / "policy"), _params(tmp_path / "four" / "policy"))

    shutil.copytree(tmp_path / "four", tmp_path / "moved")
    shutil.rmtree(tmp_path / "moved" / "rlft" / "checkpoints" / "2")
    shutil.rmtree(tmp_path / "moved" / "policy")
    progress = _one_process(tmp_path, "moved", 2, *four, "model.mesh=[1,2,1]")
    assert "rlft:  50%" in progress and "rlft:   0%" not in progress  # resumed after RLFT's update 1
    assert len(json.loads((tmp_path / "moved" / "run.json").read_text())["starts"]) == 2
    _close_under_adam(_params(tmp_path / "moved" / "policy"), _params(tmp_path / "four" / "policy"))
    checkpoint = tmp_path / "moved" / "rlft" / "checkpoints" / "2"
    _one_process(tmp_path, "moved", 1, *four, "model.mesh=[1,1,1]", f"checkpoint={checkpoint}", verb="eval")
    assert json.loads((tmp_path / "moved" / "rlft" / "eval_2" / "summary.json").read_text())["policy"]
