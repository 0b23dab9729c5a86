r"""Reward mean and sd from a fit of any kind, and ensembles of fits: epistemic uncertainty.

VRM's amortized posterior sd is aleatoric: q(z | x) and q(w | x) are learned functions of the
input, and nothing makes them wider on text unlike the training data. An ensemble of M fits that
differ only in their seed (Lakshminarayanan et al. 2017; for reward models Coste et al. 2023)
disagrees where the data did not pin the fit down. Its reward is the uniform mixture of the
members' rewards:

    mean   = (1/M) sum_m mu_m
    sd^2   = (1/M) sum_m sigma_m^2  +  (1/M) sum_m (mu_m - mean)^2
             (within-member: VRM's posterior)  (between members: epistemic)

with sigma_m = 0 for a point estimate (the RM, the twin), whose ensemble sd is then the spread of
its members alone.

A Bradley-Terry reward is identified only up to a shift (and, under regularisation, barely in
scale), so two seeds of the RM can differ by a constant that is no disagreement about any
response. :meth:`Ensemble.standardize` puts every member on one scale first, as Gao et al. (2023)
and Coste et al. (2023) normalise their reward models: member m's reward (and sd) becomes
(r_m - a_m) / b_m, with a_m and b_m the mean and sd of its mean rewards on reference responses:
its own training responses, whose :func:`reward_statistics` ``pyro-vrm train`` records, or any
reference text. Until then a_m = 0 and b_m = 1.

:meth:`Ensemble.worst_case` is the other conservative reward of Coste et al. (2023): the lowest of
the members' standardized rewards, min_m (mu_m - a_m) / b_m, with no kappa to choose.
"""

from __future__ import annotations

import torch
from torch import nn

from .posterior import reward_posterior
from .vrm import VRM

__all__ = ["Ensemble", "WorstCase", "reward_mean_sd", "reward_statistics"]


class Ensemble(nn.Module):
    """M fits of one kind as one reward model (see the module docstring).

    Args:
        members: the fits, each a :class:`~pyro_vrm.vrm.VRM`, a
            :class:`~pyro_vrm.baseline.RewardHead` or a :class:`~pyro_vrm.twin.DeterministicTwin`.
    """

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.register_buffer("offset", torch.zeros(len(members)))   # a_m
        self.register_buffer("scale", torch.ones(len(members)))     # b_m

    @torch.no_grad()
    def standardize(self, prompt_state: torch.Tensor, response_state: torch.Tensor) -> Ensemble:
        """Set each member's a_m, b_m to the mean and sd of its mean rewards on the reference
        responses (states (N, H), N >= 2); returns the ensemble."""
        return self.set_statistics([reward_statistics(m, prompt_state, response_state) for m in self.members])

    @torch.no_grad()
    def set_statistics(self, statistics: list[dict]) -> Ensemble:
        """Set a_m, b_m from each member's :func:`reward_statistics` (``mean``, ``sd``), such as
        the ones its training run recorded; returns the ensemble."""
        if len(statistics) != len(self.members):
            raise ValueError(f"{len(statistics)} reward statistics for {len(self.members)} members")
        self.offset.copy_(torch.tensor([s["mean"] for s in statistics]))
        self.scale.copy_(torch.tensor([s["sd"] for s in statistics]).clamp_min(1e-12))
        return self

    @torch.no_grad()
    def member_moments(self, prompt_state: torch.Tensor, response_state: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each member's standardized mean reward and sd: states (B, H) -> two (M, B)."""
        moments = [reward_mean_sd(member, prompt_state, response_state) for member in self.members]
        offset, scale = self.offset.unsqueeze(-1), self.scale.unsqueeze(-1)                # (M, 1)
        return (torch.stack([m for m, _ in moments]) - offset) / scale, torch.stack([s for _, s in moments]) / scale

    @torch.no_grad()
    def mean_sd(self, prompt_state: torch.Tensor, response_state: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean, sd, between-member sd) of the mixture reward: states (B, H) -> three (B,)."""
        means, sds = self.member_moments(prompt_state, response_state)                     # (M, B)
        within = sds.pow(2).mean(0)                                                        # (B,)
        mean = means.mean(0)
        between = (means - mean).pow(2).mean(0)
        return mean, (within + between).sqrt(), between.sqrt()

    def forward(self, prompt_state: torch.Tensor, response_state: torch.Tensor) -> torch.Tensor:
        """The mixture's mean reward, (B, H) states -> (B,)."""
        return self.mean_sd(prompt_state, response_state)[0]

    @torch.no_grad()
    def worst_case(self, prompt_state: torch.Tensor, response_state: torch.Tensor) -> torch.Tensor:
        """The lowest standardized member reward (Coste et al. 2023), (B, H) states -> (B,)."""
        return self.member_moments(prompt_state, response_state)[0].min(0).values


class WorstCase(nn.Module):
    """An ensemble's worst-case reward as a reward model of its own: its mean is
    :meth:`Ensemble.worst_case` and its sd 0, so best-of-n and PPO optimise the minimum over members
    as they optimise any reward.

    Args:
        ensemble: the standardized :class:`Ensemble`.
    """

    def __init__(self, ensemble: Ensemble):
        super().__init__()
        self.ensemble = ensemble

    def mean_sd(self, prompt_state: torch.Tensor, response_state: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(worst-case reward, 0): states (B, H) -> two (B,)."""
        worst = self.ensemble.worst_case(prompt_state, response_state)
        return worst, torch.zeros_like(worst)

    def forward(self, prompt_state: torch.Tensor, response_state: torch.Tensor) -> torch.Tensor:
        return self.ensemble.worst_case(prompt_state, response_state)


@torch.no_grad()
def reward_mean_sd(model: nn.Module, prompt_state: torch.Tensor, response_state: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and sd of the reward of each response to its prompt, for a fit of any kind: states
    (B, H) -> (B,), (B,). VRM: its posterior; an :class:`Ensemble`: the mixture of its members;
    a :class:`~pyro_vrm.last_layer.BayesianLastLayer`: its NUTS draws; a point estimate (the RM,
    the twin): its reward and an sd of 0."""
    if isinstance(model, VRM):
        return reward_posterior(model, prompt_state, response_state)
    if hasattr(model, "mean_sd"):  # an Ensemble, a Bayesian last layer
        return model.mean_sd(prompt_state, response_state)[:2]
    model.eval()
    reward = model(prompt_state, response_state)
    return reward, torch.zeros_like(reward)


@torch.no_grad()
def reward_statistics(model: nn.Module, prompt_state: torch.Tensor, response_state: torch.Tensor) -> dict:
    """``{"mean", "sd", "responses"}`` of a fit's mean reward over N >= 2 responses (states (N, H)):
    what puts the fit on one scale with others (:meth:`Ensemble.set_statistics`)."""
    if len(prompt_state) < 2:
        raise ValueError(f"reward statistics need at least 2 responses, got {len(prompt_state)}")
    means = reward_mean_sd(model, prompt_state, response_state)[0]
    return {"mean": float(means.mean()), "sd": float(means.std()), "responses": len(means)}
