r"""The amortized variational posterior of VRM.

.. math::

    q(w_n \mid x_n) &= \mathrm{Dirichlet}(\mathrm{softplus}(f_w(h_x)) + \epsilon) \\
    q(z \mid x, y)  &= \mathcal{N}(\mu_\phi(h_x, h_{xy}), \mathrm{diag}\,\sigma_\phi(h_x, h_{xy})^2)

h_x is a hidden state of the prompt and h_xy of prompt + response. The guide samples the same
sites, inside the same plate, as :func:`pyro_vrm.model.model`. Both Dirichlet and Normal are
reparameterized (implicit reparameterization for the Dirichlet), so gradients are pathwise.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn.functional import softplus

from .model import SITES

__all__ = ["MIN_CONCENTRATION", "mlp", "WeightEncoder", "FeatureEncoder", "AmortizedGuide"]

# The smallest concentration q(w) can take. For a concentration below about 0.2, float32 Gamma
# draws (the Dirichlet's) underflow the smallest normal number and torch clamps them there, so
# the draws and their implicit-reparameterization gradients stop being those of q; at 0.25 none
# of 8 million draws is clamped.
MIN_CONCENTRATION = 0.25


def mlp(in_features: int, width: int, depth: int, out_features: int) -> nn.Sequential:
    """``depth`` hidden layers of ``width`` units with SiLU, then a linear output layer.

    Examples:
        >>> mlp(8, 16, 2, 3)(torch.zeros(5, 8)).shape
        torch.Size([5, 3])
    """
    layers, size = [], in_features
    for _ in range(depth):
        layers += [nn.Linear(size, width), nn.SiLU()]
        size = width
    layers.append(nn.Linear(size, out_features))
    return nn.Sequential(*layers)


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
            self.net[-1].bias.fill_(_softplus_inverse(init_concentration - MIN_CONCENTRATION))

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
            self.net[-1].bias[latent_dim:].fill_(_softplus_inverse(init_scale))

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


def _softplus_inverse(y: float) -> float:
    return float(torch.log(torch.expm1(torch.tensor(y))))
