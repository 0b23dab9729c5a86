"""One end-to-end LoRA training step against one step on cached features of the frozen backbone.

Both steps are the same VRM loss (``VRMLoss`` under ``--preset``, as ``fit_vrm`` builds it for
the pairs: ``tempered``, fixed priors, weights the KLs by 0.01, observes the aspect scores where
the pairs carry them (the HH-RLHF sample carries none) and has no supervision term; ``paper``
weights them 1 with lambda 0.1; ``recommended``, training's default, has conditional priors)
and the same optimizer (Adam) on the same minibatches; the LoRA step also runs the backbone forward and backward (gradient checkpointing
on, as ``add_lora`` sets it; also timed off) and steps the adapters. Pairs: the HH-RLHF
sample in ../shared/data when present, otherwise simulated-text. Backbone: ``minilm`` or
``tiny`` (a random-init 2-layer Qwen3 of width 32, MiniLM's tokenizer). On CUDA the base
weights are bf16 (as ``add_lora`` sets them). Prints one JSON line ending with
``"ratio": LoRA step / frozen-feature step``.

    python experiments/benchmarks/lora_step.py [--backbone minilm] [--batch-size 8] [--max-length 128] [--device cpu]
                                               [--preset tempered|paper|recommended]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import datasets
import pyro
import torch
from transformers import AutoModel, AutoTokenizer, Qwen3Config

from pyro_vrm import (VRM, Backbone, BackboneConfig, PairBatch, PreferenceFeatures, TextPairs, TextSimulationConfig,
                      add_lora, load_backbone, load_preferences, resolve_backbone, simulate_text, trainable_parameters)
from timing import device_name, time_interleaved
from training import Recipe, add_preset_argument, objective_fields, recipe

HH = Path(__file__).resolve().parents[3] / "shared" / "data" / "hh-rlhf-harmless-base-test-even.jsonl.gz"


def backbone_named(name: str, max_length: int, device: str) -> Backbone:
    """``pyro_vrm.load_backbone`` of ``name``, or for ``tiny`` a random-init 2-layer Qwen3 of
    width 32 fed by MiniLM's tokenizer."""
    if name != "tiny":
        return load_backbone(BackboneConfig(backbone=name, max_length=max_length), device=device)
    tokenizer = AutoTokenizer.from_pretrained(resolve_backbone("minilm"))
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=2048)
    return Backbone(AutoModel.from_config(config).to(device), tokenizer, max_length, name="tiny")


def load_pairs(num_pairs: int) -> tuple[datasets.Dataset, str]:
    if HH.exists():
        return load_preferences(str(HH))[0].select(range(num_pairs)), "hh-rlhf sample"
    pairs = simulate_text(TextSimulationConfig(num_prompts=num_pairs))
    return pairs.select(range(num_pairs)), "simulated-text"


def setup(backbone_name: str, num_pairs: int, max_length: int, gradient_checkpointing: bool = True, seed: int = 0,
          device: str = "cpu", preset_name: str = "tempered"):
    """(VRM, the pairs as text through a LoRA backbone, the same pairs as frozen features, the
    recipe of ``preset_name`` for the pairs (objective, targets, aspect tables), source), on
    ``device``. At this point the adapters are zero, so both tables give the same states."""
    pairs, source = load_pairs(num_pairs)
    backbone = add_lora(backbone_named(backbone_name, max_length, device),
                        gradient_checkpointing=gradient_checkpointing)
    text = TextPairs.from_dataset(pairs, backbone)
    frozen = text.features()
    frozen = PreferenceFeatures(*(getattr(frozen, name).to(device) for name in
                                  ("prompt_state", "chosen_state", "rejected_state")), frozen.prompt_id)
    r = recipe(text, preset_name)
    pyro.set_rng_seed(seed)
    vrm = VRM(r.model_config, text.hidden_size, r.model_config.num_objectives).to(device)
    return vrm, text, frozen, r, source


def batch_of(table, index: torch.Tensor, r: Recipe, device: torch.device) -> PairBatch:
    """The minibatch of the pairs at ``index`` on ``device`` (states from ``table``, through the
    backbone with gradient for ``TextPairs``), with the recipe's targets."""
    return PairBatch(*(None if t is None else t.to(device) for t in table.batch(index, r.targets)))


def stepper(loss, table, r: Recipe, parameters, batch_size: int):
    """A training step of ``loss`` (the VRM's ``VRMLoss``) on the next minibatch (cycling
    through the table)."""
    device = next(loss.parameters()).device
    optimizer = torch.optim.Adam(parameters, lr=1e-4)
    batches = torch.arange(len(table)).split(batch_size)
    count = [0]

    def step():
        index = batches[count[0] % len(batches)]
        count[0] += 1
        value = loss(batch_of(table, index, r, device), len(table))
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    return step


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="minilm", help="minilm, tiny, a hub id or a local path")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batches", type=int, default=4, help="distinct minibatches cycled through")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_preset_argument(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    datasets.disable_progress_bars()
    num_pairs = args.batch_size * args.batches
    vrm, text, frozen, r, source = setup(args.backbone, num_pairs, args.max_length, device=args.device,
                                         preset_name=args.preset)
    _, text_kept, _, _, _ = setup(args.backbone, num_pairs, args.max_length, gradient_checkpointing=False,
                                  device=args.device, preset_name=args.preset)
    loss, heads = r.loss(vrm), list(vrm.parameters())
    seconds = time_interleaved({
        "lora": stepper(loss, text, r, heads + trainable_parameters(text.backbone), args.batch_size),
        "lora_no_checkpointing": stepper(loss, text_kept, r, heads + trainable_parameters(text_kept.backbone),
                                         args.batch_size),
        "frozen": stepper(loss, frozen, r, heads, args.batch_size),
    }, repeats=args.repeats, rounds=args.repeats, device=args.device, warmup=1)
    tokens = text.backbone.encode_pairs(text.prompts, text.chosen, text.rejected).num_tokens
    result = {"benchmark": "lora_step", "source": source, "backbone": args.backbone, "preset": args.preset,
              **objective_fields(r), "device": device_name(args.device),
              "threads": torch.get_num_threads(), "batch_size": args.batch_size, "max_length": args.max_length,
              "adapter_parameters": sum(p.numel() for p in trainable_parameters(text.backbone)),
              "tokens_per_pair": round(tokens / num_pairs),  # prompt + chosen and prompt + rejected
              "lora_ms": round(1e3 * seconds["lora"], 1),
              "lora_no_checkpointing_ms": round(1e3 * seconds["lora_no_checkpointing"], 1),
              "frozen_ms": round(1e3 * seconds["frozen"], 2),
              "ratio": round(seconds["lora"] / seconds["frozen"], 1)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
