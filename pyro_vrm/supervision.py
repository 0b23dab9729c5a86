r"""Supervision of the objective weights by aspect annotations (paper Sec. 4.2).

Each aspect is standardized across the training set; the chosen response's standardized
scores, through a softmax at temperature T, give a target t_n on the simplex; the loss
compares t_n with the guide's mean weights m_n = alpha_n / sum(alpha_n):

    kl:   KL(t_n || m_n)
    mse:  mean_k (t_nk - m_nk)^2
    mae:  mean_k |t_nk - m_nk|
    rank: mean over ordered aspect pairs (i, j) with t_ni > t_nj of log(1 + exp(-(log m_ni - log m_nj)))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn.functional import softplus

__all__ = ["SUPERVISION_LOSSES", "Standardizer", "supervision_target", "supervision_loss"]

SUPERVISION_LOSSES = ("kl", "mse", "mae", "rank")


@dataclass(frozen=True)
class Standardizer:
    """Per-aspect mean and sd, each (K,), estimated on the training pairs' scores.

    Examples:
        >>> s = Standardizer.fit(torch.tensor([[1., 2.], [3., 6.]]), torch.tensor([[1., 2.], [3., 6.]]))
        >>> s(torch.tensor([[3., 6.]]))
        tensor([[0.8660, 0.8660]])
    """

    mean: torch.Tensor
    sd: torch.Tensor

    @classmethod
    def fit(cls, chosen_scores: torch.Tensor, rejected_scores: torch.Tensor) -> Standardizer:
        scores = torch.cat([chosen_scores, rejected_scores])
        return cls(scores.mean(0), scores.std(0).clamp_min(1e-6))

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        return (scores - self.mean) / self.sd

    def to_extra(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint keeps beside the parameters."""
        return {"score_mean": self.mean, "score_sd": self.sd}

    @classmethod
    def from_extra(cls, extra: dict) -> Standardizer | None:
        """The standardizer a checkpoint kept with :meth:`to_extra`, or None if it kept none."""
        return cls(extra["score_mean"], extra["score_sd"]) if "score_mean" in extra else None


def supervision_target(standardized_chosen: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """t_n = softmax(standardized chosen scores / T): (N, K) -> (N, K) on the simplex."""
    return torch.softmax(standardized_chosen / temperature, dim=-1)


def supervision_loss(kind: str, target: torch.Tensor, concentration: torch.Tensor) -> torch.Tensor:
    """Per-pair L_sup: target (B, K), Dirichlet concentration (..., B, K) -> (..., B).

    Examples:
        >>> t = torch.tensor([[0.7, 0.2, 0.1]])
        >>> float(supervision_loss("kl", t, 10 * t))  # m_n = t_n: no loss
        0.0
    """
    mean = concentration / concentration.sum(-1, keepdim=True)
    if kind == "kl":
        return (target * (target.clamp_min(1e-12).log() - mean.log())).sum(-1)
    if kind == "mse":
        return (target - mean).pow(2).mean(-1)
    if kind == "mae":
        return (target - mean).abs().mean(-1)
    if kind == "rank":
        log_mean = mean.log()
        margin = log_mean.unsqueeze(-1) - log_mean.unsqueeze(-2)  # (..., B, K, K): i over j
        ordered = (target.unsqueeze(-1) > target.unsqueeze(-2)).to(margin.dtype)
        return (softplus(-margin) * ordered).sum((-1, -2)) / ordered.sum((-1, -2)).clamp_min(1)
    raise ValueError(f"unknown supervision loss {kind!r}: choose one of {', '.join(SUPERVISION_LOSSES)}")
