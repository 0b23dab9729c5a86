r"""Using a fitted VRM (DESIGN.md section 4): rewards, predictive, accuracy, PAC-Bayes bound.

For the linear decoder with point-estimated A, b the posterior mean and sd of a reward are
exact, since q factorizes:

    E_q[r]   = m_w . (A m_z + b)
    Var_q[r] = tr((S + m_s m_s^T)(C_w + m_w m_w^T)) - (m_w . m_s)^2

with m_s = A m_z + b, S = A diag(s_z^2) A^T, and the Dirichlet's C_w = (diag m_w - m_w m_w^T)
/ (alpha_0 + 1). Other decoders (mlp, Bayesian) use Monte Carlo through ``pyro.infer.Predictive``.
"""

from __future__ import annotations

import math

import torch
from pyro.infer import Predictive
from torch.distributions import kl_divergence

from .features import PairBatch, PreferenceFeatures
from .model import LinearDecoder
from .vrm import VRM

__all__ = ["reward_posterior", "pair_posterior", "kl_per_pair", "kl_estimate", "pac_bayes_bound",
           "pairwise_accuracy", "evaluate_pairs"]


def _exact(vrm: VRM) -> bool:
    return isinstance(vrm.decoder, LinearDecoder) and not vrm.has_global_latents


@torch.no_grad()
def reward_posterior(vrm: VRM, prompt_state: torch.Tensor, response_state: torch.Tensor,
                     num_samples: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and sd of r(w, z) for responses to prompts: states (B, H) -> (B,), (B,)."""
    if not _exact(vrm):
        batch = PairBatch(torch.arange(len(prompt_state)), prompt_state, response_state, response_state)
        rewards = _reward_samples(vrm, batch, num_samples)[0]
        return rewards.mean(0), rewards.std(0)
    q_w = vrm.amortized_guide.weight_posterior(prompt_state)
    q_z = vrm.amortized_guide.feature_posterior(prompt_state, response_state).base_dist
    A, b = vrm.decoder.weight, vrm.decoder.bias                         # (K, d), (K,)
    m_w, alpha0 = q_w.mean, q_w.concentration.sum(-1, keepdim=True)     # (B, K), (B, 1)
    m_s = q_z.loc @ A.T + b                                             # (B, K)
    S = torch.einsum("kd,bd,jd->bkj", A, q_z.scale**2, A)               # (B, K, K)
    C_w = (torch.diag_embed(m_w) - m_w.unsqueeze(-1) * m_w.unsqueeze(-2)) / (alpha0.unsqueeze(-1) + 1)
    second_s = S + m_s.unsqueeze(-1) * m_s.unsqueeze(-2)
    second_w = C_w + m_w.unsqueeze(-1) * m_w.unsqueeze(-2)
    mean = (m_w * m_s).sum(-1)
    var = (second_s * second_w).sum((-1, -2)) - mean**2
    return mean, var.clamp_min(0).sqrt()


def _reward_samples(vrm: VRM, batch: PairBatch, num_samples: int) -> torch.Tensor:
    """(2, S, B) posterior draws of the chosen and rejected rewards (shared w per pair)."""
    predictive = Predictive(vrm.model, guide=vrm.guide, num_samples=num_samples, parallel=True,
                            return_sites=["chosen_reward", "rejected_reward"])
    draws = predictive(batch, num_pairs=len(batch.index))
    return torch.stack([draws["chosen_reward"], draws["rejected_reward"]]).reshape(
        2, num_samples, len(batch.index))


@torch.no_grad()
def pair_posterior(vrm: VRM, batch: PairBatch, num_samples: int = 256) -> dict[str, torch.Tensor]:
    """For each pair of ``batch`` (B pairs): posterior mean and sd of both rewards, the posterior
    predictive P(chosen wins) = E_q[sigmoid(r_c - r_r)], and the Gibbs error E_q[1(r_c < r_r)]."""
    samples = _reward_samples(vrm, batch, num_samples)
    margin = samples[0] - samples[1]                                     # (S, B)
    out = {"prob_chosen": torch.sigmoid(margin).mean(0), "gibbs_error": (margin < 0).float().mean(0)}
    if _exact(vrm):
        out["mean_chosen"], out["sd_chosen"] = reward_posterior(vrm, batch.prompt_state, batch.chosen_state)
        out["mean_rejected"], out["sd_rejected"] = reward_posterior(vrm, batch.prompt_state, batch.rejected_state)
    else:
        out["mean_chosen"], out["sd_chosen"] = samples[0].mean(0), samples[0].std(0)
        out["mean_rejected"], out["sd_rejected"] = samples[1].mean(0), samples[1].std(0)
    return out


@torch.no_grad()
def kl_per_pair(vrm: VRM, batch: PairBatch, num_samples: int = 64) -> torch.Tensor:
    """KL(q(w|x) || p(w)) + KL(q(z_c) || p(z)) + KL(q(z_r) || p(z)) per pair (B,); closed form
    where torch has it, Monte Carlo otherwise. With a concentration hyperprior, p(w) is taken at
    exp of the mean of its log."""
    guide, priors = vrm.amortized_guide, vrm.priors
    like = batch.prompt_state
    if priors.concentration_hyperprior is None:
        alpha0 = priors.concentration_vector(vrm.num_objectives, like)
    else:
        alpha0 = priors.log_concentration_prior(vrm.num_objectives, like).mean.exp()
    terms = [(guide.weight_posterior(batch.prompt_state), priors.objective_weights(alpha0))]
    p_z = priors.semantic_features(vrm.config.latent_dim, like)
    for state in (batch.chosen_state, batch.rejected_state):
        terms.append((guide.feature_posterior(batch.prompt_state, state), p_z))
    return sum(kl_estimate(q, p, num_samples) for q, p in terms)


def kl_estimate(q, p, num_samples: int) -> torch.Tensor:
    """KL(q || p): closed form where torch has it, else a Monte Carlo estimate from q."""
    try:
        return kl_divergence(q, p)
    except NotImplementedError:
        x = q.sample((num_samples,))
        return (q.log_prob(x) - p.log_prob(x)).mean(0)


def pac_bayes_bound(empirical_error: float, kl_total: float, n: int, delta: float = 0.05) -> float:
    """McAllester's bound (paper Thm 5.1): L(Q) <= Lhat + sqrt((KL + ln(1/delta) + ln n + 2) / (2n - 1)).

    >>> round(pac_bayes_bound(0.2, kl_total=10.0, n=1000), 4)
    0.3047
    """
    return empirical_error + math.sqrt((kl_total + math.log(1 / delta) + math.log(n) + 2) / (2 * n - 1))


def pairwise_accuracy(chosen_reward: torch.Tensor, rejected_reward: torch.Tensor) -> float:
    """Share of pairs whose chosen response gets the higher reward (ties count half)."""
    return ((chosen_reward > rejected_reward).float() + 0.5 * (chosen_reward == rejected_reward).float()).mean().item()


@torch.no_grad()
def evaluate_pairs(vrm: VRM, features: PreferenceFeatures, chunk_size: int = 1024,
                   num_samples: int = 256) -> dict[str, torch.Tensor]:
    """:func:`pair_posterior` and :func:`kl_per_pair` over a whole table, in chunks; (N,) each."""
    parts = []
    for batch in features.chunks(chunk_size):
        out = pair_posterior(vrm, batch, num_samples)
        out["kl"] = kl_per_pair(vrm, batch)
        out["weight_mean"] = vrm.amortized_guide.weight_posterior(batch.prompt_state).mean
        parts.append(out)
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
