"""Command line: ``pyro-vrm train``. Flags are generated from the configuration dataclasses."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from .config import ConfigError, ModelConfig, TrainConfig, add_arguments, from_arguments
from .simulate import SimulationConfig

__all__ = ["main", "build_parser"]

DATA_CHOICES = ("simulated",)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyro-vrm", description="Variational Reward Modeling on Pyro")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="fit VRM (or the Bradley-Terry baseline) and summarize it",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    train.add_argument("--data", default="simulated", choices=DATA_CHOICES,
                       help="preference data: 'simulated' draws from the VRM model (see simulate.py)")
    train.add_argument("--model", default="vrm", choices=("vrm", "rm"),
                       help="vrm: the variational reward model; rm: the Bradley-Terry baseline")
    train.add_argument("--out", type=Path, default=None,
                       help="run folder (default: a new folder under runs/)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    add_arguments(train, TrainConfig)
    add_arguments(train, ModelConfig)
    train.add_argument("--sim-seed", type=int, default=SimulationConfig().seed,
                       help="seed of the simulated data set (kept apart from --seed)")
    return parser


def train_command(args: argparse.Namespace) -> dict:
    # Heavy imports here, so that `pyro-vrm --help` and argument errors answer at once.
    from .baseline import fit_reward_model
    from .evaluate import summarize_reward_model, summarize_vrm
    from .runs import RunDir, new_run_dir
    from .simulate import simulate
    from .train import fit_vrm

    model_config, train_config = from_arguments(ModelConfig, args), from_arguments(TrainConfig, args)
    data = simulate(SimulationConfig(seed=args.sim_seed))
    run = RunDir(args.out if args.out is not None else new_run_dir("runs", args.model))
    run.write_json("config.json", {
        "command": "train", "data": args.data, "model": args.model, "simulation": asdict(data.config),
        "model_config": asdict(model_config), "train_config": asdict(train_config)})
    if args.model == "vrm":
        vrm, standardizer = fit_vrm(data.train, model_config, train_config, run=run, progress=not args.quiet)
        summary = summarize_vrm(vrm, data.train, data.test, standardizer, data.truth,
                                train_config.sup_temperature)
    else:
        head = fit_reward_model(data.train, model_config, train_config, run=run, progress=not args.quiet)
        summary = summarize_reward_model(head, data.train, data.test, data.truth)
    summary["run_dir"] = str(run.path)
    run.write_json("summary.json", summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from_arguments(ModelConfig, args), from_arguments(TrainConfig, args)
    except ConfigError as err:
        parser.error(str(err))
    from .train import NonFiniteLoss
    try:
        summary = train_command(args)
    except NonFiniteLoss as err:
        print(f"pyro-vrm: training stopped: {err}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
