r"""Posterior diagnostics of a fitted VRM with ArviZ: InferenceData, PSIS, a NUTS reference, plots.

Every ArviZ call lives in this module and in :mod:`pyro_vrm.sbc` (its rank ECDF), so a port to
ArviZ 1.x touches two files. Variables carry
the model's site names (``objective_weights`` w, ``chosen_features`` z_c, ``rejected_features``
z_r, ``chosen_reward`` r_c, ``rejected_reward`` r_r, ``preference`` y); dims are ``pair``,
``objective`` and ``feature``. Three checks of the variational posterior q (the amortized guide):

* **PSIS** (Yao et al. 2018): per pair, Pareto k-hat of the importance ratios p(y, w, z_c, z_r) /
  q(w, z_c, z_r) of S draws from q. k-hat < 0.7: importance sampling could correct q; above, q
  misses posterior mass. Equal ratios (q exactly the posterior) leave no tail: ArviZ says inf.
* **NUTS** on a few pairs, every per-pair latent sampled, the global parameters (decoder, alpha0
  under a hyperprior) fixed at their fitted values. The guide is amortized, so q for those pairs
  is the guide given their hidden states.
* **Calibration** on simulated data: every observed y is 1 (the chosen response won), so the
  reliability diagram compares P(chosen wins) with the simulator's *true* sigmoid(r_c - r_r).
  (:func:`pyro_vrm.metrics.calibration` symmetrizes pairs instead, which works on any data but
  calls a constant 1/2 calibrated.)

Simulation-based calibration, which fits on data drawn from the model itself, is
:mod:`pyro_vrm.sbc`.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import arviz as az
import numpy as np
import pyro
import torch
from matplotlib.figure import Figure
from pyro import poutine
from pyro.infer import MCMC, NUTS, Predictive

from .bounds import observed_aspects
from .features import PairBatch, PreferenceFeatures
from .model import SITES
from .posterior import reward_posterior
from .runs import RunDir
from .simulation import SimulationConfig, simulate
from .vrm import VRM, load_vrm


__all__ = ["UnsupportedRun", "to_inference_data", "psis_khat", "run_nuts", "nuts_convergence",
           "nuts_coverage", "posterior_margin", "predictive_prob", "plot_weight_forest",
           "plot_predictive_check", "plot_reliability", "plot_sd_vs_accuracy", "plot_elbo_trace",
           "plot_khat", "plot_nuts_vs_svi", "diagnose"]

LATENTS = (SITES["weights"], SITES["chosen"], SITES["rejected"])
REWARDS = ("chosen_reward", "rejected_reward")
DIMS = {SITES["weights"]: ["pair", "objective"], SITES["chosen"]: ["pair", "feature"],
        SITES["rejected"]: ["pair", "feature"], **{name: ["pair"] for name in REWARDS},
        SITES["preference"]: ["pair"], "log_importance_ratio": ["pair"], "prompt_id": ["pair"]}


class UnsupportedRun(ValueError):
    """The run folder holds a fit that :func:`diagnose` cannot handle yet; the message says why."""


def _batch(features: PreferenceFeatures) -> PairBatch:
    """All pairs of ``features`` as one batch, the plate over exactly these pairs."""
    return features.batch(torch.arange(len(features)))


def _coords(vrm: VRM, num_pairs: int, objective_names: list[str] | None) -> dict:
    names = objective_names or [f"objective_{k}" for k in range(vrm.num_objectives)]
    return {"pair": np.arange(num_pairs), "objective": names, "feature": np.arange(vrm.config.latent_dim)}


def _local_model(vrm: VRM, batch: PairBatch):
    """vrm.model with its global latents, if any, fixed at the guide's medians."""
    if not vrm.has_global_latents:
        return vrm.model
    with torch.no_grad():
        medians = vrm.global_guide.median(batch)
    return poutine.condition(vrm.model, data=medians)


