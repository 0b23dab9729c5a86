"""The Bradley-Terry reward model baseline ("Rm", DESIGN.md section 5).

A scalar head r = g(h_x, h_xy) with the capacity of one of VRM's guide networks (same width and
depth), trained with -logsigmoid(r_chosen - r_rejected) on the same minibatches, with the same
optimizer, learning-rate schedule and step budget as VRM (:func:`pyro_vrm.train.fit_reward_model`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.functional import logsigmoid

from .features import PairBatch
from .guide import mlp

__all__ = ["RewardHead", "BradleyTerryLoss", "bradley_terry_loss"]


class RewardHead(nn.Module):
    """r = g([h_x, h_xy]): (B, H), (B, H) -> (B,)."""

    def __init__(self, hidden_size: int, width: int, depth: int):
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
