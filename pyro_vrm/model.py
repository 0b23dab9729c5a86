r"""The VRM generative model of a human preference judgement.

For each preference pair n (prompt x_n, chosen response y_n^c, rejected response y_n^r):

.. math::

    w_n &\sim \mathrm{Dirichlet}(\alpha_0)                       && \text{objective weights of the prompt} \\
    z_n^c, z_n^r &\sim \mathcal{N}(\mu_0, \Sigma_0)               && \text{semantic features of each response} \\
    s(z) &= A z + b \in \mathbb{R}^K                              && \text{per-objective quality scores} \\
    r(w, z) &= w \cdot s(z)                                       && \text{reward} \\
    y_n &\sim \mathrm{Bernoulli}(\sigma(r(w_n, z_n^c) - r(w_n, z_n^r))) && y_n = 1: \text{chosen wins}

With a conditional prior (empirical Bayes, DESIGN.md section 3c), the hidden states h_x of the prompt
and h_xy of each response enter the story: w_n ~ Dirichlet(alpha(h_x)) and z ~ N(mu(h_x, h_xy),
diag sigma(h_x, h_xy)^2), networks that start at alpha0, mu0 and Sigma0 and are fitted by marginal
likelihood; the KL then measures what the labels and aspects add beyond the hidden states.

Optionally, A and b are global latents with Normal priors (a Bayesian decoder), alpha0 has a
LogNormal hyperprior, and, with aspect annotations observed (``aspects``), a_n^c ~ N(s(z_n^c), sigma_a) and
a_n^r ~ N(s(z_n^r), sigma_a), which ties each decoder output to a named aspect; sigma_a is fixed,
or estimated with the decoder under a HalfNormal prior. The aspects then fix the scale of s(z) in
their own units, and a preference scale tau, estimated with the decoder, can carry the sharpness
of the preferences instead: r(w, z) = tau w . s(z).

Every prior lives in :class:`Priors`; this file holds no I/O and no training code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn.functional import softplus

from .decoders import LinearDecoder, MLPDecoder, make_decoder
from .networks import MIN_CONCENTRATION, mlp, softplus_inverse

if TYPE_CHECKING:  # the model reads only the batch's index; the batch type lives with the features
    from .features import PairBatch

__all__ = ["Priors", "LinearDecoder", "MLPDecoder", "make_decoder", "ConditionalPrior", "model", "aspect_noise",
           "SITES"]

# Sample-site and plate names, shared with the guide (guide.py).
SITES = {
    "plate": "pairs",
    "weights": "objective_weights",
    "chosen": "chosen_features",
    "rejected": "rejected_features",
    "preference": "preference",
}


# ---------------------------------------------------------------------------------------------
# Priors: the one place a statistician edits. Paper defaults: alpha0 = 1, mu0 = 0, Sigma0 = I.
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Priors:
    """Every prior of the VRM model, as one value object.

    Args:
        concentration: Dirichlet concentration alpha0 of the objective weights w: one value, or
            one per objective.
        feature_loc: prior mean mu0 of each semantic feature of z.
        feature_scale: prior sd of each feature of z (Sigma0 = feature_scale**2 I).
        feature_scale_tril: a lower-triangular (d, d) scale of a full-covariance Normal prior of
            z; overrides ``feature_scale`` when given.
        feature_df: degrees of freedom of a Student-t prior of z instead of the Normal (None:
            Normal). Its KL has no closed form, so the ELBO estimates it by Monte Carlo.
        aspect_noise: sigma_a, the sd of observed standardized aspect scores around s(z), when
            aspects are observed; None (the default) estimates one per aspect with the decoder,
            a MAP estimate under the HalfNormal prior below.
        aspect_noise_scale: scale of the HalfNormal prior of a learned sigma_a.
        decoder_scale: sd of the Normal prior of A and b (Bayesian decoder only).
        concentration_hyperprior: (loc, scale) of a LogNormal hyperprior on each alpha0
            component, sampled as log alpha0 ~ Normal(loc, scale) so that its guide needs no
            change of variables; None keeps alpha0 fixed.

    Examples:
        >>> Priors()
        Priors(objective_weights: Dirichlet(1.0), features: Normal(0.0, 1.0), aspects: Normal(s(z), HalfNormal(1.0)))
        >>> Priors(concentration=0.3) == Priors(concentration=0.3)
        True
    """

    concentration: float | tuple[float, ...] = 1.0
    feature_loc: float = 0.0
    feature_scale: float = 1.0
    feature_scale_tril: tuple[tuple[float, ...], ...] | None = None
    feature_df: float | None = None
    aspect_noise: float | None = None
    aspect_noise_scale: float = 1.0
    decoder_scale: float = 1.0
    concentration_hyperprior: tuple[float, float] | None = None

    def __post_init__(self):
        conc = self.concentration if isinstance(self.concentration, tuple) else (self.concentration,)
        if any(c <= 0 for c in conc):
            raise ValueError(f"Priors.concentration must be positive, got {self.concentration}")
        for name in ("feature_scale", "aspect_noise", "aspect_noise_scale", "decoder_scale"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"Priors.{name} must be positive, got {getattr(self, name)}")
        if self.feature_df is not None and self.feature_df <= 0:
            raise ValueError(f"Priors.feature_df must be positive, got {self.feature_df}")
        if self.concentration_hyperprior is not None and self.concentration_hyperprior[1] <= 0:
            raise ValueError("Priors.concentration_hyperprior needs a positive scale")

    def __repr__(self) -> str:
        if self.concentration_hyperprior is not None:
            weights = "Dirichlet(LogNormal{})".format(self.concentration_hyperprior)
        else:
            weights = f"Dirichlet({self.concentration})"
        if self.feature_scale_tril is not None:
            features = f"MultivariateNormal({self.feature_loc}, scale_tril)"
        elif self.feature_df is not None:
            features = f"StudentT({self.feature_df}, {self.feature_loc}, {self.feature_scale})"
        else:
            features = f"Normal({self.feature_loc}, {self.feature_scale})"
        sigma_a = f"HalfNormal({self.aspect_noise_scale})" if self.aspect_noise is None else self.aspect_noise
        decoder = "" if self.decoder_scale == 1.0 else f", decoder: Normal(0, {self.decoder_scale})"
        return (f"Priors(objective_weights: {weights}, features: {features}, "
                f"aspects: Normal(s(z), {sigma_a}){decoder})")

    def to_dict(self) -> dict:
        """The fields as plain JSON values (tuples become lists)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Priors:
        """The inverse of :meth:`to_dict`: JSON lists become tuples again.

        Examples:
            >>> import json
            >>> p = Priors(concentration=(0.5, 1.0), feature_df=4.0)
            >>> Priors.from_dict(json.loads(json.dumps(p.to_dict()))) == p
            True
        """
        def tuples(value):
            return tuple(map(tuples, value)) if isinstance(value, list) else value

        return cls(**{name: tuples(value) for name, value in values.items()})

    def concentration_vector(self, num_objectives: int, like: torch.Tensor) -> torch.Tensor:
        """alpha0 as a (K,) tensor on ``like``'s device and dtype."""
        alpha = like.new_tensor(self.concentration)
        if alpha.dim() == 1 and alpha.numel() != num_objectives:
            raise ValueError(f"Priors.concentration has {alpha.numel()} values for {num_objectives} objectives")
        return alpha.expand(num_objectives)

    def objective_weights(self, concentration: torch.Tensor) -> dist.Distribution:
        """p(w) given alpha0 (K,)."""
        return dist.Dirichlet(concentration)

    def semantic_features(self, latent_dim: int, like: torch.Tensor) -> dist.Distribution:
        """p(z), with event shape (d,)."""
        loc = like.new_full((latent_dim,), self.feature_loc)
        if self.feature_scale_tril is not None:
            scale_tril = like.new_tensor(self.feature_scale_tril)
            if scale_tril.shape != (latent_dim, latent_dim):
                raise ValueError(f"Priors.feature_scale_tril has shape {tuple(scale_tril.shape)}, "
                                 f"expected ({latent_dim}, {latent_dim})")
            return dist.MultivariateNormal(loc, scale_tril=scale_tril)
        scale = like.new_full((latent_dim,), self.feature_scale)
        if self.feature_df is not None:
            return dist.StudentT(like.new_tensor(self.feature_df), loc, scale).to_event(1)
        return dist.Normal(loc, scale).to_event(1)

    def log_concentration_prior(self, num_objectives: int, like: torch.Tensor) -> dist.Distribution:
        """Normal hyperprior on log alpha0, event shape (K,)."""
        loc, scale = self.concentration_hyperprior
        return dist.Normal(like.new_tensor(loc), like.new_tensor(scale)).expand([num_objectives]).to_event(1)

    def aspect_noise_prior(self, num_objectives: int, like: torch.Tensor) -> dist.Distribution:
        """HalfNormal prior of a learned sigma_a, event shape (K,)."""
        return dist.HalfNormal(like.new_tensor(self.aspect_noise_scale)).expand([num_objectives]).to_event(1)

    def decoder_weight(self, num_objectives: int, latent_dim: int) -> dist.Distribution:
        """Prior on the decoder's A (K, d), for the Bayesian decoder."""
        return dist.Normal(0.0, self.decoder_scale).expand([num_objectives, latent_dim]).to_event(2)

    def decoder_bias(self, num_objectives: int) -> dist.Distribution:
        """Prior on the decoder's b (K,) for the Bayesian decoder."""
        return dist.Normal(0.0, self.decoder_scale).expand([num_objectives]).to_event(1)


