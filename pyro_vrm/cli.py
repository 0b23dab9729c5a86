"""Command line: ``pyro-vrm train``, ``featurize``, ``evaluate``, ``diagnose`` and ``ppo``.

Flags are generated from the configuration dataclasses, so each default lives in one place.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from dataclasses import asdict
from pathlib import Path

from .config import (PRESETS, BackboneConfig, ConfigError, FinetuneConfig, ModelConfig, TrainConfig, add_arguments,
                     from_arguments)
from .model import ConditionalPrior, Priors
from .policy import TinyPolicyConfig
from .ppo import PPOConfig
from .simulation import SimulationConfig

__all__ = ["main", "build_parser"]

PPO_DEMO_REWARD = Path("runs/vrm-simulated-text")
MODELS = ("vrm", "rm", "rm-tuned", "rm-temperature", "twin")
DATA_HELP = ("'simulated' (hidden states drawn from the VRM model), 'simulated-text' (generated "
             "preference text, see simulated_text.py), a local .jsonl/.json/.parquet/.csv[.gz] file, "
             "or a hub id such as openbmb/UltraFeedback")


def _data_arguments(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--data", default=default, help=f"preference data: {DATA_HELP}")
    parser.add_argument("--split", default=None, help="split of a hub data set (default: train)")
    parser.add_argument("--layout", default=None, choices=("pairs", "hh", "ufc", "ultrafeedback"),
                        help="layout of a text source (default: detected from its columns)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="feature cache (default: $PYRO_VRM_CACHE/features or ~/.cache/pyro_vrm/features)")
    add_arguments(parser, BackboneConfig)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyro-vrm", description="Variational Reward Modeling on Pyro")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="fit VRM (or the Bradley-Terry baseline) and summarize it")
    _data_arguments(train, default="simulated")
    train.add_argument("--model", default="vrm", choices=MODELS,
                       help="vrm: the variational reward model; rm: the Bradley-Terry baseline; rm-tuned: the "
                            "baseline with its weight decay chosen on validation pairs carved from the training "
                            "pairs; rm-temperature: the baseline with a temperature fitted on such validation pairs "
                            "(calibrated, same ranking); twin: VRM's structure fitted by maximum likelihood, without "
                            "latent noise or KL")
    train.add_argument("--preset", default="recommended", choices=tuple(PRESETS),
                       help="recommended (the defaults below, DESIGN.md 3c): learned priors p(w|h_x), p(z|h) with a "
                            "guide that reads the preference and aspects, KL weight 1, weight decay chosen on "
                            "validation pairs, aspects observed and a preference scale where the data carry them; "
                            "paper: the paper's objective exactly (fixed priors, KL weight 1, lambda 0.1, no aspect "
                            "likelihood); tempered: fixed priors, KL weight 0.01. Flags given override the preset")
    train.add_argument("--out", type=Path, default=None, help="run folder (default: a new folder under runs/)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--resume", action="store_true",
                       help="go on from the checkpoint in --out, with the same flags: a run stopped by SIGTERM "
                            "or killed ends as the uninterrupted run would")
    train.add_argument("--test-fraction", type=float, default=None,
                       help="share of prompts held out for testing, when the data has no split of its own "
                            "(simulated-text has one: the flag is refused there)")
    train.add_argument("--sim-seed", type=int, default=SimulationConfig().seed,
                       help="seed of the simulated data and of the train/test split (kept apart from --seed)")
    add_arguments(train, TrainConfig)
    add_arguments(train, ModelConfig)
    add_arguments(train, Priors, prefix="prior")
    add_arguments(train, FinetuneConfig)

    featurize = commands.add_parser("featurize", help="compute (or find cached) hidden states of a data set")
    _data_arguments(featurize, default="simulated-text")

    evaluate = commands.add_parser("evaluate", help="evaluate a run: accuracy with a bootstrap interval, "
                                   "calibration, per-subset and RewardBench scores, reward hacking")
    evaluate.add_argument("run_dir", type=Path, help="a run folder written by pyro-vrm train")
    evaluate.add_argument("--data", default=None, help=f"evaluate on this instead of the run's test split: {DATA_HELP}")
    evaluate.add_argument("--split", default=None, help="split of a hub data set")
    evaluate.add_argument("--layout", default=None, choices=("pairs", "hh", "ufc", "ultrafeedback"))
    evaluate.add_argument("--cache-dir", type=Path, default=None, help="feature cache")

    diagnose = commands.add_parser("diagnose", help="ArviZ diagnostics of a VRM run on simulated data: "
                                   "InferenceData, PSIS k-hat, a NUTS reference, plots")
    diagnose.add_argument("run_dir", type=Path, help="a run folder written by pyro-vrm train --data simulated")
    diagnose.add_argument("--num-samples", type=int, default=None,
                          help="draws from the guide per pair (default: that of pyro_vrm.diagnostics.diagnose)")
    diagnose.add_argument("--nuts-pairs", type=int, default=None,
                          help="test pairs sampled by NUTS (default: that of pyro_vrm.diagnostics.diagnose)")

    ppo = commands.add_parser("ppo", help="PPO of a causal LM policy against a VRM's posterior-mean reward "
                              "(no arguments: the offline demonstration on simulated-text)")
    ppo.add_argument("--reward", type=Path, nargs="+", default=None,
                     help="a pyro-vrm train run folder on text data or a save_pretrained folder; several run "
                          "folders make an ensemble of their fits (default: "
                          f"{PPO_DEMO_REWARD}, fitted on simulated-text first if it holds no finished run)")
    ppo.add_argument("--policy", default=None, help="a transformers causal LM id or folder (default: a tiny "
                     "word-level Llama built in code and warm-started on simulated-text responses)")
    ppo.add_argument("--prompts", type=Path, default=None, help="prompts, one per line (.txt) or a 'prompt' "
                     "field per line (.jsonl); a fifth are held out (default: simulated-text's train and test prompts)")
    ppo.add_argument("--out", type=Path, default=None, help="run folder (default: a new folder under runs/)")
    ppo.add_argument("--quiet", action="store_true", help="no progress bar")
    add_arguments(ppo, PPOConfig)
    add_arguments(ppo, TinyPolicyConfig)
    return parser


def _text_source(args: argparse.Namespace) -> dict:
    """The keyword arguments of :func:`pyro_vrm.pipeline.load_text_pairs` given on the command line."""
    return {"data": args.data, "split": args.split, "layout": args.layout, "sim_seed": getattr(args, "sim_seed", 0)}


def train_configs(args: argparse.Namespace) -> tuple[ModelConfig, TrainConfig, Priors]:
    """The configurations the flags, the preset and the defaults give, in that order of precedence."""
    model, train, priors = (from_arguments(ModelConfig, args, preset_name=args.preset),
                            from_arguments(TrainConfig, args, preset_name=args.preset),
                            from_arguments(Priors, args, prefix="prior"))
    if model.conditional_prior:
        try:
            ConditionalPrior.check_priors(priors)
        except ValueError as err:
            raise ConfigError(f"--conditional-prior: {err}") from err
    auto = [name for name in ("kl_weight", "weight_decay") if getattr(train, name) == "auto"]
    if auto and getattr(args, "finetune", "none") == "lora" and getattr(args, "model", "vrm") == "vrm":
        flag = "--" + auto[0].replace("_", "-")
        raise ConfigError(f"{flag} auto needs cached hidden states (--finetune none): with --finetune lora "
                          "give it a number")
    return model, train, priors


def train_command(args: argparse.Namespace) -> dict | None:
    """Fit, summarize, write the run folder. Under ``accelerate launch`` every process trains its
    share; the main process alone writes and returns the summary (the others return None)."""
    # Heavy imports here, so that argument errors answer at once.
    import torch

    from .ensemble import reward_statistics
    from .evaluate import summarize
    from .loop import process_state
    from .runs import RunDir, new_run_dir
    from .simulation import simulate
    from .train import (fit_reward_model, fit_temperature_scaled_reward_model, fit_tuned_reward_model, fit_twin,
                        fit_vrm)

    state = process_state()
    if args.out is None and (args.resume or state.num_processes > 1):
        raise ConfigError("name the run folder with --out to --resume a run or to train on several processes")
    model_config, train_config, priors = train_configs(args)
    finetune = from_arguments(FinetuneConfig, args)
    test_fraction = SimulationConfig().test_fraction if args.test_fraction is None else args.test_fraction
    config = {"command": "train", "data": args.data, "model": args.model, "preset": args.preset, "split": args.split,
              "layout": args.layout, "sim_seed": args.sim_seed, "test_fraction": test_fraction,
              "model_config": asdict(model_config), "train_config": asdict(train_config),
              "priors": priors.to_dict(), "priors_repr": repr(priors)}
    if args.data == "simulated":
        if finetune.finetune != "none":
            raise ConfigError("--finetune needs text data: --data simulated has hidden states only")
        data = simulate(SimulationConfig(seed=args.sim_seed, test_fraction=test_fraction))
        train, test, truth, extra = data.train, data.test, data.truth, {}
        config["simulation"] = asdict(data.config)
        evaluation = lambda: (train, test, extra)  # noqa: E731
    else:
        train, evaluation, truth = _text_training(args, state, config, finetune, train_config.seed, test_fraction)
    run = RunDir(args.out if args.out is not None else new_run_dir("runs", args.model))
    if state.is_main_process:
        run.write_json("config.json", config)
    fit = {"run": run, "progress": not args.quiet, "resume": args.resume}
    standardizer, selection = None, None
    if args.model == "vrm":
        model, standardizer = fit_vrm(train, model_config, train_config, priors, **fit)
    elif args.model == "twin":
        model, standardizer = fit_twin(train, model_config, train_config, priors, **fit)
    elif args.model == "rm-tuned":
        model, selection = fit_tuned_reward_model(train, model_config, train_config, **fit)
    elif args.model == "rm-temperature":
        model, selection = fit_temperature_scaled_reward_model(train, model_config, train_config, **fit)
    else:
        model = fit_reward_model(train, model_config, train_config, **fit)
    summary = None
    if state.is_main_process:
        train, test, extra = evaluation()
        summary = summarize(model, train, test, standardizer, truth, extra, train_config.sup_temperature)
        summary["reward_statistics"] = reward_statistics(  # its own scale: what puts it in an ensemble
            model, torch.cat([train.prompt_state] * 2), torch.cat([train.chosen_state, train.rejected_state]))
        summary.update({"model": args.model, "preset": args.preset, **_fitted_settings(args.model, run, priors),
                        "data": args.data, "train_pairs": len(train), "test_pairs": len(test),
                        "run_dir": str(run.path)})
        if args.model == "rm-tuned":
            summary["weight_decay_selection"] = selection
        elif args.model == "rm-temperature":
            summary["temperature_selection"] = selection
        run.write_json("summary.json", summary)
    if state.num_processes > 1:  # leave together, the process group closed, not torn down at exit
        state.wait_for_everyone()
        state.destroy_process_group()
    return summary


def _fitted_settings(model: str, run, priors: Priors) -> dict:
    """What the summary records of the objective a fit used, as its checkpoint holds it: VRM's KL
    weight, lambda and priors, and for VRM and the twin whether aspects were observed."""
    saved = run.checkpoint_config()
    if model == "vrm":
        settings = {"kl_weight": saved["train"]["kl_weight"], "lambda_sup": saved["train"]["lambda_sup"],
                    "weight_decay": saved["train"]["weight_decay"], "observe_aspects": saved["model"]["observe_aspects"],
                    "conditional_prior": ModelConfig.from_dict(saved["model"]).conditional_prior, "priors": repr(priors)}
        for selection in ("kl_weight_selection", "weight_decay_selection"):
            if selection in saved:
                settings[selection] = saved[selection]
        return settings
    if model == "twin":
        return {"observe_aspects": saved["model"]["observe_aspects"], "priors": repr(priors)}
    return {"weight_decay": saved["train"]["weight_decay"], "temperature": saved.get("temperature", 1.0)}


def _text_training(args: argparse.Namespace, state, config: dict, finetune: FinetuneConfig, seed: int,
                   test_fraction: float):
    """(training table, evaluation() -> (train, test, other splits) as hidden states, truth) for
    text data; records the backbone and features in ``config``. With a frozen backbone the tables
    are cached states; with ``--finetune lora`` training reads text through the LoRA backbone,
    and evaluation featurizes every pair through the trained one."""
    from .conversation import RENDERING, prompt_form
    from .pipeline import load_backbone, load_text_pairs, split_text, text_features

    backbone_config = from_arguments(BackboneConfig, args)
    config["backbone_config"], config["finetune_config"] = asdict(backbone_config), asdict(finetune)
    with state.main_process_first():  # the main process fills the caches, the others read them
        pairs, report = load_text_pairs(**_text_source(args))
        config["rendering"], config["prompt_form"] = RENDERING, prompt_form(pairs["prompt"])
        if "split" in pairs.column_names and args.test_fraction is not None:
            raise ConfigError(f"--test-fraction: {args.data} has its own train/test split")
        backbone = load_backbone(backbone_config)
        if finetune.finetune == "none":
            features, config["features"] = text_features(pairs, backbone, args.cache_dir, report)
    if finetune.finetune == "none":
        splits, truth = split_text(pairs, features, test_fraction, args.sim_seed)
        return splits["train"], lambda: _without_train(splits), truth

    from .finetune import TextPairs, add_lora
    from .loop import seed_everything

    seed_everything(seed)  # the adapters' initialisation, the same in every process and every run
    backbone = add_lora(backbone, finetune.lora_rank, finetune.lora_alpha, finetune.lora_dropout)
    splits, truth = split_text(pairs, TextPairs.from_dataset(pairs, backbone), test_fraction, args.sim_seed)

    def evaluation():
        features, config["features"] = text_features(pairs, backbone, args.cache_dir, report)
        return _without_train(split_text(pairs, features, test_fraction, args.sim_seed)[0])

    return splits["train"], evaluation, truth


def _without_train(splits: dict) -> tuple:
    """(train, test, the other splits) of a dict of splits."""
    others = {k: v for k, v in splits.items() if k not in ("train", "test")}
    return splits["train"], splits["test"], others


def evaluate_command(args: argparse.Namespace) -> dict:
    """Evaluate a run on its own test split(s) or on ``--data``; write eval.json and reliability.png."""
    from .evaluate import evaluate_predictions, hack_rate, predict
    from .fits import load_fit
    from .metrics import plot_reliability
    from .pipeline import load_backbone, load_text_pairs, split_index, text_features
    from .runs import RunDir
    from .simulation import simulate

    import torch

    run = RunDir(args.run_dir)
    if not (run.path / "config.json").exists():
        raise ConfigError(f"{run.path} is not a run folder (no config.json)")
    config = run.read_json("config.json")
    model = load_fit(run).model
    data = args.data or config["data"]
    result = {"run_dir": str(run.path), "model": config["model"], "data": data, "splits": {}}
    if data == "simulated":
        tables = {"test": (simulate(SimulationConfig(**config["simulation"])).test, None)}
    else:
        pairs, _ = load_text_pairs(data, split=args.split if args.data else config.get("split"),
                                   layout=args.layout if args.data else config.get("layout"),
                                   sim_seed=config.get("sim_seed", 0))
        backbone = load_backbone(config["backbone_config"], config.get("finetune_config"),
                                 run.checkpoint_state().get("adapters"))
        features, _ = text_features(pairs, backbone, args.cache_dir)
        subsets = list(pairs["subset"]) if "subset" in pairs.column_names else None
        if data == config["data"]:
            index = split_index(pairs, features.prompt_id, config["test_fraction"], config["sim_seed"])
            index.pop("train")
        else:
            index = {"test": torch.arange(len(pairs))}
        tables = {name: (features.select(i), None if subsets is None else [subsets[j] for j in i.tolist()])
                  for name, i in index.items()}
        if data == "simulated-text":
            from .featurize import featurize
            from .simulated_text import FILLER

            test_pairs = pairs.select(index["test"].tolist())
            result["reward_hacking"] = hack_rate(
                model, test_pairs, lambda p: featurize(p, backbone, args.cache_dir).features, FILLER)
    calibrations = {}
    for name, (features, subsets) in tables.items():
        result["splits"][name] = evaluate_predictions(predict(model, features), subsets)
        calibrations[name] = result["splits"][name]["calibration"]
    if (run.path / "summary.json").exists():
        summary = run.read_json("summary.json")
        result["pac_bayes_bound"] = summary.get("pac_bayes_bound")
    plot_reliability(calibrations, run.path / "reliability.png", title=f"{config['model']}: P(chosen wins)")
    run.write_json("eval.json", result)
    return result


def diagnose_command(args: argparse.Namespace) -> dict:
    """Run pyro_vrm.diagnostics.diagnose on a run folder; it writes diagnostics.json, .nc and .png files."""
    from .diagnostics import UnsupportedRun, diagnose

    if not (args.run_dir / "config.json").exists():
        raise ConfigError(f"{args.run_dir} is not a run folder (no config.json)")
    given = {name: getattr(args, name) for name in ("num_samples", "nuts_pairs") if getattr(args, name) is not None}
    for name, value in given.items():
        if value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {value}")
    try:
        return diagnose(args.run_dir, **given)
    except UnsupportedRun as err:
        raise ConfigError(str(err)) from err


def ppo_command(args: argparse.Namespace) -> dict:
    """PPO against a reward model (:func:`pyro_vrm.ppo_run.run_ppo`); without ``--reward``, the
    demonstration's own VRM, fitted on simulated-text once and reused."""
    from .ppo_run import load_reward, run_ppo
    from .runs import RunDir, new_run_dir

    path = args.reward
    if path is None:
        path = PPO_DEMO_REWARD
        summary = path / "summary.json"
        if not summary.exists() or not json.loads(summary.read_text()).get("conditional_prior"):  # the default
            train_command(build_parser().parse_args(["train", "--data", "simulated-text", "--out", str(path),
                                                     "--quiet"]))  # fit once; later runs reuse it
    run = RunDir(args.out if args.out is not None else new_run_dir("runs", "ppo"))
    return run_ppo(load_reward(path), run, from_arguments(PPOConfig, args), from_arguments(TinyPolicyConfig, args),
                   args.policy, args.prompts, progress=not args.quiet,
                   config={"command": "ppo", "reward": [str(p) for p in path] if isinstance(path, list) else str(path)})


