"""The small networks that map hidden states to the parameters of a distribution: the guide's
encoders, the conditional priors, the reward head and the twin are built from them."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MIN_CONCENTRATION", "mlp", "softplus_inverse"]

# The smallest concentration a learned Dirichlet can take. For a concentration below about 0.2,
# float32 Gamma draws (the Dirichlet's) underflow the smallest normal number and torch clamps them
# there, so the draws and their implicit-reparameterization gradients stop being the Dirichlet's;
# at 0.25 none of 8 million draws is clamped.
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


def softplus_inverse(y: float | torch.Tensor) -> torch.Tensor:
    """x with softplus(x) = y (y > 0).

    Examples:
        >>> float(torch.nn.functional.softplus(softplus_inverse(2.0)))
        2.0
    """
    return torch.log(torch.expm1(torch.as_tensor(y, dtype=torch.get_default_dtype())))
