"""The VRM objective the benchmarks time: the one ``fit_vrm`` trains under a preset.
``tempered`` (the benchmarks' default): fixed priors, every KL weighted by 0.01, the aspect scores
observed (a ~ N(s(z), sigma_a), sigma_a learned per aspect under its HalfNormal prior) when the
data carry them, no supervision term. ``paper``: the paper's objective, KL weight 1, lambda 0.1 on
E[w], no aspect likelihood. ``recommended`` (training's default): conditional priors, KL weight 1,
a preference scale; its weight decay, which ``fit_vrm`` chooses by validation fits before
training, is timed at 0 (a step costs the same at any decay). Built from the package's public
names only.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace

import torch

from pyro_vrm import (PRESETS, VRM, ModelConfig, Standardizer, TrainConfig, VRMLoss, VRMObjective, make_elbo, preset,
                      resolve_model_config, supervision_setup)

PRESET_NAMES = tuple(PRESETS)
OBJECTIVE_KEYS = ("kl_weight", "lambda_sup", "observe_aspects")  # what objective_fields reports


def add_preset_argument(parser: argparse.ArgumentParser, names: tuple[str, ...] = PRESET_NAMES) -> None:
    parser.add_argument("--preset", choices=names, default="tempered",
                        help="the objective timed: tempered (fixed priors, KL weight 0.01, aspects observed with a "
                             "learned sigma_a, no supervision), paper (KL weight 1, lambda 0.1, no aspect likelihood)"
                             + (" or recommended (training's default: conditional priors, KL weight 1)"
                                if "recommended" in names else ""))


@dataclass
class Recipe:
    """What ``fit_vrm`` builds from a training table and a preset, before its first step.

    model_config: with ``observe_aspects`` and ``num_objectives`` resolved from the data, as
        ``fit_vrm`` resolves them.
    train_config: the preset's optimisation and objective settings.
    standardizer, targets: the aspect standardizer and the (N, K) supervision targets (None
        without scores); the targets ride in every batch, as in the loop.
    aspects: the standardized (chosen (N, K), rejected (N, K)) tables the model observes, or None;
        on the training table's device, as ``fit_vrm`` keeps them (``VRMLoss`` moves each
        batch's rows to the batch's device).
    """

    model_config: ModelConfig
    train_config: TrainConfig
    standardizer: Standardizer | None
    targets: torch.Tensor | None
    aspects: tuple[torch.Tensor, torch.Tensor] | None

    def objective(self) -> VRMObjective:
        cfg = self.train_config
        return VRMObjective(make_elbo(cfg), cfg.lambda_sup, cfg.sup_loss, cfg.kl_weight)

    def loss(self, vrm: VRM) -> VRMLoss:
        """The loss module the training loop steps."""
        return VRMLoss(vrm, self.objective(), self.aspects, jit=self.train_config.jit)


def recipe(train, preset_name: str = "tempered", model_config: ModelConfig = ModelConfig(),
           train_config: TrainConfig = TrainConfig()) -> Recipe:
    """The :class:`Recipe` of ``train`` (``PreferenceFeatures`` or ``TextPairs``) under
    ``preset_name`` applied over ``model_config`` and ``train_config``."""
    model, cfg = preset(preset_name, model_config, train_config)
    if cfg.weight_decay == "auto":
        cfg = replace(cfg, weight_decay=0.0)
    model = resolve_model_config(train, model)  # as fit_vrm resolves it
    standardizer, targets = supervision_setup(train, cfg)
    aspects = (standardizer(train.chosen_scores), standardizer(train.rejected_scores)) if model.observe_aspects else None
    return Recipe(model, cfg, standardizer, targets, aspects)


def objective_fields(r: Recipe) -> dict:
    """The objective's settings, for a benchmark's JSON line."""
    values = (r.train_config.kl_weight, r.train_config.lambda_sup, r.model_config.observe_aspects)
    return dict(zip(OBJECTIVE_KEYS, values))
