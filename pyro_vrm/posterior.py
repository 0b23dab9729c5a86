r"""Inference with a fitted VRM (DESIGN.md section 4): posterior rewards and predictive, the KL
terms of the objective, and the expected log-likelihood. Training, evaluation and the reward
model all read these; bounds live in :mod:`pyro_vrm.bounds` and evaluation in :mod:`pyro_vrm.evaluate`.

For the linear decoder with point-estimated A, b the posterior mean and sd of a reward are
exact, since q factorizes:

    E_q[r]   = tau m_w . (A m_z + b)
    Var_q[r] = tau^2 [tr((S + m_s m_s^T)(C_w + m_w m_w^T)) - (m_w . m_s)^2]

with m_s = A m_z + b, S = A diag(s_z^2) A^T, the Dirichlet's C_w = (diag m_w - m_w m_w^T)
/ (alpha_0 + 1), and tau the decoder's preference scale (1 without one). Other decoders (mlp, Bayesian) use Monte Carlo through ``pyro.infer.Predictive``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import Predictive
from torch.distributions import kl_divergence

from .features import PairBatch
from .model import SITES, LinearDecoder
from .vrm import VRM

__all__ = ["reward_posterior", "pair_posterior", "KLTerms", "kl_terms", "expected_log_likelihood"]


def _exact(vrm: VRM) -> bool:
    """Whether the reward's moments have the closed form above: a linear decoder with A, b fixed
    (a hyperprior on alpha0 leaves them exact, since q(w) does not depend on it)."""
    return isinstance(vrm.decoder, LinearDecoder) and not vrm.decoder.bayesian


@torch.no_grad()
def reward_posterior(vrm: VRM, prompt_state: torch.Tensor, response_state: torch.Tensor,
                     num_samples: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and sd of r(w, z) for responses to prompts: states (B, H) -> (B,), (B,).
    Under a conditional prior, a new response's latents are the prior's given its states."""
    if not _exact(vrm):
        batch = PairBatch(torch.arange(len(prompt_state)), prompt_state, response_state, response_state)
        rewards = _reward_samples(vrm, batch, num_samples)[0]
        return rewards.mean(0), rewards.std(0)
    q_w, q_z = vrm.latent_predictive(prompt_state, response_state)
    q_z = q_z.base_dist
    A, b = vrm.decoder.weight, vrm.decoder.bias                         # (K, d), (K,)
    m_w, alpha0 = q_w.mean, q_w.concentration.sum(-1, keepdim=True)     # (B, K), (B, 1)
    m_s = q_z.loc @ A.T + b                                             # (B, K)
    S = torch.einsum("kd,bd,jd->bkj", A, q_z.scale**2, A)               # (B, K, K)
    C_w = (torch.diag_embed(m_w) - m_w.unsqueeze(-1) * m_w.unsqueeze(-2)) / (alpha0.unsqueeze(-1) + 1)
    second_s = S + m_s.unsqueeze(-1) * m_s.unsqueeze(-2)
    second_w = C_w + m_w.unsqueeze(-1) * m_w.unsqueeze(-2)
    mean = (m_w * m_s).sum(-1)
    var = (second_s * second_w).sum((-1, -2)) - mean**2
    tau = vrm.decoder.preference_scale
    return tau * mean, tau * var.clamp_min(0).sqrt()


def _reward_samples(vrm: VRM, batch: PairBatch, num_samples: int) -> torch.Tensor:
    """(2, S, B) posterior draws of the chosen and rejected rewards (shared w per pair)."""
    predictive = Predictive(vrm.model, guide=vrm.predictive_guide, num_samples=num_samples, parallel=True,
                            return_sites=["chosen_reward", "rejected_reward"])
    draws = predictive(batch, num_pairs=len(batch.index))
    return torch.stack([draws["chosen_reward"], draws["rejected_reward"]]).reshape(
        2, num_samples, len(batch.index))


