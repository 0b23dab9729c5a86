"""From a named data source to what training and evaluation read: validated text pairs, the
backbone, hidden states through the feature cache, and the splits.

The command line and the experiment scripts share these steps.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import datasets
import torch

from .backbone import Backbone
from .config import BackboneConfig, ConfigError
from .features import PreferenceFeatures, split_by_prompt

__all__ = ["load_text_pairs", "load_backbone", "text_features", "load_text_features", "split_index", "split_text",
           "ppo_prompts"]


def load_text_pairs(data: str, split: str | None = None, layout: str | None = None,
                    sim_seed: int = 0) -> tuple[datasets.Dataset, object | None]:
    """(validated pairs, load report or None): ``simulated-text`` generated with ``sim_seed``, or a
    file or hub id read by :func:`pyro_vrm.data.load_preferences`."""
    from .data import load_preferences
    from .simulated_text import TextSimulationConfig, simulate_text

    if data == "simulated-text":
        return simulate_text(TextSimulationConfig(seed=sim_seed)), None
    return load_preferences(data, split=split, layout=layout)


def load_backbone(backbone: BackboneConfig | dict, finetune: dict | None = None,
                  adapters: dict[str, torch.Tensor] | None = None, device: str | None = None) -> Backbone:
    """The backbone of ``BackboneConfig`` (or a run's dict of it); for a run that trained LoRA
    adapters (``finetune``, a ``FinetuneConfig`` dict), with the ``adapters`` weights."""
    config = asdict(backbone) if isinstance(backbone, BackboneConfig) else dict(backbone)
    if (finetune or {}).get("finetune", "none") != "none":
        from .finetune import load_lora_backbone

        return load_lora_backbone(config, finetune, adapters, device)
    cfg = BackboneConfig(**config)
    return Backbone.from_pretrained(cfg.backbone, cfg.max_length, cfg.feature_batch_size, device=device)


def text_features(pairs: datasets.Dataset, backbone: Backbone, cache_dir: Path | None = None,
                  report=None) -> tuple[PreferenceFeatures, dict]:
    """(hidden states of ``pairs`` through the feature cache, a record of what the cache did)."""
    from .featurize import featurize

    result = featurize(pairs, backbone, cache_dir)
    record = {"cache": str(result.path), "from_cache": result.from_cache, "pairs": len(pairs),
              "hidden_size": result.features.hidden_size, "tokens": result.num_tokens,
              "load_report": None if report is None else str(report)}
    return result.features, record


def load_text_features(data: str, backbone: BackboneConfig, cache_dir: Path | None = None,
                       split: str | None = None, layout: str | None = None, sim_seed: int = 0):
    """(pairs, features, record): :func:`load_text_pairs`, then :func:`text_features` through
    the frozen backbone."""
    pairs, report = load_text_pairs(data, split, layout, sim_seed)
    features, record = text_features(pairs, load_backbone(backbone), cache_dir, report)
    return pairs, features, record


def split_index(pairs: datasets.Dataset, prompt_id: torch.Tensor, test_fraction: float,
                seed: int) -> dict[str, torch.Tensor]:
    """Row indices per split: the data's own ``split`` column (train, test and any other, such
    as simulated-text's shifted split), or a split of the prompts into train and test."""
    if "split" in pairs.column_names:
        names = pairs["split"]
        index = {name: torch.tensor([i for i, s in enumerate(names) if s == name]) for name in dict.fromkeys(names)}
        if not {"train", "test"} <= set(index):
            raise ConfigError(f"the data's split column needs 'train' and 'test' rows, found {sorted(index)}")
        return index
    return split_by_prompt(prompt_id, test_fraction, seed)


def split_text(pairs: datasets.Dataset, table, test_fraction: float, seed: int):
    """(splits, truth): ``table`` (PreferenceFeatures or TextPairs) cut by :func:`split_index`,
    and the simulator's true weights and rewards per split where the data has them."""
    index = split_index(pairs, table.prompt_id, test_fraction, seed)
    truth = None
    if "weights" in pairs.column_names:  # simulated text keeps its truth
        columns = {"objective_weights": "weights", "chosen_reward": "reward_chosen",
                   "rejected_reward": "reward_rejected"}
        truth = {split: {k: torch.tensor(pairs[c])[i] for k, c in columns.items()} for split, i in index.items()}
    return {name: table.select(i) for name, i in index.items()}, truth


def ppo_prompts(path: Path | None, text: dict, seed: int) -> tuple[list[str], list[str]]:
    """(training prompts, held prompts): simulated-text's train and test prompts, or a file's
    prompts with a seeded fifth held out."""
    if path is None:
        return [list(dict.fromkeys(p for p, s in zip(text["prompt"], text["split"]) if s == split))
                for split in ("train", "test")]
    if not path.exists():
        raise ConfigError(f"--prompts {path}: no such file")
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if path.suffix == ".jsonl":
        prompts = []
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ConfigError(f"--prompts {path}, line {number}: not JSON ({err.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
                raise ConfigError(f"--prompts {path}, line {number}: needs a string field 'prompt'")
            prompts.append(record["prompt"])
    else:
        prompts = lines
    if len(prompts) < 2:
        raise ConfigError(f"--prompts {path}: needs at least 2 prompts (one to train on, one held), "
                          f"found {len(prompts)}")
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(seed)).tolist()
    held = max(1, len(prompts) // 5)
    return [prompts[i] for i in order[held:]], [prompts[i] for i in order[:held]]
