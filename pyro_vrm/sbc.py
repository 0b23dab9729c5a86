"""Simulation-based calibration of VRM's amortized posterior (Talts et al. 2018; Modrák et al.
2023): on data drawn from the model's own prior (:func:`pyro_vrm.simulation.simulate_from_prior`),
the rank of each true quantity among draws of q is uniform when q is the posterior.
:func:`simulation_based_calibration` ranks w, the reward margin and the log-likelihood of each
held-out pair, with the contraction and z-scores that tell a calibrated q from the prior;
:func:`plot_sbc_ecdf` draws the ranks' ECDF with ArviZ's simultaneous bands.
"""

from __future__ import annotations

from functools import partial

import arviz as az
import numpy as np
import pyro.distributions as dist
import scipy.stats
import torch
from matplotlib.figure import Figure
from pyro import poutine
from pyro.infer import Predictive

from .bounds import observed_aspects
from .diagnostics import LATENTS, REWARDS, _batch, _local_model, _pair_log_probs
from .features import PairBatch, PreferenceFeatures
from .model import SITES, aspect_noise
from .simulation import SimulatedData
from .supervision import Standardizer
from .vrm import VRM

__all__ = ["rank_uniformity", "simulate_from_fit", "simulation_based_calibration", "plot_sbc_ecdf"]


def _observed_log_likelihood(fn, draws: dict, batch: PairBatch, **kwargs) -> torch.Tensor:
    """log p(y, a | latents) (S, B): the sites of the pairs plate of ``fn`` other than the latents,
    at the draws (deterministic sites add log 1)."""
    return sum(log_prob for name, log_prob in _pair_log_probs(fn, draws, batch, **kwargs).items()
               if name not in LATENTS)


def _true_log_likelihood(data: SimulatedData, standardizer: Standardizer | None, observes_aspects: bool) -> torch.Tensor:
    """log p(y = 1, a | true latents) (B,) of the held-out pairs under the simulator's decoder and
    sigma_a, on the scale the fit sees: standardized aspect scores, when it observes them."""
    truth, test = data.truth["test"], data.test
    log_lik = torch.nn.functional.logsigmoid(truth["chosen_reward"] - truth["rejected_reward"])
    if observes_aspects:
        _, scores = data.decoder(truth[SITES["weights"]], torch.stack([truth[SITES["chosen"]], truth[SITES["rejected"]]]))
        observed = torch.stack([standardizer(test.chosen_scores), standardizer(test.rejected_scores)])
        noise = data.config.aspect_noise / standardizer.sd
        log_lik = log_lik + dist.Normal(standardizer(scores), noise).log_prob(observed).sum((0, -1))
    return log_lik


@torch.no_grad()
def simulate_from_fit(vrm: VRM, features: PreferenceFeatures, standardizer: Standardizer | None = None,
                      seed: int = 0) -> SimulatedData:
    """Pairs drawn from a fitted VRM's own model at the hidden states of ``features``: w, z_c and
    z_r from its prior (a conditional prior's, given the states), y from its decoder and, when it
    observes aspects, a ~ N(s(z), sigma_a) with its sigma_a, on the standardized scale, returned on
    the raw scale of ``standardizer``; global latents at their guide's medians. Pairs where y = 0
    are swapped, states and all, so that the chosen response won.

    Under empirical Bayes the prior's networks are fitted, not given, so SBC of a conditional
    prior's guide is SBC of the local posterior under the fitted model: it checks the inference,
    not the fit of the prior, which held-out real pairs check. The returned data's ``test`` holds
    the pairs, its ``truth["test"]`` their latents, rewards and ``log_likelihood``, log p(y = 1, a |
    latents) under the fit.
    """
    batch = _batch(features)
    model = _local_model(vrm, batch)
    with poutine.seed(rng_seed=seed):
        trace = poutine.trace(model).get_trace(batch)
        values = {name: trace.nodes[name]["value"] for name in (*LATENTS, *REWARDS, SITES["preference"])}
        lost = values.pop(SITES["preference"]) == 0
        states = [features.chosen_state.clone(), features.rejected_state.clone()]
        for first, second in ((values[SITES["chosen"]], values[SITES["rejected"]]),
                              (values["chosen_reward"], values["rejected_reward"]), states):
            first[lost], second[lost] = second[lost].clone(), first[lost].clone()
        aspects = None
        if vrm.config.observe_aspects:
            _, scores = vrm.decoder(values[SITES["weights"]], torch.stack([values[SITES["chosen"]],
                                                                            values[SITES["rejected"]]]))
            aspects = tuple(scores + aspect_noise(vrm.decoder, vrm.priors) * torch.randn_like(scores))
    raw = (None, None) if aspects is None else tuple(standardizer.mean + standardizer.sd * a for a in aspects)
    pairs = PreferenceFeatures(features.prompt_state, *states, features.prompt_id, *raw)
    log_lik = _observed_log_likelihood(model, {name: values[name][None] for name in LATENTS}, batch._replace(
        chosen_state=states[0], rejected_state=states[1]), preferences=torch.ones(len(features)), aspects=aspects)[0]
    return SimulatedData(config=None, train=pairs.select(torch.arange(0)), test=pairs, decoder=vrm.decoder,
                         truth={"test": {**values, "log_likelihood": log_lik}})


