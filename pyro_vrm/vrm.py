"""VRM assembled: the decoder and priors of model.py with the guide of guide.py."""

from __future__ import annotations

from functools import partial

import torch
from pyro import poutine
from pyro.util import get_rng_state, set_rng_state
from torch import nn

from .config import ModelConfig
from .features import PairBatch
from .guide import AmortizedGuide, make_guide
from .model import Priors, make_decoder, model

__all__ = ["VRM"]


class VRM(nn.Module):
    """The fitted objects of one VRM: ``decoder`` (theta), ``amortized_guide`` (phi), ``priors``.

    ``vrm.model`` and ``vrm.guide`` are the Pyro model and guide, taking the same arguments
    ``(batch, num_pairs=None, preferences=None, aspects=None)``.

    >>> vrm = VRM(ModelConfig(latent_dim=2, width=8), hidden_size=5, num_objectives=3)
    >>> sorted(name for name, _ in vrm.named_children())
    ['amortized_guide', 'decoder']
    """

    def __init__(self, config: ModelConfig, hidden_size: int, num_objectives: int,
                 priors: Priors = Priors()):
        super().__init__()
        self.config, self.priors = config, priors
        self.hidden_size, self.num_objectives = hidden_size, num_objectives
        self.decoder = make_decoder(config.decoder, config.latent_dim, num_objectives,
                                    bayesian=config.bayesian_decoder)
        self.amortized_guide = AmortizedGuide(
            hidden_size, num_objectives, config.latent_dim, config.width, config.depth,
            config.init_concentration, config.init_scale)
        self.model = partial(model, decoder=self.decoder, priors=priors)
        self.has_global_latents = config.bayesian_decoder or priors.concentration_hyperprior is not None
        self.guide = make_guide(self.model, self.amortized_guide, self.has_global_latents)

    def create_global_parameters(self) -> None:
        """Create the AutoNormal parameters of the global latents, if any, which AutoNormal
        otherwise creates lazily on its first run: an optimizer or a saved state dict needs
        them to exist. Leaves the random number generators as they were."""
        if not self.has_global_latents:
            return
        rng, empty = get_rng_state(), torch.zeros(1, self.hidden_size)
        with poutine.block():
            self.guide(PairBatch(torch.arange(1), empty, empty, empty), num_pairs=1)
        set_rng_state(rng)
