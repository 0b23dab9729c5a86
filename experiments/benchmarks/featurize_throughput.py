"""Featurizer throughput: pyro_vrm's Backbone against a naive loop, same model, same pairs.

The naive loop is what one writes first: batches in data order, every sequence padded to
max_length, the prompt encoded separately for every response. Both are charged the same useful
tokens (those of pyro_vrm's sequences), so the ratio is a ratio of wall-clock times. The pairs
are real HH-RLHF dialogues from ../shared/data when present (a realistic length mix), otherwise
simulated-text. It also times the feature cache: a cold ``featurize`` (computed and stored)
against a warm one (loaded). Prints one JSON line ending with
``"ratio": naive time / pyro_vrm time``.

    python experiments/benchmarks/featurize_throughput.py [--pairs 96] [--max-length 512]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import tempfile

import datasets
import torch

from pyro_vrm.backbone import Backbone
from pyro_vrm.config import BackboneConfig
from pyro_vrm.featurize import featurize
from pyro_vrm.data import load_preferences
from pyro_vrm.simulated_text import TextSimulationConfig, simulate_text

HH = Path(__file__).resolve().parents[3] / "shared" / "data" / "hh-rlhf-harmless-base-test-even.jsonl.gz"


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@torch.no_grad()
def naive(backbone: Backbone, prompts, chosen, rejected, batch_size: int) -> None:
    tok, model, length = backbone.tokenizer, backbone.model, backbone.max_length

    def run(*texts):
        inputs = tok(*texts, padding="max_length", truncation=True, max_length=length, return_tensors="pt")
        model(**inputs.to(backbone.device))

    for start in range(0, len(prompts), batch_size):
        part = slice(start, start + batch_size)
        run(prompts[part])
        for responses in (chosen, rejected):
            run(prompts[part], responses[part])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=96)
    parser.add_argument("--max-length", type=int, default=BackboneConfig().max_length)
    parser.add_argument("--batch-size", type=int, default=BackboneConfig().feature_batch_size)
    parser.add_argument("--backbone", default="minilm")
    args = parser.parse_args(argv)
    datasets.disable_progress_bars()

    if HH.exists():
        pairs, source = load_preferences(str(HH))[0].select(range(args.pairs)), "hh-rlhf sample"
    else:
        pairs, source = simulate_text(TextSimulationConfig(num_prompts=args.pairs))[: args.pairs], "simulated-text"
        pairs = {k: pairs[k] for k in ("prompt", "chosen", "rejected")}
    prompts, chosen, rejected = pairs["prompt"], pairs["chosen"], pairs["rejected"]
    backbone = Backbone.from_pretrained(args.backbone, args.max_length, args.batch_size)
    backbone.encode_pairs(prompts[:4], chosen[:4], rejected[:4])  # warm-up

    start = time.perf_counter()
    tokens = backbone.encode_pairs(prompts, chosen, rejected).num_tokens
    ours = time.perf_counter() - start
    table = datasets.Dataset.from_dict({"prompt": prompts, "chosen": chosen, "rejected": rejected})
    with tempfile.TemporaryDirectory() as cache:
        cold, warm = (_timed(lambda: featurize(table, backbone, Path(cache))) for _ in range(2))
    start = time.perf_counter()
    naive(backbone, prompts, chosen, rejected, args.batch_size)
    theirs = time.perf_counter() - start
    result = {"benchmark": "featurize_throughput", "source": source, "backbone": args.backbone,
              "device": str(backbone.device), "pairs": len(prompts), "max_length": args.max_length,
              "tokens": tokens, "pyro_vrm_tokens_per_s": round(tokens / ours),
              "cache_cold_s": round(cold, 3), "cache_warm_s": round(warm, 3),
              "cache_speedup": round(cold / warm, 1),
              "naive_tokens_per_s": round(tokens / theirs), "ratio": round(theirs / ours, 3)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
