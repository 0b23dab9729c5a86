"""End-to-end training: LoRA adapters of the backbone, trained jointly with VRM's guide and decoder
(or the Bradley-Terry head), on minibatches of text whose hidden states carry gradient.

    backbone = add_lora(Backbone.from_pretrained("minilm", max_length=128))
    train = TextPairs.from_dataset(pairs, backbone)     # the interface of PreferenceFeatures
    batch = train.batch(index, targets)                 # a PairBatch, its states with gradient
    optimizer = torch.optim.Adam([*vrm.parameters(), *trainable_parameters(backbone)])
    state = adapter_state_dict(backbone)                # into a checkpoint, and back with
    load_adapter_state_dict(backbone, state)            # the same add_lora arguments

Only the adapters train: ``peft`` freezes every base weight, which stays bit for bit as loaded.
Gradient checkpointing (non-reentrant) recomputes each layer's activations in the backward pass
instead of keeping them; like dropout it acts in train mode, which ``add_lora`` leaves the model
in. ``TextPairs.batch`` runs the model in its current mode; ``Backbone.encode`` (and so
``TextPairs.features``, for evaluation) always runs in eval mode without gradient. On a CUDA
device the base weights are bf16 and the adapters fp32 (peft's adapter autocast).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import datasets
import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from safetensors.torch import load_file, save_file
from transformers.pytorch_utils import Conv1D

from .backbone import Backbone
from .features import PairBatch, PreferenceFeatures, check_pair_rows
from .featurize import pair_labels

__all__ = ["add_lora", "default_target_modules", "trainable_parameters", "adapter_state_dict",
           "load_adapter_state_dict", "save_adapter", "load_adapter", "load_lora_backbone", "TextPairs"]

TEXT_COLUMNS = ("prompt", "chosen", "rejected")


def default_target_modules(model: torch.nn.Module) -> list[str] | None:
    """The layers LoRA adapts by default: ``None`` where peft knows the architecture (it picks,
    e.g. the attention's query and value projections), otherwise the full name of every Linear
    layer of the attention and MLP blocks (all but an output head and an encoder's pooler)."""
    if model.config.model_type in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
        return None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = [name for name, module in model.named_modules()
             if isinstance(module, (torch.nn.Linear, Conv1D)) and module is not head
             and "pooler" not in name.split(".")]
    if not names:
        raise ValueError(f"{type(model).__name__} has no Linear layer for LoRA; pass target_modules")
    return names


def add_lora(backbone: Backbone, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0,
             target_modules: list[str] | str | None = None, gradient_checkpointing: bool = True) -> Backbone:
    """A backbone whose model carries LoRA adapters (rank ``rank``, update scaled by alpha / rank,
    ``dropout`` on the adapters' input) on ``target_modules`` (default:
    :func:`default_target_modules`), base weights frozen, in train mode.

    The adapters are injected into ``backbone.model`` itself (no copy of a large model is made):
    use the returned backbone from then on. Adapters are initialised as peft does (B = 0), so the
    new backbone's states equal the old one's until a step is taken.

    Examples:
        >>> from transformers import AutoTokenizer, GPT2Config, GPT2Model
        >>> from pyro_vrm.backbone import resolve_backbone
        >>> tokenizer = AutoTokenizer.from_pretrained(resolve_backbone("minilm"))
        >>> gpt2 = GPT2Model(GPT2Config(vocab_size=tokenizer.vocab_size, n_embd=8, n_layer=1, n_head=2))
        >>> lora = add_lora(Backbone(gpt2, tokenizer, max_length=16), rank=2)
        >>> [tuple(p.shape) for p in trainable_parameters(lora)]  # A (r, in), B (out, r) of the attention's c_attn
        [(2, 8), (24, 2)]
    """
    model = backbone.model
    if isinstance(model, PeftModel):
        raise ValueError(f"backbone {backbone.name!r} already has adapters ({', '.join(model.peft_config)})")
    if rank < 1 or alpha <= 0 or not 0 <= dropout < 1:
        raise ValueError(f"LoRA needs rank >= 1, alpha > 0 and dropout in [0, 1); got rank={rank}, "
                         f"alpha={alpha}, dropout={dropout}")
    if backbone.device.type == "cuda" and model.dtype == torch.float32 and torch.cuda.is_bf16_supported():
        model.to(torch.bfloat16)
    if gradient_checkpointing:
        # Non-reentrant checkpointing passes gradients to the adapters inside a checkpointed layer
        # even though no input of the layer requires grad; transformers also hooks the input
        # embeddings to require grad (enable_input_require_grads), as peft expects.
        options = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
        else:  # transformers < 5
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
    targets = default_target_modules(model) if target_modules is None else target_modules
    transposed = any(isinstance(m, Conv1D) for m in model.modules())  # GPT-2 stores weights (in, out)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none",
                        fan_in_fan_out=transposed)
    with warnings.catch_warnings():  # peft reads transformers' deprecated is_gradient_checkpointing
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*deprecated", category=FutureWarning)
        adapted = get_peft_model(model, config)
    lora = Backbone(adapted, backbone.tokenizer, backbone.max_length, backbone.batch_size, name=backbone.name)
    adapted.train()
    return lora


def trainable_parameters(backbone: Backbone) -> list[torch.nn.Parameter]:
    """The parameters an optimizer steps: the adapters' (empty for a frozen backbone)."""
    return [p for p in backbone.model.parameters() if p.requires_grad]


def adapter_state_dict(backbone: Backbone) -> dict[str, torch.Tensor]:
    """The adapter weights alone (a few MB for a large model), as CPU copies, for a checkpoint."""
    _require_adapters(backbone)
    # save_embedding_layers=False: the embeddings are never resized here, and "auto" would look
    # the base model up on the hub.
    state = get_peft_model_state_dict(backbone.model, save_embedding_layers=False)
    return {name: tensor.detach().cpu().clone() for name, tensor in state.items()}


def load_adapter_state_dict(backbone: Backbone, state: dict[str, torch.Tensor]) -> None:
    """Put saved adapter weights into ``backbone``, made by :func:`add_lora` with the arguments of
    the saved one; names and shapes must match exactly."""
    expected = adapter_state_dict(backbone)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"adapter weights do not fit this backbone ({backbone.name!r}): missing "
                         f"{missing[:3]}{' ...' if len(missing) > 3 else ''} ({len(missing)}), unexpected "
                         f"{unexpected[:3]}{' ...' if len(unexpected) > 3 else ''} ({len(unexpected)}); "
                         "were they saved with other target modules or from another model?")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise ValueError(f"adapter weight {name} has shape {tuple(tensor.shape)}, this backbone's "
                             f"{tuple(expected[name].shape)}: was it saved with another rank?")
    set_peft_model_state_dict(backbone.model, state)


