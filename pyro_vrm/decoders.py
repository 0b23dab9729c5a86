"""Decoders of the VRM model: the reward r(w, z) from objective weights w and semantic features z
(the ``linear`` decoder with per-objective scores s(z) = A z + b, or an ``mlp``). The generative
story that uses them is :mod:`pyro_vrm.model`.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LinearDecoder", "MLPDecoder", "make_decoder"]


class LinearDecoder(nn.Module):
    """s(z) = A z + b (K scores, one per named objective) and r(w, z) = w . s(z).

    A (K, d) and b (K,) are parameters, or, with ``bayesian=True``, global latents that the model
    draws from the priors and passes in. With ``learn_aspect_noise``, the decoder also holds
    sigma_a (K,), the noise of observed aspect scores around s(z), a parameter of the same
    likelihood; with ``learn_preference_scale``, tau (), and r(w, z) = tau w . s(z).

    Examples:
        >>> dec = LinearDecoder(latent_dim=3, num_objectives=2)
        >>> reward, scores = dec(torch.tensor([[0.5, 0.5]]), torch.zeros(1, 3))
        >>> reward.shape, scores.shape
        (torch.Size([1]), torch.Size([1, 2]))
    """

    def __init__(self, latent_dim: int, num_objectives: int, bayesian: bool = False,
                 learn_aspect_noise: bool = False, learn_preference_scale: bool = False):
        super().__init__()
        self.latent_dim, self.num_objectives, self.bayesian = latent_dim, num_objectives, bayesian
        if not bayesian:
            self.weight = nn.Parameter(torch.randn(num_objectives, latent_dim) / latent_dim**0.5)
            self.bias = nn.Parameter(torch.zeros(num_objectives))
        if learn_aspect_noise:  # sigma_a = exp(log_aspect_noise), starting at 1
            self.log_aspect_noise = nn.Parameter(torch.zeros(num_objectives))
        if learn_preference_scale:  # tau = exp(log_preference_scale), starting at 1
            self.log_preference_scale = nn.Parameter(torch.zeros(()))

    @property
    def aspect_noise(self) -> torch.Tensor | None:
        """The learned sigma_a (K,), or None where the priors fix it."""
        return self.log_aspect_noise.exp() if hasattr(self, "log_aspect_noise") else None

    @property
    def preference_scale(self) -> torch.Tensor | float:
        """tau (), learned, or 1."""
        return self.log_preference_scale.exp() if hasattr(self, "log_preference_scale") else 1.0

    def forward(self, w: torch.Tensor, z: torch.Tensor, weight: torch.Tensor | None = None,
                bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """r(w, z) (...) and s(z) (..., K) from w (..., K) and z (..., d), broadcast.

        ``weight`` and ``bias`` replace A and b (a Bayesian decoder's draws); they may carry
        leading batch dims of their own (under ``Predictive``), hence no matmul.
        """
        weight = self.weight if weight is None else weight
        bias = self.bias if bias is None else bias
        scores = (z.unsqueeze(-2) * weight).sum(-1) + bias
        return self.preference_scale * (w * scores).sum(-1), scores


class MLPDecoder(nn.Module):
    """r(w, z) = MLP([w, z]): more flexible, no per-objective scores."""

    def __init__(self, latent_dim: int, num_objectives: int, width: int = 64):
        super().__init__()
        self.latent_dim, self.num_objectives = latent_dim, num_objectives
        self.net = nn.Sequential(nn.Linear(latent_dim + num_objectives, width), nn.SiLU(), nn.Linear(width, 1))

    def forward(self, w: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, None]:
        """r(w, z) (...) from w (..., K) and z (..., d), broadcast; no scores s(z)."""
        shape = torch.broadcast_shapes(w.shape[:-1], z.shape[:-1])
        wz = torch.cat([w.expand(shape + w.shape[-1:]), z.expand(shape + z.shape[-1:])], -1)
        return self.net(wz).squeeze(-1), None


def make_decoder(kind: str, latent_dim: int, num_objectives: int, bayesian: bool = False,
                 learn_aspect_noise: bool = False, learn_preference_scale: bool = False) -> LinearDecoder | MLPDecoder:
    """Build the ``linear`` or ``mlp`` decoder; ``bayesian`` makes A, b latent and
    ``learn_aspect_noise`` and ``learn_preference_scale`` give it a sigma_a and a tau to learn (linear only)."""
    if kind == "linear":
        return LinearDecoder(latent_dim, num_objectives, bayesian, learn_aspect_noise, learn_preference_scale)
    if kind == "mlp":
        if bayesian:
            raise ValueError("a Bayesian decoder is available for --decoder linear only")
        return MLPDecoder(latent_dim, num_objectives)
    raise ValueError(f"unknown decoder {kind!r}: choose 'linear' or 'mlp'")