def _numpy(draws: dict, names) -> dict[str, np.ndarray]:
    """(S, B, ...) tensors -> (chain = 1, draw = S, B, ...) arrays."""
    return {name: draws[name].detach()[None].numpy() for name in names}


def _pair_log_probs(fn, draws: dict, batch: PairBatch, **kwargs) -> dict[str, torch.Tensor]:
    """log-densities (S, B) of every site in the pairs plate of ``fn`` at the draws (S, B, ...)."""
    trace = Predictive(fn, posterior_samples=draws).get_vectorized_trace(batch, **kwargs)
    # Predictive masks its trace's log_prob, so each site's distribution is evaluated directly.
    return {name: site["fn"].log_prob(site["value"]) for name, site in trace.nodes.items()
            if site["type"] == "sample" and any(f.name == SITES["plate"] for f in site["cond_indep_stack"])}


@torch.no_grad()
def to_inference_data(vrm: VRM, features: PreferenceFeatures, num_samples: int = 200,
                      objective_names: list[str] | None = None,
                      aspects: tuple[torch.Tensor, torch.Tensor] | None = None) -> az.InferenceData:
    """Draws of the guide's posterior and of the prior for every pair of ``features`` (B pairs).

    Groups: ``posterior`` (w, z_c, z_r, r_c, r_r), ``posterior_predictive`` (y), ``observed_data``
    (y = 1), ``log_likelihood`` (log p(y = 1 | latents)), ``sample_stats``
    (``log_importance_ratio``, log p(y, a, latents) - log q(latents), for PSIS; the aspect term
    with ``aspects``, the (B, K) standardized scores a fit that observes them saw), ``prior`` and
    ``prior_predictive`` (the model run forward), ``constant_data`` (``prompt_id``); each with
    (chain = 1, draw = num_samples) leading axes.

    Examples:
        >>> from pyro_vrm.config import ModelConfig
        >>> vrm = VRM(ModelConfig(latent_dim=2, width=8), hidden_size=5, num_objectives=3)
        >>> f = PreferenceFeatures(torch.randn(4, 5), torch.randn(4, 5), torch.randn(4, 5))
        >>> idata = to_inference_data(vrm, f, num_samples=10)
        >>> dict(idata.posterior["objective_weights"].sizes)
        {'chain': 1, 'draw': 10, 'pair': 4, 'objective': 3}
    """
    batch, ones = _batch(features), torch.ones(len(features))
    model = _local_model(vrm, batch)
    sites = [*LATENTS, *REWARDS, SITES["preference"]]
    guide = partial(vrm.local_guide, preferences=ones, aspects=aspects)  # a conditional prior's guide reads them
    posterior = Predictive(model, guide=guide, num_samples=num_samples, parallel=True, return_sites=sites)(batch)
    prior = Predictive(model, num_samples=num_samples, parallel=True, return_sites=sites)(batch)
    latents = {name: posterior[name] for name in LATENTS}
    log_p = _pair_log_probs(model, latents, batch, preferences=ones, aspects=aspects)
    log_q = _pair_log_probs(guide, latents, batch)
    log_ratio = sum(log_p.values()) - sum(log_q.values())
    return az.from_dict(
        posterior=_numpy(posterior, [*LATENTS, *REWARDS]),
        posterior_predictive=_numpy(posterior, [SITES["preference"]]),
        log_likelihood=_numpy(log_p, [SITES["preference"]]),
        sample_stats=_numpy({"log_importance_ratio": log_ratio}, ["log_importance_ratio"]),
        prior=_numpy(prior, [*LATENTS, *REWARDS]),
        prior_predictive=_numpy(prior, [SITES["preference"]]),
        observed_data={SITES["preference"]: ones.numpy()},
        constant_data={"prompt_id": features.prompt_id.numpy()},
        coords=_coords(vrm, len(features), objective_names),
        dims=DIMS,
    )