def save_adapter(backbone: Backbone, path: str | Path) -> None:
    """Write the adapter weights to a safetensors file."""
    save_file({name: t.contiguous() for name, t in adapter_state_dict(backbone).items()}, str(path))


def load_adapter(backbone: Backbone, path: str | Path) -> None:
    """Read adapter weights written by :func:`save_adapter` into ``backbone``."""
    load_adapter_state_dict(backbone, load_file(str(path)))


def load_lora_backbone(backbone_config: dict, finetune_config: dict, adapters: dict[str, torch.Tensor] | None,
                       device: str | None = None) -> Backbone:
    """The backbone of a run that trained LoRA adapters (``BackboneConfig`` and ``FinetuneConfig``
    as dicts), carrying the trained ``adapters`` weights, in eval mode."""
    if adapters is None:
        raise ValueError(f"the run trained LoRA adapters of {backbone_config['backbone']!r}, "
                         "but its checkpoint holds no adapter weights")
    backbone = Backbone.from_pretrained(backbone_config["backbone"], backbone_config["max_length"],
                                        backbone_config["feature_batch_size"], device=device)
    backbone = add_lora(backbone, finetune_config["lora_rank"], finetune_config["lora_alpha"],
                        finetune_config["lora_dropout"], gradient_checkpointing=False)
    load_adapter_state_dict(backbone, adapters)
    backbone.model.eval()
    return backbone


