r"""What a VRM fit says about its own training data: the full-data ELBO, the KL per pair and the
PAC-Bayes bound of paper Thm 5.1 (DESIGN.md section 4).

Every KL here is :func:`pyro_vrm.posterior.kl_terms`': the local terms of every pair, plus the
global latents' once. The ELBO is the true one (KL weight 1) whatever beta trained the fit, and
holds every likelihood term that was trained, the aspect likelihood included.
"""

from __future__ import annotations

import math

import torch

from .features import PreferenceFeatures
from .posterior import expected_log_likelihood, kl_terms
from .supervision import Standardizer
from .vrm import VRM

__all__ = ["BoundNotCovered", "observed_aspects", "data_kl", "full_data_elbo", "pac_bayes_bound", "pac_bayes"]


class BoundNotCovered(ValueError):
    """The PAC-Bayes bound cannot be computed for this fit; the message says why."""


def observed_aspects(vrm: VRM, features: PreferenceFeatures,
                     standardizer: Standardizer | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The standardized aspect scores (N, K) each that ``vrm`` observes on ``features``, or None
    when it observes none."""
    if not vrm.config.observe_aspects:
        return None
    if standardizer is None or features.chosen_scores is None:
        raise ValueError("this VRM observes aspect scores: pass data with scores and its standardizer")
    return standardizer(features.chosen_scores), standardizer(features.rejected_scores)


@torch.no_grad()
def data_kl(vrm: VRM, features: PreferenceFeatures, aspects: tuple[torch.Tensor, torch.Tensor] | None = None,
            chunk_size: int = 1024) -> tuple[float, bool]:
    """(KL of q from p over a whole data set, whether every term is in closed form): the local
    terms summed over the pairs, the global latents' counted once. ``aspects`` ((N, K) each) are
    the observed scores a conditional prior's guide reads."""
    local, exact, global_kl = 0.0, True, 0.0
    for start, batch in zip(range(0, len(features), chunk_size), features.chunks(chunk_size)):
        chunk = None if aspects is None else tuple(a[start:start + len(batch.index)] for a in aspects)
        kl = kl_terms(vrm, batch, aspects=chunk)
        local += float(kl.local.sum())
        exact, global_kl = exact and kl.exact, float(kl.global_kl)
    return local + global_kl, exact


@torch.no_grad()
def full_data_elbo(vrm: VRM, features: PreferenceFeatures, standardizer: Standardizer | None = None,
                   num_particles: int = 16, chunk_size: int = 1024) -> float:
    """The ELBO per pair of ``features`` at KL weight 1: the expected log-likelihood of the
    preferences and observed aspects (Monte Carlo, ``num_particles`` draws) less the KL of
    :func:`data_kl`, divided by the number of pairs."""
    aspects = observed_aspects(vrm, features, standardizer)
    log_lik = 0.0
    for start, batch in zip(range(0, len(features), chunk_size), features.chunks(chunk_size)):
        chunk = None if aspects is None else tuple(a[start:start + len(batch.index)] for a in aspects)
        log_lik += float(expected_log_likelihood(vrm, batch, chunk, num_particles).sum())
    return (log_lik - data_kl(vrm, features, aspects, chunk_size)[0]) / len(features)


def pac_bayes_bound(empirical_error: float, kl_total: float, n: int, delta: float = 0.05) -> float:
    """McAllester's bound (paper Thm 5.1): L(Q) <= Lhat + sqrt((KL + ln(1/delta) + ln n + 2) / (2n - 1)).

    Examples:
        >>> round(pac_bayes_bound(0.2, kl_total=10.0, n=1000), 4)
        0.3047
    """
    return empirical_error + math.sqrt((kl_total + math.log(1 / delta) + math.log(n) + 2) / (2 * n - 1))


def pac_bayes(vrm: VRM, train: PreferenceFeatures, gibbs_error: float, delta: float = 0.05) -> dict:
    """The bound on the Gibbs classifier's preference error for ``vrm``'s posterior, with the KL
    summed over the ``train`` pairs (paper Eq. 20) and the global latents' KL once.

    As in the paper, the decoder's and the guide networks' point estimates count as fixed; the
    bound covers the latents q puts a distribution on. A fit whose KL has no closed form
    (a Student-t feature prior, a hyperprior on alpha0) would give a Monte Carlo estimate, not a
    bound, and raises :class:`BoundNotCovered`.
    """
    if vrm.conditional_prior is not None:
        raise BoundNotCovered("its prior is conditional and fitted to the same training pairs, and a PAC-Bayes "
                              "prior must not depend on them")
    kl_total, exact = data_kl(vrm, train)
    if not exact:
        raise BoundNotCovered("its KL has no closed form under these priors (a Student-t feature prior or a "
                              "hyperprior on alpha0), so the bound would rest on a Monte Carlo estimate")
    return {"pac_bayes_bound": pac_bayes_bound(gibbs_error, kl_total, len(train), delta),
            "pac_bayes_kl": "sum over training pairs, global latents once", "pac_bayes_delta": delta}
