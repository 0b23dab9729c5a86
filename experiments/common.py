"""What the experiment scripts share: data through the feature cache, fits of VRM and its
controls on the same data, split, minibatches, seed and step budget, tables and plots.

Every script runs with no arguments on the offline default (MiniLM features of simulated-text);
``--data`` takes anything ``pyro-vrm train --data`` takes (``hh`` is the real HH-RLHF sample in
../shared/data), ``--backbone`` any transformers model. The models compared are named as in
:data:`MODELS`: ``vrm`` (the package default, the recommended preset), ``vrm-tempered`` (fixed
priors, KL weight 0.01), ``vrm-auto`` (fixed priors, ``--kl-weight auto``), ``vrm-paper`` (the
paper's objective), ``vrm-folds`` (the default, its weight decay chosen on folds of the training
prompts: :data:`OVERRIDES`), ``rm``, ``rm-tuned``, ``rm-temperature`` (the RM with a temperature
fitted on validation pairs) and ``twin``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import datasets
import matplotlib
import transformers

matplotlib.use("Agg")
datasets.disable_progress_bars()
transformers.utils.logging.disable_progress_bar()
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from records import show, table, write_results  # noqa: E402,F401  (the scripts import them from here)
from pyro_vrm.pipeline import split_index  # noqa: E402
from pyro_vrm import (BackboneConfig, ModelConfig, RunDir, TrainConfig, fit_reward_model,  # noqa: E402
                      fit_temperature_scaled_reward_model, fit_tuned_reward_model, fit_twin, fit_vrm,
                      load_text_features, pairwise_accuracy, pearson, predict, preset, split_text,
                      supervision_setup, supervision_target, weight_means)

HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf-harmless-base-test-even.jsonl.gz"
UF = Path(__file__).resolve().parents[2] / "shared" / "data" / "ultrafeedback-binarized-sample-train1000.jsonl.gz"
SHARED = {"hh": HH, "uf": UF}

# name -> (model kind, preset): the models an experiment can compare
MODELS = {"vrm": ("vrm", "recommended"), "vrm-tempered": ("vrm", "tempered"), "vrm-auto": ("vrm", "tempered"),
          "vrm-folds": ("vrm", "recommended"), "vrm-paper": ("vrm", "paper"), "rm": ("rm", "recommended"),
          "rm-tuned": ("rm-tuned", "recommended"), "rm-temperature": ("rm-temperature", "recommended"),
          "twin": ("twin", "recommended")}
# what a model changes from its preset's TrainConfig
OVERRIDES = {"vrm-auto": {"kl_weight": "auto"}, "vrm-folds": {"validation_folds": 5, "validation_patience": 20}}
LABELS = {"vrm": "VRM", "vrm-tempered": "VRM, KL weight 0.01", "vrm-auto": "VRM, KL weight chosen on validation",
          "vrm-folds": f"VRM, weight decay chosen on {OVERRIDES['vrm-folds']['validation_folds']} folds",
          "vrm-paper": "VRM, paper's objective", "rm": "RM", "rm-tuned": "RM, tuned weight decay",
          "rm-temperature": "RM, temperature-scaled", "twin": "twin"}


def parser(description: str, steps: int = 1000, seeds: int | None = 1,
           models: str | None = "vrm,rm") -> argparse.ArgumentParser:
    """The flags every script shares; ``--seeds`` and ``--models`` only where ``seeds`` and
    ``models`` (their defaults) are given."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", default="simulated-text",
                   help="simulated-text (default), hh or uf (the HH-RLHF and UltraFeedback samples in "
                        "../shared/data), a file or a hub id")
    p.add_argument("--backbone", default="minilm", help="minilm, a hub id or a local model folder")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--steps", type=int, default=steps)
    if seeds is not None:
        p.add_argument("--seeds", type=int, default=seeds, help="seeds 0 .. N-1")
    if models is not None:
        p.add_argument("--models", default=models, help=f"comma-separated, from {', '.join(MODELS)}")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None, help="output folder (default experiments/out/<script>)")
    return p