def featurize_command(args: argparse.Namespace) -> dict:
    from .pipeline import load_text_features

    if args.data == "simulated":
        raise ConfigError("--data simulated has no text to featurize; use simulated-text or a file")
    return load_text_features(backbone=from_arguments(BackboneConfig, args), cache_dir=args.cache_dir,
                              **_text_source(args))[2]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command not in ("evaluate", "diagnose", "ppo"):
            from_arguments(BackboneConfig, args)
        if args.command == "ppo":
            from_arguments(PPOConfig, args), from_arguments(TinyPolicyConfig, args)
        if args.command == "train":
            from_arguments(FinetuneConfig, args)
            if args.test_fraction is not None and not 0 < args.test_fraction < 1:
                raise ConfigError(f"--test-fraction must be in (0, 1), got {args.test_fraction}")
            train_configs(args)
    except ConfigError as err:
        parser.error(str(err))
    import datasets
    import transformers

    datasets.disable_progress_bars()  # library bars on stderr would bury our one-line errors
    transformers.utils.logging.disable_progress_bar()
    from .data import DataError
    from .loop import NonFiniteLoss, TrainingInterrupted
    try:
        command = {"train": train_command, "featurize": featurize_command, "evaluate": evaluate_command,
                   "diagnose": diagnose_command, "ppo": ppo_command}
        result = command[args.command](args)
    except (DataError, ConfigError) as err:
        print(f"pyro-vrm: error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLoss as err:
        print(f"pyro-vrm: training stopped: {err}", file=sys.stderr)
        return 1
    except TrainingInterrupted as err:
        print(f"pyro-vrm: {err}", file=sys.stderr)
        return 128 + signal.SIGTERM
    if result is not None:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
