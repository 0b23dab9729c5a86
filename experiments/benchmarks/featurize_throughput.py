"""Featurizer throughput: pyro_vrm's Backbone against a naive loop, same model, same pairs.

The naive loop is what one writes first: batches in data order, every sequence padded to
max_length, the prompt encoded separately for every response. Both are charged the same useful
tokens (those of pyro_vrm's sequences), so the ratio is a ratio of wall-clock times. The pairs
are real HH-RLHF dialogues from ../shared/data when present (a realistic length mix), otherwise
simulated-text. It also times the feature cache: a cold ``pyro_vrm.text_features`` (computed and
stored) against a warm one (loaded), each checked by its record's ``from_cache``. Prints one JSON line ending with
``"ratio": naive time / pyro_vrm time``.

``--shape qwen3-0.6b|qwen3-4b|tiny`` swaps MiniLM for a randomly initialised Qwen3 model of that
shape (``transformers.Qwen3Config``, nothing downloaded; the MiniLM tokenizer feeds it, its ids
lie inside Qwen3's vocabulary) and adds model FLOPs and MFU, forward only:

    FLOPs per token = 2 x non-embedding parameters + 2 x 2 x layers x context x (heads x head_dim)

(a multiply-add is 2 FLOPs; the second term is QK^T and AV over the token's sequence of length
``context``, counted without a causal discount as in PaLM's appendix B). A run's model FLOPs
are the sum of that over the sequences pyro_vrm feeds the model, charged to the naive loop too.
MFU = model FLOPs / s / the device's peak: 989 TFLOP/s dense bf16 on an H100 or H200; elsewhere
a peak measured in the same run with a large matmul in the model's dtype (fp32 on a CPU). The
feature cache is timed only for the default backbone. On a CPU keep the Qwen shapes small:

    python experiments/benchmarks/featurize_throughput.py [--pairs 96] [--max-length 512]
    python experiments/benchmarks/featurize_throughput.py --shape qwen3-0.6b --pairs 8 --max-length 128
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import datasets
import torch
from transformers import AutoModel, AutoTokenizer, Qwen3Config

from pyro_vrm import (Backbone, BackboneConfig, TextSimulationConfig, load_backbone, load_preferences,
                      resolve_backbone, simulate_text, text_features)
from timing import device_name, synchronizer

HH = Path(__file__).resolve().parents[3] / "shared" / "data" / "hh-rlhf-harmless-base-test-even.jsonl.gz"

# From the models' config.json (Qwen/Qwen3-0.6B, Qwen/Qwen3-4B); both tie the word embeddings.
# "tiny" is for tests, with MiniLM's vocabulary (the tokenizer that feeds these models here).
QWEN3_SHAPES = {
    "qwen3-0.6b": dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                       head_dim=128, intermediate_size=3072, vocab_size=151936),
    "qwen3-4b": dict(hidden_size=2560, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                     head_dim=128, intermediate_size=9728, vocab_size=151936),
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=8, intermediate_size=64, vocab_size=30522),
}
DENSE_BF16_PEAK = {"H100": 989e12, "H200": 989e12}  # FLOP/s, SXM, tensor cores without sparsity


def qwen3_config(shape: str) -> Qwen3Config:
    # No KV cache: a feature pass never decodes (the hub configs say use_cache=True, and
    # Backbone does not turn it off, so a hub model also fills a cache it never reads).
    return Qwen3Config(**QWEN3_SHAPES[shape], tie_word_embeddings=True, use_cache=False)


def non_embedding_parameters(c: Qwen3Config) -> int:
    """Parameters of Qwen3Model outside ``embed_tokens``: per layer the q, k, v, o projections
    (no biases), q_norm and k_norm (head_dim each), the SwiGLU MLP (gate, up, down) and two
    RMSNorms; then the final norm."""
    h, q = c.hidden_size, c.num_attention_heads * c.head_dim
    kv = c.num_key_value_heads * c.head_dim
    layer = 2 * h * q + 2 * h * kv + 3 * h * c.intermediate_size + 2 * h + 2 * c.head_dim
    return c.num_hidden_layers * layer + h


def flops_per_token(c: Qwen3Config, context: int) -> int:
    """Forward model FLOPs of one token in a sequence of ``context`` tokens (module docstring)."""
    return 2 * non_embedding_parameters(c) + 2 * 2 * c.num_hidden_layers * context * c.num_attention_heads * c.head_dim


def qwen3_backbone(shape: str, max_length: int, batch_size: int, device: str) -> Backbone:
    """A randomly initialised Qwen3Model of ``shape`` on ``device`` (bf16 on a GPU, fp32 on a
    CPU, as ``Backbone.from_pretrained``), fed by the MiniLM tokenizer."""
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    with torch.device(device):
        model = AutoModel.from_config(qwen3_config(shape), dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(resolve_backbone("minilm"))
    return Backbone(model, tokenizer, max_length, batch_size, name=f"random-init {shape}")


def sequence_lengths(model: torch.nn.Module) -> list[int]:
    """A list that fills with the unpadded length of every sequence ``model`` is called on."""
    lengths: list[int] = []
    model.register_forward_pre_hook(
        lambda _, args, kwargs: lengths.extend(kwargs["attention_mask"].sum(-1).tolist()), with_kwargs=True)
    return lengths


def peak_flops(device: torch.device, dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> tuple[float, str]:
    """(FLOP/s, where it came from): the datasheet's dense bf16 peak on an H100/H200, else the best
    of ``repeats`` ``size``-cubed matmuls in ``dtype``, measured now."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for gpu, peak in DENSE_BF16_PEAK.items():
            if gpu in name:
                return peak, f"{gpu} datasheet, dense bf16"
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    sync = synchronizer(device)
    best = float("inf")
    for _ in range(repeats + 1):  # the first one warms up
        sync()
        start = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best, f"measured: best {size}^3 {str(dtype).removeprefix('torch.')} matmul of {repeats}"