def model_names(args) -> list[str]:
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        sys.exit(f"--models: unknown {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    return names


def load(args) -> dict:
    """{"train", "test", maybe "shifted": PreferenceFeatures, "pairs": the text, "test_pairs": the test
    split's text rows, in the order of "test", "truth": ...}."""
    data = str(SHARED[args.data]) if args.data in SHARED else args.data
    if args.data in SHARED and not SHARED[args.data].exists():
        sys.exit(f"--data {args.data} needs {SHARED[args.data]}, which is absent")
    backbone = BackboneConfig(backbone=args.backbone, max_length=args.max_length)
    pairs, features, _ = load_text_features(data, backbone, args.cache_dir)
    splits, truth = split_text(pairs, features, test_fraction=0.2, seed=0)
    test_pairs = pairs.select(split_index(pairs, features.prompt_id, test_fraction=0.2, seed=0)["test"].tolist())
    return {**splits, "pairs": pairs, "test_pairs": test_pairs, "truth": truth}


def configs(name: str, seed: int = 0, steps: int = 1000, log_every: int = 50,
            model_config: ModelConfig = ModelConfig(), **train_overrides) -> tuple[ModelConfig, TrainConfig]:
    """The configurations of model ``name`` of :data:`MODELS`: its preset, then the overrides."""
    train = TrainConfig(steps=steps, seed=seed, log_every=log_every, checkpoint_every=steps)
    model, train = preset(MODELS[name][1], model_config, train)
    return model, replace(train, **{**OVERRIDES.get(name, {}), **train_overrides})


def curve(name: str, data: dict, out: Path, seed: int = 0, steps: int = 1000, log_every: int = 50,
          model_config: ModelConfig = ModelConfig(), **train_overrides) -> tuple[list[dict], object]:
    """Fit model ``name`` of :data:`MODELS`; return its metrics per logged step, with the accuracy
    on the test pairs (``eval_accuracy``) and, for VRM and the twin, how well E[w] tracks the
    aspect target on them (``eval_target_corr``), and the fitted model."""
    model_config, config = configs(name, seed, steps, log_every, model_config, **train_overrides)
    monitor = _monitor(data["test"], data["train"], config)
    run, kind = RunDir(out), MODELS[name][0]
    if kind == "vrm":
        model, _ = fit_vrm(data["train"], model_config, config, run=run, progress=False, monitor=monitor)
    elif kind == "twin":
        model, _ = fit_twin(data["train"], model_config, config, run=run, progress=False, monitor=monitor)
    elif kind == "rm-tuned":
        model, _ = fit_tuned_reward_model(data["train"], model_config, config, run=run, progress=False,
                                          monitor=monitor)
    elif kind == "rm-temperature":
        model, _ = fit_temperature_scaled_reward_model(data["train"], model_config, config, run=run, progress=False,
                                                       monitor=monitor)
    else:
        model = fit_reward_model(data["train"], model_config, config, run=run, progress=False, monitor=monitor)
    return run.read_metrics(), model


def _monitor(test, train, config: TrainConfig):
    standardizer, _ = supervision_setup(train, config)

    def monitor(model) -> dict:
        pred = predict(model, test)
        record = {"eval_accuracy": pairwise_accuracy(pred.mean_chosen, pred.mean_rejected)}
        mean_w = weight_means(model, test)
        if standardizer is not None and mean_w is not None:
            target = supervision_target(standardizer(test.chosen_scores), config.sup_temperature)
            record["eval_target_corr"] = pearson(mean_w, target)
        return record

    return monitor


def final(records: list[dict], key: str) -> float:
    return records[-1][key]


def mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def plot_curves(groups: dict[str, list[list[dict]]], keys: list[str], path: Path, title: str) -> None:
    """One panel per metric key; per group the mean over seeds, with the min-max band."""
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for label, runs in groups.items():
            if key not in runs[0][0]:
                continue
            common = min(len(run) for run in runs)  # early stopping (rm-tuned) ends seeds at other steps
            steps = [r["step"] for r in runs[0][:common]]
            values = torch.tensor([[r[key] for r in run[:common]] for run in runs])
            ax.plot(steps, values.mean(0), label=label)
            if len(runs) > 1:
                ax.fill_between(steps, values.min(0).values, values.max(0).values, alpha=0.2)
        ax.set(xlabel="step", title=key)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def quick_flag(p: argparse.ArgumentParser, quick: dict) -> None:
    """Add ``--quick``, its help listing ``quick``'s settings; :func:`apply_quick` applies them."""
    p.add_argument("--quick", action="store_true", help="a short setting (" + ", ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in quick.items()) + "); flags given explicitly still win")


def apply_quick(args: argparse.Namespace, argv: list[str] | None, quick: dict) -> None:
    """With ``--quick``, set each flag of ``quick`` to its quick value unless it was given."""
    given = {a.split("=")[0].lstrip("-").replace("-", "_") for a in (argv if argv is not None else sys.argv[1:])
             if a.startswith("--")}
    if args.quick:
        for name, value in quick.items():
            if name not in given:
                setattr(args, name, value)


def output_dir(args, script: str) -> Path:
    out = args.out or Path("experiments/out") / script
    out.mkdir(parents=True, exist_ok=True)
    return out