# ---------------------------------------------------------------------------------------------
# Conditional priors: the hidden states in the story (empirical Bayes).
# ---------------------------------------------------------------------------------------------
class ConditionalPrior(nn.Module):
    """p(w | h_x) = Dirichlet(alpha(h_x)) and p(z | h_x, h_xy) = Normal(mu, diag sigma^2)(h_x, h_xy).

    Each network's output layer starts near zero with its bias at ``priors``' alpha0, mu0 and
    sigma0 (feature_scale), so a fit starts from the fixed prior. The networks are parameters of
    the model, fitted with the decoder by the ELBO at weight 1: by marginal likelihood.

    Examples:
        >>> prior = ConditionalPrior(hidden_size=5, num_objectives=3, latent_dim=2, width=8, depth=1)
        >>> p_w, p_z = prior.objective_weights(torch.zeros(4, 5)), prior.semantic_features(torch.zeros(4, 5), torch.zeros(4, 5))
        >>> p_w.batch_shape, p_z.event_shape, round(float(p_z.base_dist.scale[0, 0].detach()), 1)
        (torch.Size([4]), torch.Size([2]), 1.0)
    """

    def __init__(self, hidden_size: int, num_objectives: int, latent_dim: int, width: int, depth: int,
                 priors: Priors = Priors()):
        super().__init__()
        self.check_priors(priors)
        concentration = priors.concentration_vector(num_objectives, torch.zeros(()))
        self.latent_dim = latent_dim
        self.weight_net = mlp(hidden_size, width, depth, num_objectives)
        self.feature_net = mlp(2 * hidden_size, width, depth, 2 * latent_dim)
        with torch.no_grad():
            for net in (self.weight_net, self.feature_net):
                net[-1].weight.mul_(0.1)
            self.weight_net[-1].bias.copy_(softplus_inverse(concentration - MIN_CONCENTRATION))
            self.feature_net[-1].bias[:latent_dim].fill_(priors.feature_loc)
            self.feature_net[-1].bias[latent_dim:].fill_(softplus_inverse(priors.feature_scale))

    @staticmethod
    def check_priors(priors: Priors) -> None:
        """Raise ValueError for priors a conditional prior cannot start from."""
        if priors.feature_scale_tril is not None or priors.feature_df is not None or priors.concentration_hyperprior:
            raise ValueError("a conditional prior learns a Dirichlet and a diagonal Normal: it starts from "
                             "Priors.concentration, feature_loc and feature_scale and takes no scale_tril, "
                             "feature_df or concentration_hyperprior; fit these priors with a fixed prior "
                             "(--no-conditional-prior, or --preset tempered)")
        if torch.as_tensor(priors.concentration).min() <= MIN_CONCENTRATION:
            raise ValueError(f"a conditional prior's Priors.concentration must exceed {MIN_CONCENTRATION}")

    def objective_weights(self, prompt_state: torch.Tensor) -> dist.Dirichlet:
        """p(w | h_x) from h_x (B, H), batch shape (B,)."""
        return dist.Dirichlet(softplus(self.weight_net(prompt_state)) + MIN_CONCENTRATION)

    def semantic_features(self, prompt_state: torch.Tensor, response_state: torch.Tensor) -> dist.Distribution:
        """p(z | h_x, h_xy) from (B, H) states (or (2, B, H) for both responses), event shape (d,)."""
        loc, raw_scale = self.feature_net(torch.cat([prompt_state, response_state], -1)).chunk(2, -1)
        return dist.Normal(loc, softplus(raw_scale) + 1e-3).to_event(1)