def rank_uniformity(ranks: np.ndarray, num_draws: int, bins: int = 20) -> float:
    """p-value of the chi-square test that ``ranks`` (integers in 0 .. num_draws) are uniform,
    on ``bins`` bins of equal width; ``num_draws + 1`` must be a multiple of ``bins``.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> uniform, piled = rng.integers(0, 100, 1000), rng.binomial(99, 0.5, 1000)
        >>> rank_uniformity(uniform, 99) > 0.01, rank_uniformity(piled, 99) < 1e-6
        (True, True)
    """
    if (num_draws + 1) % bins:
        raise ValueError(f"num_draws + 1 = {num_draws + 1} ranks do not fall into {bins} bins of equal width")
    counts = np.bincount(np.asarray(ranks).ravel() * bins // (num_draws + 1), minlength=bins)
    return float(scipy.stats.chisquare(counts).pvalue)


@torch.no_grad()
def simulation_based_calibration(vrm: VRM, data: SimulatedData, standardizer: Standardizer | None = None,
                                 num_draws: int = 99, bins: int = 20) -> dict:
    """Simulation-based calibration of ``vrm``'s amortized posterior q on the held-out pairs of
    ``data``, drawn from the model's own prior (:func:`pyro_vrm.simulation.simulate_from_prior`)
    and unseen in the fit: each pair is one replicate (Talts et al. 2018).

    For each pair, the rank (0 .. ``num_draws``) of each true quantity among ``num_draws`` draws of
    q: w_k, the margin r_c - r_r, and log p(y, a | w, z_c, z_r), the log-likelihood of the pair's
    observed data (Modrák et al. 2023; without observed aspects a function of the margin alone).
    The truth is evaluated with the simulator's decoder and sigma_a, q's draws with the fit's,
    global latents (if any) at their guide's medians. Under the exact posterior every rank is
    uniform; the chi-square p-values say how far they are. A q equal to the prior is calibrated
    too, so the contraction 1 - E[Var_q] / Var_prior (Schad et al. 2021) says how much q learned,
    and the z-scores (E_q - truth) / sd_q should have mean 0 and sd 1.

    Returns a dict: ``w_rank_pvalue`` (Bonferroni over the K objectives, whose p-values are in
    ``w_rank_pvalues``), ``margin_rank_pvalue``, ``loglik_rank_pvalue``, ``w_contraction`` (mean
    over objectives), ``margin_contraction``, ``w_zscore_mean``/``_sd``,
    ``margin_zscore_mean``/``_sd``, ``pairs``, ``num_draws``, ``bins``, and ``ranks``: numpy
    arrays ``objective_weights`` (B, K), ``margin`` (B,) and ``log_likelihood`` (B,) for
    :func:`plot_sbc_ecdf`.
    """
    test, truth = data.test, data.truth["test"]
    batch = _batch(test)
    model = _local_model(vrm, batch)
    sites = [*LATENTS, *REWARDS]
    aspects = observed_aspects(vrm, test, standardizer)
    guide = partial(vrm.local_guide, preferences=torch.ones(len(test)), aspects=aspects)
    q = Predictive(model, guide=guide, num_samples=num_draws, parallel=True, return_sites=sites)(batch)
    prior = Predictive(model, num_samples=num_draws, parallel=True, return_sites=sites)(batch)
    q_log_lik = _observed_log_likelihood(model, {name: q[name] for name in LATENTS}, batch,
                                         preferences=torch.ones(len(test)), aspects=aspects)

    def margin(draws):
        return draws["chosen_reward"] - draws["rejected_reward"]

    quantities = {  # name: (q's draws (S, B, ...), the truth (B, ...))
        "objective_weights": (q[SITES["weights"]], truth[SITES["weights"]]),
        "margin": (margin(q), truth["chosen_reward"] - truth["rejected_reward"]),
        "log_likelihood": (q_log_lik, truth["log_likelihood"] if "log_likelihood" in truth
                           else _true_log_likelihood(data, standardizer, aspects is not None)),
    }
    ranks = {name: (draws < true).sum(0).numpy() for name, (draws, true) in quantities.items()}
    w_pvalues = [rank_uniformity(ranks["objective_weights"][:, k], num_draws, bins) for k in range(vrm.num_objectives)]

    def contraction(draws, prior_draws):  # per component, the prior's variance pooled over pairs
        return 1 - draws.var(0).mean(0) / prior_draws.flatten(0, 1).var(0)

    def zscores(draws, true):
        return ((draws.mean(0) - true) / draws.std(0)).flatten()

    w_z, margin_z = (zscores(*quantities[name]) for name in ("objective_weights", "margin"))
    return {
        "pairs": len(test), "num_draws": num_draws, "bins": bins,
        "w_rank_pvalue": min(1.0, len(w_pvalues) * min(w_pvalues)), "w_rank_pvalues": w_pvalues,
        "margin_rank_pvalue": rank_uniformity(ranks["margin"], num_draws, bins),
        "loglik_rank_pvalue": rank_uniformity(ranks["log_likelihood"], num_draws, bins),
        "w_contraction": float(contraction(q[SITES["weights"]], prior[SITES["weights"]]).mean()),
        "margin_contraction": float(contraction(margin(q), margin(prior))),
        "w_zscore_mean": float(w_z.mean()), "w_zscore_sd": float(w_z.std()),
        "margin_zscore_mean": float(margin_z.mean()), "margin_zscore_sd": float(margin_z.std()),
        "ranks": ranks,
    }


def plot_sbc_ecdf(ranks: dict[str, np.ndarray], num_draws: int, objective_names: list[str] | None = None,
                  ci_prob: float = 0.95, seed: int = 0) -> Figure:
    """ECDF of each quantity's SBC ranks minus the uniform CDF, with ArviZ's simultaneous
    ``ci_prob`` band for ranks of ``num_draws`` draws (Säilynoja et al. 2022): a curve leaving the
    band is evidence against calibration. An arc below 0 means truths above q's draws (q biased
    low), a U (down then up) means too many extreme ranks (q too narrow), an inverted U too few (q
    too wide). ``ranks`` as :func:`simulation_based_calibration` returns them."""
    weights = np.asarray(ranks["objective_weights"])
    names = objective_names or [f"objective_{k}" for k in range(weights.shape[1])]
    panels = {**{f"w: {name}": weights[:, k] for k, name in enumerate(names)},
              "margin r_c - r_r": ranks["margin"], "log p(y, a | latents)": ranks["log_likelihood"]}
    uniform = scipy.stats.randint(0, num_draws + 1)
    fig = Figure(figsize=(3.2 * len(panels), 3.2))
    for ax, (title, values) in zip(fig.subplots(1, len(panels), sharey=True), panels.items()):
        az.plot_ecdf(np.asarray(values), eval_points=np.arange(num_draws + 1), cdf=uniform.cdf, rvs=uniform.rvs,
                     difference=True, confidence_bands="simulated", ci_prob=ci_prob, random_state=seed, ax=ax)
        ax.set(title=title, xlabel=f"rank among {num_draws} draws of q")
    fig.axes[0].set_ylabel("ECDF - uniform CDF")
    return fig