@torch.no_grad()
def pair_posterior(vrm: VRM, batch: PairBatch, num_samples: int = 256) -> dict[str, torch.Tensor]:
    """For each pair of ``batch`` (B pairs): posterior mean and sd of both rewards, the posterior
    predictive P(chosen wins) = E_q[sigmoid(r_c - r_r)], the Gibbs error E_q[1(r_c < r_r)], and
    the posterior sd of the margin r_c - r_r (the two rewards share w, so their sds do not add)."""
    samples = _reward_samples(vrm, batch, num_samples)
    margin = samples[0] - samples[1]                                     # (S, B)
    out = {"prob_chosen": torch.sigmoid(margin).mean(0), "gibbs_error": (margin < 0).float().mean(0),
           "margin_sd": margin.std(0)}
    if _exact(vrm):
        out["mean_chosen"], out["sd_chosen"] = reward_posterior(vrm, batch.prompt_state, batch.chosen_state)
        out["mean_rejected"], out["sd_rejected"] = reward_posterior(vrm, batch.prompt_state, batch.rejected_state)
    else:
        out["mean_chosen"], out["sd_chosen"] = samples[0].mean(0), samples[0].std(0)
        out["mean_rejected"], out["sd_rejected"] = samples[1].mean(0), samples[1].std(0)
    return out


@dataclass
class KLTerms:
    """Every KL term of the objective for B pairs: the local ones per pair, the global one once.

    weights, chosen, rejected: (B,) KL(q(w | x) || p(w)), KL(q(z_c | x, y_c) || p(z)),
        KL(q(z_r | x, y_r) || p(z)). Under a hyperprior on alpha0 the first is averaged over
        q(log alpha0).
    global_kl: () KL(q(A, b, log alpha0) || p) of the global latents (0 without any); it belongs
        to the whole data set, not to a pair.
    exact: whether every term is in closed form (else some are Monte Carlo estimates).
    """

    weights: torch.Tensor
    chosen: torch.Tensor
    rejected: torch.Tensor
    global_kl: torch.Tensor
    exact: bool

    @property
    def local(self) -> torch.Tensor:
        """(B,) the KL of each pair's own latents."""
        return self.weights + self.chosen + self.rejected

    def total(self, num_pairs: int) -> torch.Tensor:
        """() the KL of a data set of ``num_pairs`` pairs, estimated from these B: the local
        terms scaled to the data set, the global term counted once."""
        return self.local.mean() * num_pairs + self.global_kl


def kl_terms(vrm: VRM, batch: PairBatch, num_samples: int = 64,
             aspects: tuple[torch.Tensor, torch.Tensor] | None = None) -> KLTerms:
    """The KL terms of the objective for the pairs of ``batch``: closed form where torch has
    one, else a Monte Carlo estimate from ``num_samples`` draws of q. The one place they are
    computed: training metrics, the full-data ELBO, the KL per pair and the PAC-Bayes bound read
    them here. Under a conditional prior, q is the guide given the pairs' preferences (y = 1) and
    ``aspects`` ((B, K) each, which a fit that observes them needs), p the conditional prior."""
    if vrm.conditional_prior is not None:
        return _conditional_kl_terms(vrm, batch, aspects)
    guide, priors = vrm.amortized_guide, vrm.priors
    like = batch.prompt_state
    exact = True
    q_w = guide.weight_posterior(batch.prompt_state)
    if priors.concentration_hyperprior is None:
        kl_w = kl_divergence(q_w, priors.objective_weights(priors.concentration_vector(vrm.num_objectives, like)))
    else:  # E over q(log alpha0) of the Dirichlet KL
        q_alpha = _global_posteriors(vrm, batch)["log_concentration"][0]
        alpha0 = q_alpha.sample((num_samples,)).exp().unsqueeze(-2)          # (S, 1, K)
        kl_w = kl_divergence(dist.Dirichlet(q_w.concentration), dist.Dirichlet(alpha0)).mean(0)
        exact = False
    p_z = priors.semantic_features(vrm.config.latent_dim, like)
    kl_z = []
    for state in (batch.chosen_state, batch.rejected_state):
        kl, closed = _kl(guide.feature_posterior(batch.prompt_state, state), p_z, num_samples)
        kl_z.append(kl)
        exact = exact and closed
    global_kl = like.new_zeros(())
    for q, p in _global_posteriors(vrm, batch).values():
        global_kl = global_kl + kl_divergence(q, p).sum()
    return KLTerms(kl_w, kl_z[0], kl_z[1], global_kl, exact)


