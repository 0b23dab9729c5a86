r"""The amortized variational posterior of VRM.

.. math::

    q(w_n \mid x_n) &= \mathrm{Dirichlet}(\mathrm{softplus}(f_w(h_x)) + \epsilon) \\
    q(z \mid x, y)  &= \mathcal{N}(\mu_\phi(h_x, h_{xy}), \mathrm{diag}\,\sigma_\phi(h_x, h_{xy})^2)

h_x is a hidden state of the prompt and h_xy of prompt + response. Under a conditional prior
p(w | h_x) p(z | h_x, h_xy) (model.py), :class:`PairGuide` updates that prior with the pair's
observations instead. Each guide samples the same
sites, inside the same plate, as :func:`pyro_vrm.model.model`. Both Dirichlet and Normal are
reparameterized (implicit reparameterization for the Dirichlet), so gradients are pathwise.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn.functional import softplus

from .model import SITES, ConditionalPrior
from .networks import MIN_CONCENTRATION, mlp, softplus_inverse

__all__ = ["WeightEncoder", "FeatureEncoder", "AmortizedGuide", "PairGuide"]

class WeightEncoder(nn.Module):
    """Parameterises q(w | x) = Dirichlet(concentration) from the prompt state h_x (B, H)."""

    def __init__(self, hidden_size: int, num_objectives: int, width: int, depth: int,
                 init_concentration: float):
        super().__init__()
        if init_concentration <= MIN_CONCENTRATION:
            raise ValueError(f"the initial concentration of q(w) must exceed {MIN_CONCENTRATION}, "
                             f"got {init_concentration}")
        self.net = mlp(hidden_size, width, depth, num_objectives)
        with torch.no_grad():  # start every q(w) near Dirichlet(init_concentration)
            self.net[-1].weight.mul_(0.1)
            self.net[-1].bias.fill_(softplus_inverse(init_concentration - MIN_CONCENTRATION))

    def forward(self, prompt_state: torch.Tensor) -> torch.Tensor:
        """(B, H) -> concentration (B, K)."""
        return softplus(self.net(prompt_state)) + MIN_CONCENTRATION


class FeatureEncoder(nn.Module):
    """Parameterises q(z | x, y) = Normal(loc, scale) from [h_x, h_xy] (B, 2H)."""

    def __init__(self, hidden_size: int, latent_dim: int, width: int, depth: int,
                 init_scale: float, min_scale: float = 1e-3):
        super().__init__()
        self.net = mlp(2 * hidden_size, width, depth, 2 * latent_dim)
        self.min_scale = min_scale
        with torch.no_grad():  # start every q(z) at scale init_scale
            self.net[-1].bias[latent_dim:].fill_(softplus_inverse(init_scale))

    def forward(self, prompt_state: torch.Tensor, response_state: torch.Tensor):
        """(B, H), (B, H) -> loc (B, d), scale (B, d)."""
        loc, raw_scale = self.net(torch.cat([prompt_state, response_state], -1)).chunk(2, -1)
        return loc, softplus(raw_scale) + self.min_scale


class AmortizedGuide(nn.Module):
    """q(w, z^c, z^r | x, y^c, y^r) for a minibatch: the mean-field guide of section 2.

    A plain ``nn.Module`` inside the :class:`pyro_vrm.vrm.VRM` root: its encoders' parameters are
    ordinary ``nn.Parameter`` objects that no Pyro handler needs to see, which keeps them out of
    the effect-handler stack on every step.

    Takes the same arguments as the model; reads ``batch.prompt_state``, ``batch.chosen_state``
    and ``batch.rejected_state`` (each (B, H)) and ``batch.index`` (B,).
    """

    def __init__(self, hidden_size: int, num_objectives: int, latent_dim: int, width: int, depth: int,
                 init_concentration: float, init_scale: float):
        super().__init__()
        if min(hidden_size, num_objectives, latent_dim, width) < 1 or depth < 0:
            raise ValueError("AmortizedGuide needs positive sizes and a non-negative depth")
        self.weight_encoder = WeightEncoder(hidden_size, num_objectives, width, depth,
                                            init_concentration)
        self.feature_encoder = FeatureEncoder(hidden_size, latent_dim, width, depth, init_scale)

    def weight_posterior(self, prompt_state: torch.Tensor) -> dist.Dirichlet:
        """q(w | x), batch shape (B,)."""
        return dist.Dirichlet(self.weight_encoder(prompt_state))

    def feature_posterior(self, prompt_state: torch.Tensor, response_state: torch.Tensor):
        """q(z | x, y), batch shape (B,), event shape (d,)."""
        loc, scale = self.feature_encoder(prompt_state, response_state)
        return dist.Normal(loc, scale).to_event(1)

    def forward(self, batch, num_pairs=None, preferences=None, aspects=None):
        index = batch.index
        # Both responses go through the feature encoder in one call: (2, B, H) -> (2, B, d).
        loc, scale = self.feature_encoder(batch.prompt_state.expand(2, -1, -1),
                                          torch.stack([batch.chosen_state, batch.rejected_state]))
        with pyro.plate(SITES["plate"], num_pairs or len(index), subsample=index):
            pyro.sample(SITES["weights"], self.weight_posterior(batch.prompt_state))
            pyro.sample(SITES["chosen"], dist.Normal(loc[0], scale[0]).to_event(1))
            pyro.sample(SITES["rejected"], dist.Normal(loc[1], scale[1]).to_event(1))



class PairGuide(nn.Module):
    r"""q(w, z^c, z^r | h, y, a) under a conditional prior: the prior of the pair, updated by what
    was observed of it.

    Under the model with p(w | h_x) and p(z | h_x, h_xy), the posterior of a pair's latents depends
    on its hidden states only through that prior, so the guide reads the prior's parameters, not
    the states: the Dirichlet's log concentration, and each response's loc and log scale, with the
    preference as a sign (+1 for the response that won) and, when observed, both aspect scores,
    each response's own first. It returns multiplicative and additive updates:

    .. math::

        q(w) = \mathrm{Dirichlet}(\epsilon + (\alpha - \epsilon) e^{\delta_w}), \quad
        q(z) = \mathcal{N}(\mu + \sigma \delta_\mu, \sigma e^{\delta_\sigma})

    whose output layers start at zero: an untrained guide is the prior. A new pair, whose label is
    not seen, has the prior's latents, not this guide's.

    Args:
        num_objectives: K.
        latent_dim: d.
        num_aspects: the aspect scores per response it reads (0 when the fit observes none).
        width: the hidden units of each of its two MLPs.
        depth: the hidden layers of each of its two MLPs.
    """

    def __init__(self, num_objectives: int, latent_dim: int, num_aspects: int, width: int, depth: int):
        super().__init__()
        self.num_aspects = num_aspects
        inputs = num_objectives + 4 * latent_dim + 1 + 2 * num_aspects
        self.weight_net = mlp(inputs, width, depth, num_objectives)
        self.feature_net = mlp(inputs, width, depth, 2 * latent_dim)
        with torch.no_grad():
            for net in (self.weight_net, self.feature_net):
                net[-1].weight.zero_()
                net[-1].bias.zero_()

    def forward(self, batch, num_pairs=None, preferences=None, aspects=None, *, prior: ConditionalPrior):
        index = batch.index
        p_w = prior.objective_weights(batch.prompt_state)
        p_z = prior.semantic_features(batch.prompt_state.expand(2, -1, -1),
                                      torch.stack([batch.chosen_state, batch.rejected_state])).base_dist
        won = torch.ones_like(p_w.concentration[:, :1]) if preferences is None else preferences.unsqueeze(-1)
        sign = torch.stack([2 * won - 1, 1 - 2 * won])                                    # (2, B, 1)
        own = torch.cat([p_z.loc, p_z.scale.log()], -1)                                   # (2, B, 2d)
        views = [p_w.concentration.log().expand(2, -1, -1), own, own.flip(0), sign]
        if self.num_aspects:
            if aspects is None:
                raise ValueError("this guide reads the pair's aspect scores: pass aspects=(chosen, rejected)")
            views += [torch.stack(aspects), torch.stack(aspects).flip(0)]
        views = torch.cat(views, -1)                                                      # (2, B, inputs)
        concentration = MIN_CONCENTRATION + (p_w.concentration - MIN_CONCENTRATION) * self.weight_net(views[0]).exp()
        shift, log_shrink = self.feature_net(views).chunk(2, -1)
        loc, scale = p_z.loc + p_z.scale * shift, p_z.scale * log_shrink.exp()
        with pyro.plate(SITES["plate"], num_pairs or len(index), subsample=index):
            pyro.sample(SITES["weights"], dist.Dirichlet(concentration))
            pyro.sample(SITES["chosen"], dist.Normal(loc[0], scale[0]).to_event(1))
            pyro.sample(SITES["rejected"], dist.Normal(loc[1], scale[1]).to_event(1))
