"""VRM assembled: the decoder and priors of model.py with the guide of guide.py, as one
``PyroModule`` that owns every parameter of a fit; and a fit saved in, or read from, a run folder.

Parameters belong to the module, not to Pyro's global param store (the package sets
``pyro.settings.set(module_local_params=True)``), so two fits in one process never share one, a
checkpoint is a ``state_dict``, and nothing needs ``pyro.clear_param_store()``.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroModule
from pyro.poutine.util import site_is_subsample
from pyro.util import get_rng_state, set_rng_state

from .config import ModelConfig
from .features import PairBatch
from .guide import AmortizedGuide, PairGuide
from .model import ConditionalPrior, Priors, make_decoder, model
from .runs import RunDir
from .supervision import Standardizer

__all__ = ["VRM", "build_vrm", "load_vrm"]


class VRM(PyroModule):
    """The fitted objects of one VRM: ``decoder`` (theta: A, b and, when aspects are observed
    with a learned noise, sigma_a), ``conditional_prior`` (p(w | h_x) and p(z | h), with
    ``config.conditional_prior``; else None), ``amortized_guide`` (phi, the local latents' q),
    ``global_guide`` (an ``AutoNormal`` over the global latents: a Bayesian decoder's A and b,
    the hyperprior's log alpha0; None without them) and ``priors``.

    ``vrm.model`` and ``vrm.guide`` are the Pyro model and guide; both take
    ``(batch, num_pairs=None, preferences=None, aspects=None)`` and share site and plate names.
    Every parameter belongs to the module: ``vrm.parameters()`` is what an optimizer steps and
    ``vrm.state_dict()`` what a checkpoint keeps.

    Args:
        config: sizes, decoder and guide networks; ``config.observe_aspects`` must be resolved
            (True or False) for a fit that observes aspects to get its learned sigma_a
            (:func:`pyro_vrm.train.fit_vrm` resolves it from the data).
        hidden_size: H, the size of the hidden states h_x and h_xy.
        num_objectives: K, the number of objectives (and of aspect scores).
        priors: every prior of the model.

    Examples:
        >>> vrm = VRM(ModelConfig(latent_dim=2, width=8), hidden_size=5, num_objectives=3)
        >>> sorted(name for name, _ in vrm.named_children())
        ['amortized_guide', 'conditional_prior', 'decoder']
    """

    def __init__(self, config: ModelConfig, hidden_size: int, num_objectives: int,
                 priors: Priors = Priors()):
        super().__init__()
        self.config, self.priors = config, priors
        self.hidden_size, self.num_objectives = hidden_size, num_objectives
        aspects = bool(config.observe_aspects) and config.decoder == "linear"
        self.decoder = make_decoder(config.decoder, config.latent_dim, num_objectives,
                                    bayesian=config.bayesian_decoder,
                                    learn_aspect_noise=aspects and priors.aspect_noise is None,
                                    learn_preference_scale=aspects and config.preference_scale)
        if config.conditional_prior:
            self.conditional_prior = ConditionalPrior(hidden_size, num_objectives, config.latent_dim, config.width,
                                                      config.depth, priors)
            num_aspects = num_objectives if config.observe_aspects else 0
            self.amortized_guide = PairGuide(num_objectives, config.latent_dim, num_aspects, config.width,
                                             config.depth)
        else:
            self.conditional_prior = None
            self.amortized_guide = AmortizedGuide(
                hidden_size, num_objectives, config.latent_dim, config.width, config.depth,
                config.init_concentration, config.init_scale)
        self.has_global_latents = config.bayesian_decoder or priors.concentration_hyperprior is not None
        self.global_guide = AutoNormal(self.global_model, init_scale=0.05) if self.has_global_latents else None

    def model(self, batch: PairBatch, num_pairs: int | None = None, preferences: torch.Tensor | None = None,
              aspects: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """:func:`pyro_vrm.model.model` with this fit's decoder and priors."""
        return model(batch, self.decoder, self.priors, num_pairs, preferences, aspects, self.conditional_prior)

    def guide(self, batch: PairBatch, num_pairs: int | None = None, preferences: torch.Tensor | None = None,
              aspects: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """q of every latent: the global latents' AutoNormal, if any, then the local latents'."""
        if self.global_guide is not None:
            self.global_guide(batch, num_pairs, preferences, aspects)
        self.local_guide(batch, num_pairs, preferences, aspects)

    def local_guide(self, batch: PairBatch, num_pairs: int | None = None, preferences: torch.Tensor | None = None,
                    aspects: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """q of the pairs' own latents, w, z_c and z_r: the amortized guide (under a conditional
        prior, the :class:`~pyro_vrm.guide.PairGuide`, which reads the preferences and aspects)."""
        if self.conditional_prior is None:
            self.amortized_guide(batch, num_pairs, preferences, aspects)
        else:
            self.amortized_guide(batch, num_pairs, preferences, aspects, prior=self.conditional_prior)

    def predictive_guide(self, batch: PairBatch, num_pairs: int | None = None, preferences: torch.Tensor | None = None,
                         aspects: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """What a new pair's rewards are drawn from before its label is seen: the global latents'
        q and the label-blind amortized guide; under a conditional prior, the model's own prior
        draws the local latents, so only the global latents are guided."""
        if self.conditional_prior is None:
            return self.guide(batch, num_pairs, preferences, aspects)
        if self.global_guide is not None:
            self.global_guide(batch, num_pairs, preferences, aspects)

    def latent_predictive(self, prompt_state: torch.Tensor,
                          response_state: torch.Tensor) -> tuple[dist.Dirichlet, dist.Distribution]:
        """(w's, z's) distribution for responses to prompts, from their states (B, H) alone: the
        conditional prior, or the guide's q(w | x), q(z | x, y); batch shape (B,)."""
        if self.conditional_prior is None:
            guide = self.amortized_guide
            return guide.weight_posterior(prompt_state), guide.feature_posterior(prompt_state, response_state)
        prior = self.conditional_prior
        return prior.objective_weights(prompt_state), prior.semantic_features(prompt_state, response_state)

    def decayed_parameters(self):
        """What ``--weight-decay`` shrinks: every parameter, or under a conditional prior the prior's
        networks only, the part of the model fitted by marginal likelihood that overfits."""
        return (self.conditional_prior if self.conditional_prior is not None else self).parameters()

    def global_model(self, *args, **kwargs):
        """The model with only its global latents exposed (the unobserved sites outside every
        plate), for the AutoNormal that guides them."""
        return poutine.block(self.model, expose_fn=_is_global_latent)(*args, **kwargs)

    def create_global_parameters(self) -> None:
        """Create the AutoNormal parameters of the global latents, if any, which AutoNormal
        otherwise creates lazily on its first run: an optimizer or a saved state dict needs
        them to exist. Leaves the random number generators as they were."""
        if self.global_guide is None:
            return
        rng, empty = get_rng_state(), torch.zeros(1, self.hidden_size)
        with poutine.block():
            self.guide(PairBatch(torch.arange(1), empty, empty, empty), num_pairs=1)
        set_rng_state(rng)


def _is_global_latent(msg: dict) -> bool:
    return (msg["type"] == "sample" and not msg["is_observed"] and not msg["cond_indep_stack"]
            and not site_is_subsample(msg))


def build_vrm(config: dict) -> VRM:
    """A VRM with freshly initialised parameters from a checkpoint's config (model, priors,
    sizes), every parameter created, so that a saved state dict loads into it."""
    priors = Priors.from_dict(config["priors"])
    vrm = VRM(ModelConfig.from_dict(config["model"]), config["hidden_size"], config["num_objectives"], priors)
    vrm.create_global_parameters()
    return vrm


def load_vrm(run: RunDir) -> tuple[VRM, Standardizer | None]:
    """The VRM (and the aspect standardizer, if any) saved in ``run``'s checkpoint."""
    vrm = build_vrm(run.checkpoint_config())
    extra = run.load_checkpoint(vrm)["extra"]
    return vrm, Standardizer.from_extra(extra)
