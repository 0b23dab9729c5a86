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
from pyro.optim.clipped_adam import ClippedAdam
from torch import nn
from torch.nn.functional import logsigmoid
from tqdm.auto import tqdm

from .config import ModelConfig, TrainConfig
from .features import PreferenceFeatures
from .guide import mlp
from .runs import RunDir
from .train import NonFiniteLoss, minibatches, seed_everything

__all__ = ["RewardHead", "fit_reward_model", "bradley_terry_loss", "load_reward_model"]


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


def fit_reward_model(train: PreferenceFeatures, model_config: ModelConfig = ModelConfig(),
                     train_config: TrainConfig = TrainConfig(), run: RunDir | None = None,
                     progress: bool = True, monitor: Callable[[RewardHead], dict] | None = None) -> RewardHead:
    """Fit the Bradley-Terry head to ``train``; write metrics and checkpoints to ``run``.
    ``monitor(head)`` adds its metrics to every logged record, as in :func:`fit_vrm`."""
    cfg = train_config
    seed_everything(cfg.seed)
    head = RewardHead(train.hidden_size, model_config.width, model_config.depth)
    pyro.module("reward_head", head)  # its parameters live in the param store, as VRM's do
    optim = ClippedAdam(head.parameters(), lr=cfg.lr, lrd=cfg.lr_decay ** (1 / cfg.steps),
                        clip_norm=cfg.clip_norm)
    checkpoint_config = {"kind": "rm", "model": asdict(model_config), "train": asdict(cfg),
                         "hidden_size": train.hidden_size}
    if run is not None:
        run.start_metrics()
    bar = tqdm(total=cfg.steps, disable=not progress, desc="bradley-terry", mininterval=1.0)
    for step, index in enumerate(minibatches(len(train), cfg.batch_size, cfg.steps, cfg.seed), 1):
        batch = train.batch(index)
        r_chosen = head(batch.prompt_state, batch.chosen_state)
        r_rejected = head(batch.prompt_state, batch.rejected_state)
        loss = bradley_terry_loss(r_chosen, r_rejected)
        optim.zero_grad()
        loss.backward()
        optim.step()
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"loss is {loss.item()} at step {step}")
        if step % cfg.log_every == 0 or step == cfg.steps:
            margin = (r_chosen - r_rejected).detach()
            record = {"step": step, "loss": loss.item(), "accuracy": float((margin > 0).float().mean()),
                      "margin": float(margin.mean()),
                      "mean_reward": float(torch.cat([r_chosen, r_rejected]).detach().mean()),
                      **(monitor(head) if monitor else {})}
            bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['accuracy']:.3f}")
            if run is not None:
                run.log_metrics(record)
        if run is not None and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
            run.save_checkpoint(checkpoint_config, head)
        bar.update()
    bar.close()
    return head


def load_reward_model(run: RunDir) -> RewardHead:
    """The Bradley-Terry head saved in ``run``'s checkpoint."""
    config = run.checkpoint_config()
    model = ModelConfig(**config["model"])
    head = RewardHead(config["hidden_size"], model.width, model.depth)
    run.load_checkpoint(head)
    return head