def psis_khat(idata: az.InferenceData) -> np.ndarray:
    """Pareto k-hat (B,) of each pair's importance ratios p(y, latents) / q(latents) (the
    ``log_importance_ratio`` of ``sample_stats``), q's draws being independent (relative efficiency 1).

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> bounded = np.log(rng.uniform(size=(1, 1000, 1)))      # ratios in (0, 1): no tail
        >>> heavy = np.log1p(rng.pareto(1.0, size=(1, 1000, 1)))  # Pareto tail, index k = 1
        >>> idata = az.from_dict(sample_stats={"log_importance_ratio": np.concatenate([bounded, heavy], -1)})
        >>> (psis_khat(idata) > 0.7).tolist()
        [False, True]
    """
    log_ratio = idata.sample_stats["log_importance_ratio"].stack(__sample__=("chain", "draw"))
    _, khat = az.psislw(log_ratio, reff=1.0)
    return np.asarray(khat)


def run_nuts(vrm: VRM, features: PreferenceFeatures, num_warmup: int = 300, num_samples: int = 300,
             num_chains: int = 2, seed: int = 0, objective_names: list[str] | None = None,
             aspects: tuple[torch.Tensor, torch.Tensor] | None = None) -> az.InferenceData:
    """NUTS on every per-pair latent of ``features`` (B pairs, all y = 1, and their ``aspects``
    observed where the fit observes them), globals fixed.

    Chains run one after another in this process (seed, seed + 1, ...; the global RNG is
    reseeded), so that no worker processes are forked from a notebook or a test.
    """
    batch = _batch(features)
    # Rewards are deterministic sites, which ArviZ would read as observed data: hidden.
    model = poutine.block(partial(_local_model(vrm, batch), preferences=torch.ones(len(features)), aspects=aspects),
                          hide=list(REWARDS))
    coords, chains = _coords(vrm, len(features), objective_names), []
    for chain in range(num_chains):
        pyro.set_rng_seed(seed + chain)
        mcmc = MCMC(NUTS(model), num_samples=num_samples, warmup_steps=num_warmup, disable_progbar=True)
        mcmc.run(batch)
        chains.append(az.from_pyro(mcmc, coords=coords, dims=DIMS))
    return az.concat(*chains, dim="chain") if num_chains > 1 else chains[0]


def nuts_convergence(idata: az.InferenceData) -> dict[str, float]:
    """Largest rank-normalized split R-hat and smallest bulk ESS over every per-pair latent."""
    rhat = az.rhat(idata, var_names=list(LATENTS))
    ess = az.ess(idata, var_names=list(LATENTS))
    return {"nuts_max_rhat": max(float(rhat[name].max()) for name in LATENTS),
            "nuts_min_ess": min(float(ess[name].min()) for name in LATENTS)}


def nuts_coverage(idata: az.InferenceData, weight_mean: np.ndarray, prob: float = 0.9) -> float:
    """Share of the components of ``weight_mean`` (B, K), the SVI posterior means of w, inside
    the central ``prob`` intervals of the NUTS draws of w in ``idata``.

    Examples:
        >>> draws = np.random.default_rng(0).dirichlet(np.ones(3), size=(1, 500, 2))  # (chain, draw, B, K)
        >>> nuts = az.from_dict(posterior={"objective_weights": draws})
        >>> nuts_coverage(nuts, np.full((2, 3), 1 / 3)), nuts_coverage(nuts, np.array([[0.98, 0.01, 0.01]] * 2))
        (1.0, 0.0)
    """
    w = idata.posterior[SITES["weights"]]
    low, high = (w.quantile(q, dim=("chain", "draw")).values for q in ((1 - prob) / 2, (1 + prob) / 2))
    return float(((weight_mean >= low) & (weight_mean <= high)).mean())


