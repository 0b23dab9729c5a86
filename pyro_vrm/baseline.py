"""The Bradley-Terry reward model baseline ("Rm", DESIGN.md section 5).

A scalar head r = g(h_x, h_xy) with the capacity of one of VRM's guide networks (same width and
depth), trained with -logsigmoid(r_chosen - r_rejected) on the same minibatches, with the same
optimizer, learning-rate schedule and step budget as VRM.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

import pyro
import torch
from torch import nn
from torch.nn.functional import logsigmoid

from .config import ModelConfig, TrainConfig
from .features import PairBatch, PreferenceFeatures
from .guide import mlp
from .loop import Checkpointing, optimize, seed_everything
from .runs import RunDir

__all__ = ["RewardHead", "BradleyTerryLoss", "fit_reward_model", "bradley_terry_loss", "load_reward_model"]


class RewardHead(nn.Module):
    """r = g([h_x, h_xy]): (B, H), (B, H) -> (B,)."""

    def __init__(self, hidden_size: int, width: int = 128, depth: int = 2):
        super().__init__()
        self.net = mlp(2 * hidden_size, width, depth, 1)

    def forward(self, prompt_state: torch.Tensor, response_state: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([prompt_state, response_state], -1)).squeeze(-1)


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Mean of -logsigmoid(r_chosen - r_rejected) over pairs."""
    return -logsigmoid(r_chosen - r_rejected).mean()


class BradleyTerryLoss(nn.Module):
    """``forward(batch, num_pairs)``: the Bradley-Terry loss of ``head`` on the batch; the
    rewards of the last call stay in ``rewards`` (for metrics)."""

    def __init__(self, head: RewardHead):
        super().__init__()
        self.head = head
        self.rewards: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, batch: PairBatch, num_pairs: int) -> torch.Tensor:
        r_chosen = self.head(batch.prompt_state, batch.chosen_state)
        r_rejected = self.head(batch.prompt_state, batch.rejected_state)
        self.rewards = (r_chosen.detach(), r_rejected.detach())
        return bradley_terry_loss(r_chosen, r_rejected)

    def metrics(self) -> dict:
        r_chosen, r_rejected = self.rewards
        margin = r_chosen - r_rejected
        return {"loss": float(-logsigmoid(margin).mean()), "accuracy": float((margin > 0).float().mean()),
                "margin": float(margin.mean()), "mean_reward": float(torch.cat([r_chosen, r_rejected]).mean())}


def fit_reward_model(train: PreferenceFeatures, model_config: ModelConfig = ModelConfig(),
                     train_config: TrainConfig = TrainConfig(), run: RunDir | None = None,
                     progress: bool = True, monitor: Callable[[RewardHead], dict] | None = None,
                     resume: bool = False) -> RewardHead:
    """Fit the Bradley-Terry head to ``train`` with the loop, minibatches and optimizer VRM uses
    (``train``: cached states, or TextPairs whose LoRA adapters train with the head); write
    metrics and checkpoints to ``run`` (``resume``: go on from its checkpoint).
    ``monitor(head)`` adds its metrics to every logged record, as in :func:`fit_vrm`."""
    cfg = train_config
    seed_everything(cfg.seed)
    head = RewardHead(train.hidden_size, model_config.width, model_config.depth)
    pyro.module("reward_head", head)  # its parameters live in the param store, as VRM's do
    checkpointing = None
    if run is not None:
        config = {"kind": "rm", "model": asdict(model_config), "train": asdict(cfg), "hidden_size": train.hidden_size}
        checkpointing = Checkpointing(run, config, head, resume=resume)
    loss = BradleyTerryLoss(head)
    optimize(loss, train, cfg, checkpointing=checkpointing, metrics=lambda batch: loss.metrics(),
             progress=progress, monitor=(lambda: monitor(head)) if monitor else None, desc="bradley-terry")
    return head


def load_reward_model(run: RunDir) -> RewardHead:
    """The Bradley-Terry head saved in ``run``'s checkpoint."""
    config = run.checkpoint_config()
    model = ModelConfig(**config["model"])
    head = RewardHead(config["hidden_size"], model.width, model.depth)
    run.load_checkpoint(head)
    return head