# ---------------------------------------------------------------------------------------------
# The model.
# ---------------------------------------------------------------------------------------------
def model(
    batch: PairBatch,
    decoder: LinearDecoder | MLPDecoder,
    priors: Priors = Priors(),
    num_pairs: int | None = None,
    preferences: torch.Tensor | None = None,
    aspects: tuple[torch.Tensor, torch.Tensor] | None = None,
    conditional_prior: ConditionalPrior | None = None,
) -> torch.Tensor:
    """The generative story above, for a minibatch of B pairs out of ``num_pairs``.

    Args:
        batch: the minibatch: ``batch.index`` (B,), the pairs' positions in the data set, and,
            under a conditional prior, the hidden states (B, H) each; otherwise they are the guide's.
        decoder: r(w, z), a :class:`LinearDecoder` or :class:`MLPDecoder`.
        priors: every prior of the model.
        num_pairs: N, the size of the data set (default B): the plate scales log-densities by
            N / B so that a minibatch ELBO estimates the full-data ELBO.
        preferences: y (B,), 1.0 where the chosen response wins; None samples y.
        aspects: (a^c, a^r), each (B, K), standardized aspect scores observed around s(z) with
            sd sigma_a (``priors.aspect_noise``, or the decoder's learned one, whose HalfNormal
            prior then enters once); None leaves them out of the model.
        conditional_prior: p(w | h_x) and p(z | h_x, h_xy) in place of ``priors``' fixed ones.

    Returns:
        y (B,).
    """
    index = batch.index
    num_objectives, latent_dim = decoder.num_objectives, decoder.latent_dim
    like = torch.zeros((), device=index.device)  # priors are built on the data's device

    if priors.concentration_hyperprior is None:
        concentration = priors.concentration_vector(num_objectives, like)
    else:
        log_concentration = pyro.sample("log_concentration",
                                        priors.log_concentration_prior(num_objectives, like))
        concentration = log_concentration.exp()

    decoder_draws = {}
    if isinstance(decoder, LinearDecoder) and decoder.bayesian:  # A ~ N(0, decoder_scale), b ~ N(0, decoder_scale): global latents
        decoder_draws["weight"] = pyro.sample("decoder_weight", priors.decoder_weight(num_objectives, latent_dim))
        decoder_draws["bias"] = pyro.sample("decoder_bias", priors.decoder_bias(num_objectives))

    if conditional_prior is None:
        p_weights = priors.objective_weights(concentration)
        p_chosen = p_rejected = priors.semantic_features(latent_dim, like)
    else:  # the hidden states enter the story
        p_weights = conditional_prior.objective_weights(batch.prompt_state)
        p_chosen = conditional_prior.semantic_features(batch.prompt_state, batch.chosen_state)
        p_rejected = conditional_prior.semantic_features(batch.prompt_state, batch.rejected_state)

    with pyro.plate(SITES["plate"], num_pairs or len(index), subsample=index):
        w = pyro.sample(SITES["weights"], p_weights)
        z_chosen = pyro.sample(SITES["chosen"], p_chosen)
        z_rejected = pyro.sample(SITES["rejected"], p_rejected)

        rewards, scores = decoder(w, torch.stack([z_chosen, z_rejected]), **decoder_draws)  # (2, B), (2, B, K)
        r_chosen, r_rejected = rewards.unbind(0)
        pyro.deterministic("chosen_reward", r_chosen)
        pyro.deterministic("rejected_reward", r_rejected)
        y = pyro.sample(
            SITES["preference"], dist.Bernoulli(logits=r_chosen - r_rejected), obs=preferences
        )

        if aspects is not None:
            if scores is None:
                raise ValueError("observed aspects need per-objective scores: use --decoder linear")
            sigma_a = aspect_noise(decoder, priors)
            pyro.sample("chosen_aspects", dist.Normal(scores[0], sigma_a).to_event(1), obs=aspects[0])
            pyro.sample("rejected_aspects", dist.Normal(scores[1], sigma_a).to_event(1), obs=aspects[1])

    if aspects is not None and priors.aspect_noise is None:  # a learned sigma_a: its log prior, once
        pyro.factor("aspect_noise_prior",
                    priors.aspect_noise_prior(num_objectives, like).log_prob(decoder.aspect_noise))
    return y


def aspect_noise(decoder: LinearDecoder, priors: Priors) -> torch.Tensor | float:
    """sigma_a: fixed by ``priors``, or the decoder's learned one (K,)."""
    if priors.aspect_noise is not None:
        return priors.aspect_noise
    if decoder.aspect_noise is None:
        raise ValueError("Priors.aspect_noise is None (learned), but the decoder holds no sigma_a to learn")
    return decoder.aspect_noise