def posterior_margin(vrm: VRM, features: PreferenceFeatures) -> np.ndarray:
    """E_q[r_c] - E_q[r_r] (B,): exact for the linear decoder (:mod:`pyro_vrm.posterior`)."""
    chosen, _ = reward_posterior(vrm, features.prompt_state, features.chosen_state)
    rejected, _ = reward_posterior(vrm, features.prompt_state, features.rejected_state)
    return (chosen - rejected).numpy()


def predictive_prob(idata: az.InferenceData) -> np.ndarray:
    """Posterior predictive P(chosen wins) (B,) = E_q[sigmoid(r_c - r_r)] = E_q[p(y = 1 | latents)]."""
    return np.exp(idata.log_likelihood[SITES["preference"]]).mean(("chain", "draw")).values


# ---------------------------------------------------------------------------------------------
# Plots: each returns its Figure (made without pyplot, so no global backend is touched).
# ---------------------------------------------------------------------------------------------
def _binned(key: np.ndarray, *values: np.ndarray, bins: int) -> list[np.ndarray]:
    """Means of each of ``values`` (B,) in ``bins`` equal-count bins of ``key`` (B,)."""
    groups = np.array_split(np.argsort(key), min(bins, len(key)))
    return [np.array([np.mean(v[g]) for g in groups]) for v in values]


def plot_weight_forest(idata: az.InferenceData, num_prompts: int = 8) -> Figure:
    """q(w | x) by objective (median, quartiles, 90% HDI) for the first pair of each of the
    first ``num_prompts`` prompts."""
    _, first = np.unique(idata.constant_data["prompt_id"].values, return_index=True)
    pairs = np.sort(first)[:num_prompts]
    fig = Figure(figsize=(6, 1 + 0.25 * len(pairs) * idata.posterior.sizes["objective"]))
    ax = fig.subplots()
    az.plot_forest(idata, var_names=[SITES["weights"]], coords={"pair": pairs}, combined=True,
                   hdi_prob=0.9, ax=ax)
    ax.set_title("q(w | x): median, quartiles and 90% HDI, one pair per prompt")
    return fig


def plot_predictive_check(idata: az.InferenceData) -> Figure:
    """Histogram of the per-pair posterior predictive P(chosen wins), against the observed share
    of chosen wins (1 by construction). A histogram, not ``az.plot_ppc``: y is one Bernoulli
    draw per pair, and plot_ppc's densities of binary y show only two spikes."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.hist(predictive_prob(idata), bins=30, color="C0")
    ax.axvline(float(idata.observed_data[SITES["preference"]].mean()), color="k", ls="--",
               label="observed share of chosen wins")
    ax.axvline(float(idata.posterior_predictive[SITES["preference"]].mean()), color="C1",
               label="posterior predictive share")
    ax.set(xlabel="P(chosen wins | x, y_c, y_r)", ylabel="pairs", title="posterior predictive check")
    ax.legend()
    return fig


def plot_reliability(idata: az.InferenceData, true_prob: np.ndarray, margin_mean: np.ndarray,
                     bins: int = 10) -> Figure:
    """Predicted P(chosen wins) against the mean *true* win probability ``true_prob`` (B,) =
    sigmoid(true r_c - true r_r) of the simulator, in equal-count bins of the pairs' exact
    posterior-mean margin ``margin_mean`` (B,) = E_q[r_c] - E_q[r_r].

    Every observed y is 1, so observed frequencies cannot calibrate anything. Pairs are binned
    by the exact margin rather than by the Monte Carlo P(chosen wins): for a posterior near the
    prior, the Monte Carlo noise exceeds the spread of P and would shuffle the bins.
    """
    predicted, true = _binned(np.asarray(margin_mean), predictive_prob(idata), np.asarray(true_prob), bins=bins)
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="0.7", ls="--", label="calibrated")
    ax.plot(predicted, true, "o-", label="VRM")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted P(chosen wins)",
           ylabel="true P(chosen wins) (simulator)", title="reliability")
    ax.legend()
    return fig


def plot_sd_vs_accuracy(idata: az.InferenceData, margin_mean: np.ndarray, bins: int = 5) -> Figure:
    """Accuracy (``margin_mean`` (B,) = E_q[r_c] - E_q[r_r] > 0, exact: a Monte Carlo mean can be
    noisier than the margin) in equal-count bins of the posterior sd of r_c - r_r (from the draws)."""
    post = idata.posterior
    sd = (post["chosen_reward"] - post["rejected_reward"]).std(("chain", "draw")).values
    sd, correct = _binned(sd, sd, (np.asarray(margin_mean) > 0).astype(float), bins=bins)
    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    ax.plot(sd, correct, "o-")
    ax.set(xlabel="posterior sd of r_c - r_r", ylabel="accuracy", title="uncertainty against accuracy")
    return fig


def plot_elbo_trace(metrics: list[dict], observes_aspects: bool = False) -> Figure:
    """ELBO per pair over training steps (metrics.jsonl records). Without observed aspects, with
    its ceiling log p(y) = log 1/2: under the model, z_c and z_r are exchangeable a priori, so
    P(y = 1) = 1/2 (with aspects observed the ELBO bounds log p(y, a), which has no such value)."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot([m["step"] for m in metrics], [m["elbo"] for m in metrics], label="ELBO per pair (minibatch)")
    if not observes_aspects:
        ax.axhline(math.log(0.5), color="k", ls="--", label="log p(y) = log 1/2")
    ax.set(xlabel="step", ylabel="ELBO per pair", title="training")
    ax.legend()
    return fig


