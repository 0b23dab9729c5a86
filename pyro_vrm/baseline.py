"""The Bradley-Terry reward model baseline ("Rm", DESIGN.md section 5).

A scalar head r = g(h_x, h_xy) with the capacity of one of VRM's guide networks (same width and
depth), trained with -logsigmoid(r_chosen - r_rejected) on the same minibatches, with the same
optimizer, learning-rate schedule and step budget as VRM (:func:`pyro_vrm.train.fit_reward_model`).
Its temperature-scaled form (Guo et al. 2017) divides the fitted rewards by a temperature T
chosen on validation pairs (:func:`fit_temperature`), so that sigmoid((r_c - r_r) / T) is
calibrated; the ranking, and so the accuracy, is unchanged.
"""

from __future__ import annotations

import torch
from scipy.optimize import minimize_scalar
from torch import nn
from torch.nn.functional import logsigmoid

from .features import PairBatch
from .networks import mlp

__all__ = ["RewardHead", "BradleyTerryLoss", "bradley_terry_loss", "fit_temperature"]


class RewardHead(nn.Module):
    """r = g([h_x, h_xy]) / T: (B, H), (B, H) -> (B,).

    The temperature T is 1 while the head is fitted; a temperature-scaled RM sets it afterwards
    (it lives in the checkpoint's config, not among the parameters).
    """

    def __init__(self, hidden_size: int, width: int, depth: int, temperature: float = 1.0):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"the temperature of a reward head must be positive, got {temperature}")
        self.net = mlp(2 * hidden_size, width, depth, 1)
        self.temperature = float(temperature)

    def forward(self, prompt_state: torch.Tensor, response_state: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([prompt_state, response_state], -1)).squeeze(-1) / self.temperature


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


def fit_temperature(margins: torch.Tensor, bounds: tuple[float, float] = (1e-2, 1e3)) -> float:
    """The temperature T in ``bounds`` that minimizes the log loss -log sigmoid(m / T) of
    validation margins m = r_c - r_r (N,), each a pair whose chosen response won.

    The loss is convex in 1 / T, so a bounded scalar search finds its minimum. Where the
    margins carry no signal, T runs to the upper bound and P(chosen wins) to 1/2.

    Examples:
        >>> m = torch.tensor([4.0, 4.0, 4.0, -4.0])   # right 3 times in 4, at odds e^4 each time
        >>> round(fit_temperature(m), 2)               # P = sigmoid(4 / T) = 3/4 needs T = 4 / log 3
        3.64
    """
    m = margins.detach().double().flatten()
    if m.numel() == 0:
        raise ValueError("fit_temperature needs at least one validation margin")
    low, high = bounds

    def log_loss(inverse_temperature: float) -> float:
        return float(-logsigmoid(inverse_temperature * m).mean())

    result = minimize_scalar(log_loss, bounds=(1 / high, 1 / low), method="bounded",
                             options={"xatol": 1e-8})
    return 1 / float(result.x)