def timed_features(table: datasets.Dataset, backbone: Backbone, cache_dir: Path, expect_cached: bool) -> float:
    """Seconds ``text_features`` takes on ``table`` through the cache in ``cache_dir``; raises
    if the cache was (``expect_cached``) or was not used otherwise than expected."""
    start = time.perf_counter()
    _, record = text_features(table, backbone, cache_dir)
    seconds = time.perf_counter() - start
    if record["from_cache"] != expect_cached:
        raise RuntimeError(f"expected a {'warm' if expect_cached else 'cold'} cache, got {record}")
    return seconds


@torch.no_grad()
def naive(backbone: Backbone, prompts, chosen, rejected, batch_size: int) -> None:
    tok, model, length = backbone.tokenizer, backbone.model, backbone.max_length

    def run(*texts):
        inputs = tok(*texts, padding="max_length", truncation=True, max_length=length, return_tensors="pt")
        if backbone.causal:  # a decoder takes no segment ids
            inputs.pop("token_type_ids", None)
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
    parser.add_argument("--shape", choices=sorted(QWEN3_SHAPES),
                        help="a random-init Qwen3 model of this shape instead of --backbone; adds MFU")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    datasets.disable_progress_bars()

    if HH.exists():
        pairs, source = load_preferences(str(HH))[0].select(range(args.pairs)), "hh-rlhf sample"
    else:
        pairs, source = simulate_text(TextSimulationConfig(num_prompts=args.pairs))[: args.pairs], "simulated-text"
        pairs = {k: pairs[k] for k in ("prompt", "chosen", "rejected")}
    prompts, chosen, rejected = pairs["prompt"], pairs["chosen"], pairs["rejected"]
    if args.shape:
        backbone = qwen3_backbone(args.shape, args.max_length, args.batch_size, args.device)
    else:
        backbone = load_backbone(BackboneConfig(args.backbone, args.max_length, args.batch_size), device=args.device)
    backbone.encode_pairs(prompts[:4], chosen[:4], rejected[:4])  # warm-up
    lengths = sequence_lengths(backbone.model)

    sync = synchronizer(backbone.device)
    start = time.perf_counter()
    tokens = backbone.encode_pairs(prompts, chosen, rejected).num_tokens
    sync()
    ours = time.perf_counter() - start
    lengths = lengths[:]  # pyro_vrm's sequences only, before the naive loop adds its own
    assert sum(lengths) == tokens, "the length hook must see exactly the tokens encode_pairs counts"
    cache = {}
    if not args.shape:
        table = datasets.Dataset.from_dict({"prompt": prompts, "chosen": chosen, "rejected": rejected})
        with tempfile.TemporaryDirectory() as folder:
            cold, warm = (timed_features(table, backbone, Path(folder), cached) for cached in (False, True))
        cache = {"cache_cold_s": round(cold, 3), "cache_warm_s": round(warm, 3), "cache_speedup": round(cold / warm, 1)}
    start = time.perf_counter()
    naive(backbone, prompts, chosen, rejected, args.batch_size)
    sync()
    theirs = time.perf_counter() - start
    result = {"benchmark": "featurize_throughput", "source": source,
              "backbone": f"random-init {args.shape}" if args.shape else args.backbone,
              "device": device_name(backbone.device), "pairs": len(prompts), "max_length": args.max_length,
              "tokens": tokens, "pyro_vrm_tokens_per_s": round(tokens / ours), **cache,
              "naive_tokens_per_s": round(tokens / theirs)}
    if args.shape:
        config = backbone.model.config
        flops = sum(n * flops_per_token(config, n) for n in lengths)
        peak, peak_source = peak_flops(backbone.device, backbone.model.dtype)
        result |= {"dtype": str(backbone.model.dtype).removeprefix("torch."),
                   "non_embedding_params": non_embedding_parameters(config),
                   "model_flops_per_token": round(flops / tokens), "peak_tflops": round(peak / 1e12, 4),
                   "peak_source": peak_source, "pyro_vrm_mfu": float(f"{flops / ours / peak:.3g}"),
                   "naive_mfu": float(f"{flops / theirs / peak:.3g}")}
    result["ratio"] = round(theirs / ours, 3)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