def plot_khat(khat: np.ndarray) -> Figure:
    """Histogram of PSIS k-hat per pair, with the 0.5 and 0.7 thresholds."""
    finite = khat[np.isfinite(khat)]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.hist(finite, bins=30, color="C0")
    ax.axvline(0.5, color="0.5", ls="--", label="0.5")
    ax.axvline(0.7, color="k", ls="--", label="0.7: importance sampling unreliable above")
    ax.legend()
    ax.set(xlabel="k-hat", ylabel="pairs",
           title=f"PSIS k-hat of q ({len(khat) - len(finite)} pairs with k-hat = inf)")
    return fig


def plot_nuts_vs_svi(nuts: az.InferenceData, svi: az.InferenceData, num_pairs: int = 6) -> Figure:
    """w of the first ``num_pairs`` pairs, NUTS against the guide's q (median, quartiles, 90% HDI)."""
    pairs = np.arange(min(num_pairs, nuts.posterior.sizes["pair"]))
    fig = Figure(figsize=(6, 1 + 0.5 * len(pairs) * nuts.posterior.sizes["objective"]))
    ax = fig.subplots()
    az.plot_forest([nuts, svi], model_names=["NUTS", "SVI (guide)"], var_names=[SITES["weights"]],
                   coords={"pair": pairs}, combined=True, hdi_prob=0.9, ax=ax)
    ax.get_legend().set_loc("upper left")
    ax.get_legend().set_bbox_to_anchor((1.0, 1.0))
    ax.set_title("w: NUTS against the guide")
    return fig


