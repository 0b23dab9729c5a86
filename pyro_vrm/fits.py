"""A fitted model of any kind, built from a checkpoint's config and read from a run folder.

Three kinds are fitted (``kind`` in the checkpoint's config.json): ``vrm``
(:class:`pyro_vrm.vrm.VRM`), ``rm`` (the Bradley-Terry :class:`pyro_vrm.baseline.RewardHead`,
plain, tuned or temperature-scaled) and ``twin`` (:class:`pyro_vrm.twin.DeterministicTwin`); a
saved reward model can also hold an ``ensemble`` of fits (:class:`pyro_vrm.ensemble.Ensemble`, its members' configs
under ``members``). Evaluation and the reward model read fits through here, without the training
code.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import nn

from .baseline import RewardHead
from .config import ModelConfig
from .ensemble import Ensemble
from .model import Priors
from .runs import RunDir
from .supervision import Standardizer
from .twin import DeterministicTwin
from .vrm import build_vrm

__all__ = ["KINDS", "Fit", "build_fit", "load_fit"]

KINDS = ("vrm", "rm", "twin")


class Fit(NamedTuple):
    """A fitted model, its kind, and the aspect standardizer it was fitted with (or None)."""

    kind: str
    model: nn.Module
    standardizer: Standardizer | None


def build_fit(config: dict) -> nn.Module:
    """A model of the checkpoint config's kind with fresh parameters (every one created), into
    which the saved state dict loads."""
    kind = config.get("kind", "vrm")
    if kind == "ensemble":
        return Ensemble([build_fit(member) for member in config["members"]])
    if kind == "vrm":
        return build_vrm(config)
    model = ModelConfig.from_dict(config["model"])
    if kind == "rm":
        return RewardHead(config["hidden_size"], model.width, model.depth, config.get("temperature", 1.0))
    if kind == "twin":
        learn = bool(model.observe_aspects) and Priors.from_dict(config["priors"]).aspect_noise is None
        return DeterministicTwin(config["hidden_size"], config["num_objectives"], model.latent_dim, model.width,
                                 model.depth, model.init_concentration, learn_aspect_noise=learn,
                                 learn_preference_scale=bool(model.observe_aspects) and model.preference_scale)
    raise ValueError(f"unknown kind of fit {kind!r}: expected one of {', '.join(KINDS)} or ensemble")


def load_fit(run: RunDir) -> Fit:
    """The fit saved in ``run``'s checkpoint."""
    config = run.checkpoint_config()
    model = build_fit(config)
    extra = run.load_checkpoint(model)["extra"]
    return Fit(config.get("kind", "vrm"), model, Standardizer.from_extra(extra))
