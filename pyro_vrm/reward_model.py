"""A fitted reward model of any kind (VRM, the RM, the twin) and its backbone as one object that
scores text, saved as one folder.

``score(prompts, responses)`` gives each response's reward and its sd: for VRM the posterior
mean and sd, for a point estimate (the RM, the twin) its reward and an sd of 0, for an ensemble of
fits (:meth:`RewardModel.from_runs`) the mixture of its members
(:mod:`pyro_vrm.ensemble`); one backbone pass per response (for a causal backbone h_x comes from
the same pass).
``save_pretrained(folder)`` writes ``config.json`` (the model's configuration and the backbone's
id or path), ``model.safetensors`` and, for a backbone fine-tuned end to end, its LoRA adapters
in ``adapters.safetensors``; ``from_pretrained(folder)`` reads them back. An instance
is also a plain reward callable for TRL's ``GRPOTrainer``/``RLOOTrainer`` (``reward_funcs=[rm]``),
on standard data sets (strings) and conversational ones (message lists), which it renders as its
training data were rendered (:mod:`pyro_vrm.conversation`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_model

from .backbone import Backbone
from .conversation import prompt_text, response_text
from .ensemble import Ensemble, reward_mean_sd
from .finetune import save_adapter
from .fits import build_fit, load_fit
from .pipeline import load_backbone
from .runs import RunDir

__all__ = ["RewardModel", "VRMRewardModel"]

ADAPTERS = "adapters.safetensors"


class RewardModel:
    """Rewards of text from a fit of any kind: VRM's posterior mean and sd, a point
    estimate's reward with an sd of 0, or the mixture of an ensemble's members.

    Args:
        model: the fit (a :class:`~pyro_vrm.vrm.VRM`, a
            :class:`~pyro_vrm.baseline.RewardHead`, a :class:`~pyro_vrm.twin.DeterministicTwin`
            or an :class:`~pyro_vrm.ensemble.Ensemble` of them).
        backbone: the backbone whose hidden states the fit reads.
        config: the fit's checkpoint config with the backbone's (``"backbone"``, ``"finetune"``).
        kappa: risk aversion of the callable form, which returns mean - kappa * sd.

    A reward model comes from a run folder (:meth:`from_run`) or a saved folder
    (:meth:`from_pretrained`); the README's quickstart uses both.
    """

    def __init__(self, model: torch.nn.Module, backbone: Backbone, config: dict, kappa: float = 0.0):
        self.model, self.backbone, self.config, self.kappa = model.eval(), backbone, config, kappa
        self.kind = config.get("kind", "vrm")
        self.__name__ = f"{self.kind}_reward"  # TRL names a reward function's logged metrics after it

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str | None = None, kappa: float = 0.0) -> RewardModel:
        """The fit of a ``pyro-vrm train`` run on text data, with the run's backbone."""
        model, config, adapters = _read_run(run_dir)
        return cls(model, load_backbone(config["backbone"], config["finetune"], adapters, device), config, kappa)

    @classmethod
    def from_runs(cls, run_dirs: list[str | Path], device: str | None = None, kappa: float = 0.0,
                  reference: tuple[list[str], list[str]] | None = None) -> RewardModel:
        """An :class:`~pyro_vrm.ensemble.Ensemble` of the fits of several ``pyro-vrm train`` runs
        on text data. They must share one backbone, not fine-tuned (the members read its states),
        and one prompt form. The members are put on one scale, so that the RM's arbitrary offsets do
        not count as disagreement: each by the mean and sd of its rewards on its own training
        responses, which its run recorded (:meth:`~pyro_vrm.ensemble.Ensemble.set_statistics`),
        or, given ``reference`` (prompts, responses), all on that text
        (:meth:`~pyro_vrm.ensemble.Ensemble.standardize`). Runs that recorded no statistics, and
        no reference, leave the members on their own scales, which is logged."""
        runs = [_read_run(run_dir) for run_dir in run_dirs]
        first = runs[0][1]
        for run_dir, (_, config, _) in zip(run_dirs, runs):
            if (config["finetune"] or {}).get("finetune", "none") != "none":
                raise ValueError(f"{run_dir}: its backbone is fine-tuned, so an ensemble's members cannot share it")
            for key in ("backbone", "prompt_form"):
                if config.get(key) != first.get(key):
                    raise ValueError(f"{run_dir}: its {key} {config.get(key)} differs from that of "
                                     f"{run_dirs[0]} ({first.get(key)})")
        shared = ("backbone", "finetune", "prompt_form", "reward_statistics")
        members = [{k: v for k, v in config.items() if k not in shared} for _, config, _ in runs]
        config = {"kind": "ensemble", "members": members, "backbone": first["backbone"], "finetune": None,
                  "prompt_form": first.get("prompt_form")}
        backbone = load_backbone(config["backbone"], None, None, device)
        ensemble = Ensemble([model for model, _, _ in runs])
        if reference is not None:
            prompt_state, response_state, _ = backbone.encode(list(reference[0]), list(reference[1]))
            ensemble.standardize(prompt_state, response_state)
        elif all(config.get("reward_statistics") for _, config, _ in runs):
            ensemble.set_statistics([config["reward_statistics"] for _, config, _ in runs])
        else:
            missing = [str(d) for d, (_, config, _) in zip(run_dirs, runs) if not config.get("reward_statistics")]
            logging.getLogger(__name__).warning(
                "%s recorded no reward statistics and no reference text was given: the ensemble's members keep "
                "their own scales", ", ".join(missing))
        return cls(ensemble, backbone, config, kappa)

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | None = None, kappa: float = 0.0) -> RewardModel:
        """The reward model :meth:`save_pretrained` wrote to ``folder``."""
        folder = Path(folder)
        config = json.loads((folder / "config.json").read_text())
        model = build_fit(config)
        load_model(model, folder / "model.safetensors")
        adapters = load_file(folder / ADAPTERS) if (folder / ADAPTERS).exists() else None
        return cls(model, load_backbone(config["backbone"], config.get("finetune"), adapters, device), config, kappa)

    def save_pretrained(self, folder: str | Path) -> None:
        """``config.json``, ``model.safetensors`` and, for a fine-tuned backbone, its adapters."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(self.config, indent=2) + "\n")
        save_model(self.model, folder / "model.safetensors")
        if (self.config.get("finetune") or {}).get("finetune", "none") != "none":
            save_adapter(self.backbone, folder / ADAPTERS)

    @torch.no_grad()
    def score(self, prompts: Sequence[Any], responses: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and sd of the reward of each response to its prompt: (N,), (N,).

        Each prompt is a string or a conversation (a list of ``{"role", "content"}`` messages),
        each response a string or one assistant message in a list; conversations are rendered as
        the fit's training prompts were (:func:`pyro_vrm.conversation.prompt_text`).
        """
        texts = self._texts(prompts, responses, ("prompts", "responses"))
        prompt_state, response_state, _ = self.backbone.encode(*texts)
        return reward_mean_sd(self.model, prompt_state, response_state)

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs) -> list[float]:
        """TRL's reward-function interface: one float per completion, mean - kappa * sd. Prompts and
        completions as TRL passes them, strings or message lists; TRL's other keyword arguments
        (``completion_ids``, ``trainer_state``, the data set's columns) are accepted and unused."""
        texts = self._texts(prompts, completions, ("prompts", "completions"))
        mean, sd = self.score(*texts)
        return (mean - self.kappa * sd).tolist()

    def _texts(self, prompts: Sequence[Any], responses: Sequence[Any], names: tuple[str, str]
               ) -> tuple[list[str], list[str]]:
        """Prompts and responses as text, each checked; ``names`` name the arguments in an error."""
        for name, values in zip(names, (prompts, responses)):
            if isinstance(values, (str, dict)) or not isinstance(values, Sequence):
                raise TypeError(f"{name} must be a list (one item per response), got {type(values).__name__}")
        if len(prompts) != len(responses):
            raise ValueError(f"{names[0]} has {len(prompts)} items and {names[1]} {len(responses)}: one each per response")
        form = self.config.get("prompt_form") or "conversation"  # a run from before forms were recorded: HH's
        return ([prompt_text(p, form, f"{names[0]}[{i}]") for i, p in enumerate(prompts)],
                [response_text(r, f"{names[1]}[{i}]") for i, r in enumerate(responses)])


def _read_run(run_dir: str | Path) -> tuple[torch.nn.Module, dict, dict | None]:
    """(fit, its checkpoint config with the backbone's, LoRA adapters or None) of a text run."""
    run = RunDir(run_dir)
    train_config = run.read_json("config.json")
    if "backbone_config" not in train_config:
        raise ValueError(f"{run_dir} was trained on hidden states without text (--data simulated): "
                         "there is no backbone to score text with")
    summary = run.read_json("summary.json") if (run.path / "summary.json").exists() else {}
    config = {**run.checkpoint_config(), "backbone": train_config["backbone_config"],
              "finetune": train_config.get("finetune_config"), "prompt_form": train_config.get("prompt_form"),
              "reward_statistics": summary.get("reward_statistics")}
    return load_fit(run).model, config, run.checkpoint_state().get("adapters")


VRMRewardModel = RewardModel  # the name under which the reward model of a VRM fit is best known