# ---------------------------------------------------------------------------------------------
# A run folder.
# ---------------------------------------------------------------------------------------------
def diagnose(run_dir: str | Path, num_samples: int = 200, nuts_pairs: int = 40, max_pairs: int = 200,
             nuts_warmup: int = 300, nuts_draws: int = 300, nuts_chains: int = 2, seed: int = 0) -> dict:
    """Diagnose the VRM fitted in ``run_dir`` (made by ``pyro-vrm train --data simulated``).

    On the first ``max_pairs`` test pairs: ``diagnostics.nc`` (:func:`to_inference_data`), PSIS
    k-hat and the plots; on the first ``nuts_pairs``, NUTS (``diagnostics_nuts.nc``) against the
    guide. Writes these, ``diagnostics_*.png`` and ``diagnostics.json`` into ``run_dir`` and
    returns the JSON's dict. A fit that observes aspect scores is checked against the posterior
    given them too. Runs on other data (text, files) or of another model raise
    :class:`UnsupportedRun` for now: the truth that the reliability diagram needs is rebuilt from
    the simulation's config only.
    """
    run = RunDir(run_dir)
    config = run.read_json("config.json")
    if config.get("data") != "simulated" or config.get("model") != "vrm":
        raise UnsupportedRun(f"diagnose supports VRM runs on --data simulated only; {run.path} has "
                             f"model {config.get('model')!r} on data {config.get('data')!r}")
    pyro.set_rng_seed(seed)
    data = simulate(SimulationConfig(**config["simulation"]))
    vrm, standardizer = load_vrm(run)
    pairs = torch.arange(min(max_pairs, len(data.test)))
    test, truth = data.test.select(pairs), data.truth["test"]
    true_prob = torch.sigmoid(truth["chosen_reward"] - truth["rejected_reward"])[pairs].numpy()

    idata = to_inference_data(vrm, test, num_samples, aspects=observed_aspects(vrm, test, standardizer))
    idata.to_netcdf(run.path / "diagnostics.nc")
    khat, margin_mean = psis_khat(idata), posterior_margin(vrm, test)
    nuts_features = data.test.select(torch.arange(min(nuts_pairs, len(data.test))))
    nuts_aspects = observed_aspects(vrm, nuts_features, standardizer)
    nuts = run_nuts(vrm, nuts_features, nuts_warmup, nuts_draws, nuts_chains, seed, aspects=nuts_aspects)
    nuts.to_netcdf(run.path / "diagnostics_nuts.nc")
    with torch.no_grad():
        q = poutine.trace(vrm.local_guide).get_trace(_batch(nuts_features), preferences=torch.ones(len(nuts_features)),
                                                     aspects=nuts_aspects)
        weight_mean = q.nodes[SITES["weights"]]["fn"].mean.numpy()

    figures = {
        "weight_forest": plot_weight_forest(idata),
        "predictive_check": plot_predictive_check(idata),
        "reliability": plot_reliability(idata, true_prob, margin_mean),
        "sd_vs_accuracy": plot_sd_vs_accuracy(idata, margin_mean),
        "elbo_trace": plot_elbo_trace(run.read_metrics(), bool(vrm.config.observe_aspects)),
        "psis_khat": plot_khat(khat),
        "nuts_vs_svi": plot_nuts_vs_svi(nuts, to_inference_data(vrm, nuts_features, num_samples, aspects=nuts_aspects)),
    }
    for name, fig in figures.items():
        fig.savefig(run.path / f"diagnostics_{name}.png", dpi=100, bbox_inches="tight")
    # Vehtari et al. (2024): with S draws, k-hat above min(1 - 1 / log10 S, 0.7) is unreliable.
    threshold = min(1 - 1 / math.log10(num_samples), 0.7)
    results = {
        "pairs": len(pairs), "num_samples": num_samples,
        "psis_khat_share_above_0_7": float((khat > 0.7).mean()),
        "psis_khat_threshold_for_num_samples": threshold,
        "psis_khat_share_above_threshold": float((khat > threshold).mean()),
        "psis_khat_median": float(np.median(khat)), "psis_khat_max": float(khat.max()),
        "nuts_pairs": len(nuts_features), "nuts_chains": nuts_chains, "nuts_draws": nuts_draws,
        "nuts_divergences": int(nuts.sample_stats["diverging"].sum()),
        **nuts_convergence(nuts),
        "nuts_coverage_w": nuts_coverage(nuts, weight_mean),
        "accuracy": float((margin_mean > 0).mean()),
        "predictive_prob_mean": float(predictive_prob(idata).mean()),
        "files": ["diagnostics.nc", "diagnostics_nuts.nc", *(f"diagnostics_{name}.png" for name in figures)],
    }
    run.write_json("diagnostics.json", results)
    return results