def _require_adapters(backbone: Backbone) -> None:
    if not isinstance(backbone.model, PeftModel):
        raise ValueError(f"backbone {backbone.name!r} has no adapters: call add_lora first")


@dataclass
class TextPairs:
    """N preference pairs as text, turned into hidden states by ``backbone`` per minibatch, with
    gradient: a source of training minibatches with the interface of :class:`PreferenceFeatures`
    (``len``, ``hidden_size``, ``num_aspects``, ``prompt_id``, scores, ``select``, ``batch``).

    prompts, chosen, rejected: N strings each.
    prompt_id: (N,) long; chosen_scores, rejected_scores: (N, K) float, or None.
    """

    backbone: Backbone
    prompts: list[str]
    chosen: list[str]
    rejected: list[str]
    prompt_id: torch.Tensor | None = None
    chosen_scores: torch.Tensor | None = None
    rejected_scores: torch.Tensor | None = None

    def __post_init__(self):
        check_pair_rows(self, len(self.prompts), [f.name for f in fields(self)[1:]])

    @classmethod
    def from_dataset(cls, pairs: datasets.Dataset, backbone: Backbone) -> TextPairs:
        """From validated pairs (``pyro_vrm.data.load_preferences``: columns prompt, chosen,
        rejected [, scores_chosen, scores_rejected]), prompt ids and scores as ``featurize`` makes them."""
        missing = [c for c in TEXT_COLUMNS if c not in pairs.column_names]
        if missing:
            raise ValueError(f"TextPairs needs the columns {', '.join(TEXT_COLUMNS)}; the data set lacks "
                             f"{', '.join(missing)} (it has {', '.join(pairs.column_names)})")
        return cls(backbone, *(list(pairs[c]) for c in TEXT_COLUMNS), **pair_labels(pairs))

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def hidden_size(self) -> int:
        return self.backbone.hidden_size

    @property
    def num_aspects(self) -> int | None:
        return None if self.chosen_scores is None else self.chosen_scores.shape[-1]

    def select(self, index: torch.Tensor) -> TextPairs:
        """The pairs at ``index``, as a new table on the same backbone (prompt ids kept)."""
        rows = torch.as_tensor(index).tolist()
        texts = ([column[i] for i in rows] for column in (self.prompts, self.chosen, self.rejected))
        tensors = (None if t is None else t[index] for t in (self.prompt_id, self.chosen_scores, self.rejected_scores))
        return TextPairs(self.backbone, *texts, *tensors)

    def batch(self, index: torch.Tensor, target: torch.Tensor | None = None) -> PairBatch:
        """A :class:`PairBatch` of the B pairs at ``index`` (``target`` is the full (N, K) table),
        its states (B, H) from one forward pass of the backbone with gradient: one sequence per
        response (a causal model's h_x from the chosen one's), as ``Backbone.encode``."""
        rows = torch.as_tensor(index).tolist()
        prompts = [self.prompts[i] for i in rows]
        responses = [self.chosen[i] for i in rows] + [self.rejected[i] for i in rows]
        prompt_state, response_state = self.backbone.states(prompts + prompts, responses)
        B = len(rows)
        return PairBatch(index, prompt_state[:B], response_state[:B], response_state[B:],
                         None if target is None else target[index])

    def features(self) -> PreferenceFeatures:
        """The states of all N pairs through the backbone as it is now, without gradient and in eval
        mode: a table for evaluation (e.g. of the held-out pairs after fine-tuning)."""
        encoded = self.backbone.encode_pairs(self.prompts, self.chosen, self.rejected)
        return PreferenceFeatures(encoded.prompt_state, encoded.chosen_state, encoded.rejected_state,
                                  self.prompt_id, self.chosen_scores, self.rejected_scores)
