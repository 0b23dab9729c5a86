r"""VRM's deterministic twin: the same structure without the variational part (DESIGN.md 3b).

.. math::

    w(x) = \frac{\mathrm{softplus}(f_w(h_x)) + \epsilon}{\sum_k (\mathrm{softplus}(f_w(h_x)) + \epsilon)_k}, \qquad
    s(x, y) = A\, \mu(h_x, h_{xy}) + b, \qquad
    r(x, y) = \tau\, w(x) \cdot s(x, y)

w(x) is the mean of VRM's q(w | x) and mu that of q(z | x, y), through networks of the same width
and depth and the same linear decoder, with VRM's preference scale tau where VRM has one (1
otherwise). It is fitted by maximum likelihood, like ArmoRM (Wang et
al. 2024): the Bradley-Terry likelihood of the preferences and, where aspects are observed, the
Normal likelihood a ~ N(s, sigma_a) of each response's standardized aspect scores, with no
latent noise and no KL. Whatever VRM does better than the twin, its posterior does; whatever
they share comes from the structure.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Normal
from torch.nn.functional import logsigmoid

from .features import PairBatch
from .guide import WeightEncoder
from .networks import mlp
from .model import LinearDecoder, Priors, aspect_noise

__all__ = ["DeterministicTwin", "TwinLoss"]


class DeterministicTwin(nn.Module):
    """r(x, y) = w(x) . s(x, y) from states (B, H), (B, H) -> (B,); see the module docstring.

    Examples:
        >>> twin = DeterministicTwin(hidden_size=5, num_objectives=3, latent_dim=2, width=8, depth=1,
        ...                          init_concentration=1.0)
        >>> w = twin.weights(torch.zeros(4, 5))
        >>> twin(torch.zeros(4, 5), torch.zeros(4, 5)).shape, torch.allclose(w.sum(-1), torch.ones(4))
        (torch.Size([4]), True)
    """

    def __init__(self, hidden_size: int, num_objectives: int, latent_dim: int, width: int, depth: int,
                 init_concentration: float, learn_aspect_noise: bool = False, learn_preference_scale: bool = False):
        super().__init__()
        self.weight_encoder = WeightEncoder(hidden_size, num_objectives, width, depth, init_concentration)
        self.feature_net = mlp(2 * hidden_size, width, depth, latent_dim)
        self.decoder = LinearDecoder(latent_dim, num_objectives, learn_aspect_noise=learn_aspect_noise,
                                     learn_preference_scale=learn_preference_scale)

    def weights(self, prompt_state: torch.Tensor) -> torch.Tensor:
        """w(x) (B, K) on the simplex."""
        concentration = self.weight_encoder(prompt_state)
        return concentration / concentration.sum(-1, keepdim=True)

    def scores(self, prompt_state: torch.Tensor, response_state: torch.Tensor) -> torch.Tensor:
        """s(x, y) (B, K)."""
        features = self.feature_net(torch.cat([prompt_state, response_state], -1))
        return features @ self.decoder.weight.T + self.decoder.bias

    def forward(self, prompt_state: torch.Tensor, response_state: torch.Tensor) -> torch.Tensor:
        rewards = (self.weights(prompt_state) * self.scores(prompt_state, response_state)).sum(-1)
        return self.decoder.preference_scale * rewards


class TwinLoss(nn.Module):
    """``forward(batch, num_pairs)``: the twin's negative log-likelihood per pair,
    -log sigmoid(r_c - r_r) - log N(a_c | s_c, sigma_a) - log N(a_r | s_r, sigma_a), the aspect
    terms only with ``aspects`` ((N, K) chosen and rejected tables); sigma_a as VRM has it
    (``priors.aspect_noise``, or learned, its HalfNormal log prior then added once, / N)."""

    def __init__(self, twin: DeterministicTwin, priors: Priors,
                 aspects: tuple[torch.Tensor, torch.Tensor] | None = None):
        super().__init__()
        self.twin, self.priors, self.aspects = twin, priors, aspects
        self.last: dict = {}

    def forward(self, batch: PairBatch, num_pairs: int) -> torch.Tensor:
        w = self.twin.weights(batch.prompt_state)
        s_c = self.twin.scores(batch.prompt_state, batch.chosen_state)
        s_r = self.twin.scores(batch.prompt_state, batch.rejected_state)
        tau = self.twin.decoder.preference_scale
        margin = tau * (w * (s_c - s_r)).sum(-1)
        preference = -logsigmoid(margin).mean()
        aspect = margin.new_zeros(())
        if self.aspects is not None:
            index = batch.index.cpu()
            a_c, a_r = (a[index].to(margin.device) for a in self.aspects)
            noise = Normal(0.0, aspect_noise(self.twin.decoder, self.priors))
            aspect = -(noise.log_prob(a_c - s_c).sum(-1) + noise.log_prob(a_r - s_r).sum(-1)).mean()
            if self.priors.aspect_noise is None:
                prior = self.priors.aspect_noise_prior(len(self.twin.decoder.bias), margin)
                aspect = aspect - prior.log_prob(self.twin.decoder.aspect_noise) / num_pairs
        self.last = {"preference": preference.detach(), "aspect": aspect.detach(), "margin": margin.detach(),
                     "rewards": (tau * torch.cat([(w * s_c).sum(-1), (w * s_r).sum(-1)])).detach()}
        return preference + aspect

    def metrics(self) -> dict:
        """The last batch's loss terms, accuracy, margin and mean reward."""
        t = self.last
        return {"loss": float(t["preference"] + t["aspect"]), "preference_nll": float(t["preference"]),
                "aspect_nll": float(t["aspect"]), "accuracy": float((t["margin"] > 0).float().mean()),
                "margin": float(t["margin"].mean()), "mean_reward": float(t["rewards"].mean())}
