"""The ``jaxagent`` command line: ``sweep``, ``bench``, ``train``, ``eval``, ``export``, ``plan``, ``report``."""
from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
from pathlib import Path

from envs_jax.yaml_config import ConfigError

BENCHMARKS = ("envs", "text", "sampler", "rollout", "scale", "restarts", "scaling")


def _cmd_sweep(args: argparse.Namespace) -> None:
    from envs_jax import sweep

    sweep.run_from_config(args.config, args.overrides)


def _cmd_bench(args: argparse.Namespace) -> None:
    _host_devices(args.cpu_devices)
    names = BENCHMARKS if args.name == "all" else (args.name,)
    results = {}
    for name in names:
        module = importlib.import_module(f"jaxagent.bench.{name}")
        results[name] = module.run(quick=args.quick)
    out = results if args.name == "all" else results[args.name]
    from jaxagent.bench import host

    out["host"] = host()
    print(json.dumps(out, indent=2))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2) + "\n")


# XLA:CPU's YNNPACK fusions run the decode's small matmuls and attention reductions 1.4-2x slower than XLA's own
# kernels. The command line turns them off unless XLA_FLAGS already chooses (the library itself sets nothing).
_YNN_OFF = "--xla_cpu_experimental_ynn_fusion_type="


def turn_ynn_fusions_off() -> None:
    if _YNN_OFF.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_YNN_OFF}".strip()


def _host_devices(count: int) -> None:
    """Give JAX's host (CPU) platform ``count`` devices, unless ``XLA_FLAGS`` already says how many: on a CPU
    host the benchmarks then split their rows over the cores, one device per core, each on its own thread."""
    if count > 1 and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        import jax

        jax.config.update("jax_num_cpu_devices", count)


def _cmd_report(args: argparse.Namespace) -> None:
    from jaxagent import report

    directories = [Path(d) for d in args.runs]
    out = Path(args.out) if args.out else (directories[0] / "report" if len(directories) == 1
                                           else directories[0].parent / "report")
    print(f"report: {report.build(directories, out)}")


def _cmd_plan(args: argparse.Namespace) -> None:
    from jaxagent import plan

    plan.plan_from_config(args.config, args.overrides, args.devices)


def _cmd_run(args: argparse.Namespace) -> None:
    from jaxagent import trainers

    getattr(trainers, f"{args.command}_from_config")(args.config, args.overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxagent", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sweep", help="vectorised baseline sweep over env options x policies x seeds")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("bench", help="side-by-side benchmarks against peer libraries")
    p.add_argument("name", choices=BENCHMARKS + ("all",))
    p.add_argument("--json", help="write the result to this JSON file")
    p.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    p.add_argument("--cpu-devices", type=int, default=cores,
                   help="CPU devices to split our rows over (default: one per available core; 1: one device)")
    p.set_defaults(func=_cmd_bench)

    for name, text in (("train", "train an agent (SFT, RLFT, SFT then RLFT; SFT-POS, SFT-ALL, RFT, EEF)"),
                       ("eval", "evaluate a checkpoint, or analyse it (analysis=frequency-bias|knowing-doing)"),
                       ("export", "export a checkpoint as a Hugging Face directory")):
        p = sub.add_parser(name, help=text)
        p.add_argument("config")
        p.add_argument("overrides", nargs="*", help="key=value overrides")
        p.set_defaults(func=_cmd_run)

    p = sub.add_parser("plan", help="per-device memory of a run of CONFIG on a slice, before paying for it")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="key=value overrides (e.g. model.mesh=[1,8,1])")
    p.add_argument("--devices", type=int, help="devices of the slice (default: model.mesh's product, or this host's)")
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser("report", help="one HTML page (plus PNGs) for a run, or comparing runs")
    p.add_argument("runs", nargs="+", help="run directories (run.output_dir/run.name)")
    p.add_argument("--out", help="output directory (default: RUN/report, or report/ beside the runs)")
    p.set_defaults(func=_cmd_report)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    turn_ynn_fusions_off()
    from envs_jax import EnvError
    from jaxagent.checkpoint import CheckpointNotFoundError
    from jaxagent.model.config import CheckpointError
    from jaxagent.train_step import NonFiniteError
    from jaxagent.trainers.loop import Preempted

    try:
        args.func(args)
    except Preempted as e:
        print(f"jaxagent: {e}", file=sys.stderr)
        raise SystemExit(128 + signal.SIGTERM) from None  # as a process the signal ended, but with its checkpoint
    except (ConfigError, EnvError, CheckpointError, CheckpointNotFoundError, NonFiniteError) as e:
        print(f"jaxagent: error: {e}", file=sys.stderr)
        # bad input: 2; a run stopped by a NaN / inf (its last good checkpoint kept): 1
        raise SystemExit(1 if isinstance(e, NonFiniteError) else 2) from None


if __name__ == "__main__":
    main()
