"""Evaluation of a fit, for VRM and its controls side by side: summaries after training, and the
fuller evaluation of ``pyro-vrm evaluate`` (accuracy with a bootstrap interval, calibration, how
well confidence tells right from wrong, per-subset accuracy, RewardBench sections, the
reward-hacking rate).

A VRM is read through its posterior (posterior-mean rewards, the posterior predictive
P(chosen wins)); the RM and the twin, point estimates, through their rewards and
sigmoid(r_c - r_r).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .bounds import BoundNotCovered, data_kl, full_data_elbo, observed_aspects, pac_bayes
from .features import PreferenceFeatures
from .metrics import (REWARDBENCH_SECTIONS, accuracy_by_subset, bootstrap_accuracy, calibration, error_auroc,
                      oracle_accuracy, pairwise_correct, rewardbench_scores, selective_accuracy)
from .posterior import kl_terms, pair_posterior
from .supervision import Standardizer, supervision_target
from .twin import DeterministicTwin
from .vrm import VRM

__all__ = ["pearson", "evaluate_pairs", "Predictions", "predict", "weight_means", "summarize", "evaluate_predictions",
           "hack_rate"]


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of all entries of ``a`` and ``b``."""
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]).double())[0, 1])


@torch.no_grad()
def evaluate_pairs(vrm: VRM, features: PreferenceFeatures, chunk_size: int = 1024,
                   num_samples: int = 256) -> dict[str, torch.Tensor]:
    """:func:`pyro_vrm.posterior.pair_posterior` over a whole table, in chunks, with each pair's
    local KL (``kl``; not under a conditional prior whose guide reads aspect scores) and E[w]
    (``weight_mean``); (N,) or (N, K) each."""
    parts = []
    for batch in features.chunks(chunk_size):
        out = pair_posterior(vrm, batch, num_samples)
        if vrm.conditional_prior is None or not vrm.config.observe_aspects:
            out["kl"] = kl_terms(vrm, batch).local
        out["weight_mean"] = vrm.latent_predictive(batch.prompt_state, batch.chosen_state)[0].mean
        parts.append(out)
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


@dataclass
class Predictions:
    """Per pair (N,): the (posterior-mean) rewards of both responses, P(chosen wins), and the
    model's confidence in its pick (VRM: |E[r_c - r_r]| / sd(r_c - r_r); a point estimate:
    |r_c - r_r|)."""

    mean_chosen: torch.Tensor
    mean_rejected: torch.Tensor
    prob_chosen: torch.Tensor
    confidence: torch.Tensor

    @property
    def correct(self) -> torch.Tensor:
        """1 where the chosen response gets the higher reward, 1/2 on ties."""
        return pairwise_correct(self.mean_chosen, self.mean_rejected)


@torch.no_grad()
def predict(model: nn.Module, features: PreferenceFeatures) -> Predictions:
    """VRM: posterior-mean rewards and the posterior predictive; a point-estimate head (the RM,
    the twin): rewards and sigmoid(r_c - r_r)."""
    if isinstance(model, VRM):
        ev = evaluate_pairs(model, features)
        margin = ev["mean_chosen"] - ev["mean_rejected"]
        return Predictions(ev["mean_chosen"], ev["mean_rejected"], ev["prob_chosen"],
                           margin.abs() / ev["margin_sd"].clamp_min(1e-12))
    r_c, r_r = model(features.prompt_state, features.chosen_state), model(features.prompt_state, features.rejected_state)
    return Predictions(r_c, r_r, torch.sigmoid(r_c - r_r), (r_c - r_r).abs())


def _log_loss(prob_chosen: torch.Tensor) -> float:
    return float(-prob_chosen.clamp_min(1e-12).log().mean())


