"""A fitted VRM and its backbone as one object that scores text, saved as one folder.

``score(prompts, responses)`` gives each response's posterior-mean reward and its posterior sd,
one backbone pass per response (for a causal backbone h_x comes from the same pass).
``save_pretrained(folder)`` writes ``config.json`` (the model's configuration and the backbone's
id or path), ``model.safetensors`` and, for a backbone fine-tuned end to end, its LoRA adapters
in ``adapters.safetensors``; ``from_pretrained(folder)`` reads them back. An instance
is also a plain reward callable for TRL's ``GRPOTrainer``/``RLOOTrainer`` (``reward_funcs=[rm]``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_model

from .backbone import Backbone
from .finetune import save_adapter
from .pipeline import load_backbone
from .posterior import reward_posterior
from .runs import RunDir
from .train import build_vrm, load_vrm
from .vrm import VRM

__all__ = ["VRMRewardModel"]

ADAPTERS = "adapters.safetensors"


class VRMRewardModel:
    """Posterior-mean VRM rewards of text.

    ``kappa`` > 0 makes the callable form risk-averse: it returns mean - kappa * sd.
    """

    def __init__(self, vrm: VRM, backbone: Backbone, config: dict, kappa: float = 0.0):
        self.vrm, self.backbone, self.config, self.kappa = vrm.eval(), backbone, config, kappa
        self.__name__ = "vrm_reward"  # TRL names a reward function's logged metrics after it

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str | None = None, kappa: float = 0.0) -> VRMRewardModel:
        """The VRM of a ``pyro-vrm train`` run on text data, with the run's backbone."""
        run = RunDir(run_dir)
        train_config = run.read_json("config.json")
        if "backbone_config" not in train_config:
            raise ValueError(f"{run_dir} was trained on hidden states without text (--data simulated): "
                             "there is no backbone to score text with")
        vrm, _ = load_vrm(run)
        config = {**run.checkpoint_config(), "backbone": train_config["backbone_config"],
                  "finetune": train_config.get("finetune_config")}
        backbone = load_backbone(config["backbone"], config["finetune"], run.checkpoint_state().get("adapters"), device)
        return cls(vrm, backbone, config, kappa)

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | None = None, kappa: float = 0.0) -> VRMRewardModel:
        folder = Path(folder)
        config = json.loads((folder / "config.json").read_text())
        vrm = build_vrm(config)
        load_model(vrm, folder / "model.safetensors")
        adapters = load_file(folder / ADAPTERS) if (folder / ADAPTERS).exists() else None
        return cls(vrm, load_backbone(config["backbone"], config.get("finetune"), adapters, device), config, kappa)

    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(self.config, indent=2) + "\n")
        save_model(self.vrm, folder / "model.safetensors")  # handles the guide's shared modules
        if (self.config.get("finetune") or {}).get("finetune", "none") != "none":
            save_adapter(self.backbone, folder / ADAPTERS)

    @torch.no_grad()
    def score(self, prompts: list[str], responses: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and sd of the reward of each response to its prompt: (N,), (N,)."""
        prompt_state, response_state, _ = self.backbone.encode(list(prompts), list(responses))
        return reward_posterior(self.vrm, prompt_state, response_state)

    def __call__(self, prompts: list[str], completions: list[str], **kwargs) -> list[float]:
        """TRL's reward-function interface: one float per completion, mean - kappa * sd."""
        mean, sd = self.score(prompts, completions)
        return (mean - self.kappa * sd).tolist()
