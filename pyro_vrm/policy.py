"""A tiny offline policy for the PPO demonstration: built from a config in code, no download.

The tokenizer is word-level (``tokenizers`` WordLevel with Metaspace pre-tokenization, so
decoding gives back the text exactly) over the words of the given texts; a prompt is encoded as
``<bos> prompt <sep>`` and the policy continues it with a response and ``<eos>``. The model is a
few-layer Llama, warm-started by supervised training on (prompt, response) text so that its
samples are responses of the kind a reward model was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from .config import check_positive, option

if TYPE_CHECKING:  # transformers is imported where the policy is built
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

__all__ = ["TinyPolicyConfig", "word_tokenizer", "tiny_policy", "warm_start"]

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<sep>", "<unk>")


@dataclass(frozen=True)
class TinyPolicyConfig:
    """The offline demonstration's policy: a small Llama, warm-started on responses."""

    policy_layers: int = field(default=2, metadata=option("transformer layers of the tiny policy"))
    policy_width: int = field(default=64, metadata=option("hidden size of the tiny policy"))
    warm_start_steps: int = field(default=300, metadata=option("supervised steps on (prompt, response) text"))
    warm_start_batch_size: int = field(default=32, metadata=option("sequences per supervised step"))
    warm_start_lr: float = field(default=3e-3, metadata=option("learning rate (AdamW) of the warm start"))

    def __post_init__(self):
        check_positive(self, "policy_layers", "policy_width", "warm_start_steps", "warm_start_batch_size",
                  "warm_start_lr")


def word_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the words of ``texts``; prompts are encoded ``<bos> ... <sep>``.

    Examples:
        >>> tok = word_tokenizer(["Hi there.", "Great question! Yes."])
        >>> ids = tok("Hi there.").input_ids
        >>> tok.convert_ids_to_tokens(ids), tok.decode(ids, skip_special_tokens=True)
        (['<bos>', '▁Hi', '▁there.', '<sep>'], 'Hi there.')
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Metaspace()
    words = sorted({word for text in texts for word, _ in pre.pre_tokenize_str(text)})
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer, backend.decoder = pre, decoders.Metaspace()
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A <sep>", special_tokens=[("<bos>", vocab["<bos>"]), ("<sep>", vocab["<sep>"])])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>",
                                   eos_token="<eos>", sep_token="<sep>", unk_token="<unk>",
                                   padding_side="left")


def tiny_policy(texts: list[str], config: TinyPolicyConfig = TinyPolicyConfig(), max_length: int = 256,
                seed: int = 0) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """(model, tokenizer): an untrained few-layer Llama over the words of ``texts``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = word_tokenizer(texts)
    heads = max(1, config.policy_width // 16)
    llama = LlamaConfig(vocab_size=len(tokenizer), hidden_size=config.policy_width,
                        intermediate_size=2 * config.policy_width, num_hidden_layers=config.policy_layers,
                        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=max_length,
                        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
    torch.manual_seed(seed)
    return LlamaForCausalLM(llama), tokenizer


def warm_start(model, tokenizer, prompts: list[str], responses: list[str],
               config: TinyPolicyConfig = TinyPolicyConfig(), seed: int = 0) -> list[float]:
    """Supervised training on ``<bos> prompt <sep> response <eos>``, loss on the response tokens
    only; returns the loss of each step."""
    if len(prompts) != len(responses) or not prompts:
        raise ValueError(f"warm_start needs as many prompts as responses, at least one; got "
                         f"{len(prompts)} and {len(responses)}")
    prompt_ids = tokenizer(list(prompts)).input_ids
    response_ids = tokenizer(list(responses), add_special_tokens=False).input_ids
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.warm_start_lr, weight_decay=0.0)
    model.train()
    losses = []
    for _ in range(config.warm_start_steps):
        rows = torch.randint(len(prompts), (config.warm_start_batch_size,), generator=g).tolist()
        sequences = [(prompt_ids[i], response_ids[i] + [tokenizer.eos_token_id]) for i in rows]
        width = max(len(p) + len(r) for p, r in sequences)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id)
        labels = torch.full((len(rows), width), -100)
        for row, (p, r) in enumerate(sequences):  # right padding: positions start at 0 in every row
            ids[row, : len(p) + len(r)] = torch.tensor(p + r)
            labels[row, len(p): len(p) + len(r)] = torch.tensor(r)
        loss = model(input_ids=ids, attention_mask=(ids != tokenizer.pad_token_id).long(), labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.detach().item())
    model.eval()
    return losses