@torch.no_grad()
def summarize(model: nn.Module, train: PreferenceFeatures, test: PreferenceFeatures,
              standardizer: Standardizer | None = None, truth: dict | None = None,
              extra: dict[str, PreferenceFeatures] | None = None, sup_temperature: float = 1.0,
              delta: float = 0.05) -> dict:
    """What ``pyro-vrm train`` prints for a fit of any kind: train and test accuracy, the test
    log loss of P(chosen wins), ``{name}_accuracy`` for each table of ``extra`` and, with the
    simulator's ``truth``, the oracle's accuracy, the gap to it and the recovery of w (Pearson
    correlation of E[w] with the true w on test prompts). For VRM also the ELBO, the KL per pair
    (every term, at KL weight 1), its KL weight and the PAC-Bayes bound."""
    predictions = {"train": predict(model, train), "test": predict(model, test)}
    summary = {
        "model": "vrm" if isinstance(model, VRM) else "twin" if isinstance(model, DeterministicTwin) else "rm",
        "test_accuracy": predictions["test"].correct.mean().item(),
        "train_accuracy": predictions["train"].correct.mean().item(),
        "test_log_loss": _log_loss(predictions["test"].prob_chosen),
    }
    for name, features in (extra or {}).items():
        summary[f"{name}_accuracy"] = predict(model, features).correct.mean().item()
    if isinstance(model, VRM):
        summary.update(_posterior_summary(model, train, standardizer, delta))
    if truth is not None:
        oracle = oracle_accuracy(truth["test"])
        summary.update({"oracle_accuracy": oracle, "gap_to_oracle": oracle - summary["test_accuracy"]})
        weights = weight_means(model, test)
        if weights is not None:
            w_true = truth["test"]["objective_weights"]
            summary["w_recovery"] = pearson(weights, w_true)
            if standardizer is not None:
                target = supervision_target(standardizer(test.chosen_scores), sup_temperature)
                summary["target_w_corr"] = pearson(target, w_true)
    return summary


def _posterior_summary(vrm: VRM, train: PreferenceFeatures, standardizer: Standardizer | None, delta: float) -> dict:
    ev = evaluate_pairs(vrm, train)
    gibbs_error = float(ev["gibbs_error"].mean())
    out = {"elbo": full_data_elbo(vrm, train, standardizer), "kl_per_pair": data_kl(vrm, train, observed_aspects(vrm, train, standardizer))[0] / len(train),
           "train_gibbs_error": gibbs_error}
    if hasattr(vrm.decoder, "log_preference_scale"):
        out["preference_scale"] = vrm.decoder.preference_scale.item()
    try:
        out.update(pac_bayes(vrm, train, gibbs_error, delta))
    except BoundNotCovered as why:
        out.update({"pac_bayes_bound": None, "pac_bayes_refused": str(why)})
    return out


@torch.no_grad()
def weight_means(model: nn.Module, features: PreferenceFeatures) -> torch.Tensor | None:
    """E[w] (N, K) of each pair's prompt: VRM's E_q[w], the twin's w(x); None for the RM."""
    if isinstance(model, VRM):
        return model.latent_predictive(features.prompt_state, features.chosen_state)[0].mean
    if isinstance(model, DeterministicTwin):
        return model.weights(features.prompt_state)
    return None


def evaluate_predictions(predictions: Predictions, subsets: list[str] | None = None) -> dict:
    """Accuracy with a bootstrap 95% interval, calibration, ``error_auroc`` (how well the
    confidence tells right from wrong predictions) and ``selective_accuracy_50`` (accuracy on the
    half of the pairs where the model is most confident), and with ``subsets`` the accuracy per
    subset and RewardBench's section scores."""
    correct = predictions.correct
    out = {"accuracy": bootstrap_accuracy(correct), "calibration": calibration(predictions.prob_chosen),
           "error_auroc": error_auroc(predictions.confidence, correct),
           "selective_accuracy_50": selective_accuracy(correct, predictions.confidence, 0.5)}
    if subsets is not None:
        per_subset = accuracy_by_subset(correct, subsets)
        out["subsets"] = per_subset
        if set(per_subset) & {s for section in REWARDBENCH_SECTIONS.values() for s in section}:
            out["rewardbench"] = rewardbench_scores({k: v["accuracy"] for k, v in per_subset.items()})
    return out


def hack_rate(model: nn.Module, pairs, featurize: Callable[..., PreferenceFeatures], filler: str) -> dict:
    """Share of pairs whose predicted winner flips when ``filler`` opens the loser's response.

    ``pairs`` is a ``datasets.Dataset`` with prompt, chosen, rejected (and filler_rejected, to
    skip losers that already carry it); ``featurize`` maps such a data set to features;
    ``model`` is a fit of any kind, or any ``(prompt_state, response_state) -> reward``.
    """
    if "filler_rejected" in pairs.column_names:
        pairs = pairs.filter(lambda row: not row["filler_rejected"])
    hacked = pairs.map(lambda row: {"rejected": f"{filler} {row['rejected']}"})
    before, after = _rewards(model, featurize(pairs)), _rewards(model, featurize(hacked))
    flipped = (before[0] > before[1]) != (after[0] > after[1])
    return {"hack_rate": flipped.float().mean().item(), "n": len(pairs)}


def _rewards(model, features: PreferenceFeatures) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(model, nn.Module):
        p = predict(model, features)
        return p.mean_chosen, p.mean_rejected
    return model(features.prompt_state, features.chosen_state), model(features.prompt_state, features.rejected_state)