def _conditional_kl_terms(vrm: VRM, batch: PairBatch, aspects) -> KLTerms:
    with poutine.block():
        trace = poutine.trace(vrm.local_guide).get_trace(batch, preferences=torch.ones(len(batch.index)),
                                                         aspects=aspects)
    prior = vrm.conditional_prior
    q = {name: site["fn"] for name, site in trace.iter_stochastic_nodes()}
    p = {SITES["weights"]: prior.objective_weights(batch.prompt_state),
         SITES["chosen"]: prior.semantic_features(batch.prompt_state, batch.chosen_state),
         SITES["rejected"]: prior.semantic_features(batch.prompt_state, batch.rejected_state)}
    kl = {name: kl_divergence(q[name], p[name]) for name in p}
    global_kl = batch.prompt_state.new_zeros(())
    for q_global, p_global in _global_posteriors(vrm, batch).values():
        global_kl = global_kl + kl_divergence(q_global, p_global).sum()
    return KLTerms(kl[SITES["weights"]], kl[SITES["chosen"]], kl[SITES["rejected"]], global_kl, True)


def _kl(q, p, num_samples: int) -> tuple[torch.Tensor, bool]:
    """(KL(q || p), whether in closed form): closed form where torch has it, else Monte Carlo."""
    try:
        return kl_divergence(q, p), True
    except NotImplementedError:
        x = q.rsample((num_samples,))
        return (q.log_prob(x) - p.log_prob(x)).mean(0), False


def _global_posteriors(vrm: VRM, batch: PairBatch) -> dict[str, tuple[dist.Distribution, dist.Distribution]]:
    """{site: (q, prior)} of each global latent; the AutoNormal's q is Normal on the site's own
    (unconstrained, real) scale."""
    if vrm.global_guide is None:
        return {}
    with poutine.block():
        trace = poutine.trace(vrm.global_model).get_trace(batch, num_pairs=len(batch.index))
    guide, out = vrm.global_guide, {}
    for name, site in trace.iter_stochastic_nodes():
        q = dist.Normal(getattr(guide.locs, name), getattr(guide.scales, name)).to_event(site["fn"].event_dim)
        out[name] = (q, site["fn"])
    return out


def expected_log_likelihood(vrm: VRM, batch: PairBatch, aspects: tuple[torch.Tensor, torch.Tensor] | None = None,
                            num_particles: int = 16) -> torch.Tensor:
    """E_q[log p(y = 1 | w, z_c, z_r)] + E_q[log p(a_c, a_r | z_c, z_r)] per pair (B,), the
    aspect term only with ``aspects`` ((B, K) each), by Monte Carlo over ``num_particles`` draws
    of the guide (a learned sigma_a's prior is no pair's and is left out). ``batch.index`` must
    be 0..B-1 (the pairs form their own data set)."""
    num_pairs = len(batch.index)
    preferences = torch.ones(num_pairs, device=batch.index.device)
    total = 0.0
    for _ in range(num_particles):
        guide_trace = poutine.trace(vrm.guide).get_trace(batch, num_pairs=num_pairs, preferences=preferences,
                                                         aspects=aspects)
        model_trace = poutine.trace(poutine.replay(vrm.model, trace=guide_trace)).get_trace(
            batch, num_pairs=num_pairs, preferences=preferences, aspects=aspects)
        total = total + sum(site["fn"].log_prob(site["value"]) for site in model_trace.nodes.values()
                            if site["type"] == "sample" and site["is_observed"] and site["cond_indep_stack"])
    return total / num_particles
