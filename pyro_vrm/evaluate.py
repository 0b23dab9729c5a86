"""Evaluation of a fit, for VRM and the Bradley-Terry baseline side by side: summaries after
training, and the fuller evaluation of ``pyro-vrm evaluate`` (accuracy with a bootstrap interval,
calibration, per-subset accuracy, RewardBench sections, the reward-hacking rate)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from pyro import poutine

from .baseline import RewardHead
from .features import PreferenceFeatures
from .posterior import evaluate_pairs, pac_bayes_bound, pairwise_accuracy
from .supervision import Standardizer, supervision_target
from .train import make_elbo
from .config import TrainConfig
from .metrics import REWARDBENCH_SECTIONS, accuracy_by_subset, bootstrap_accuracy, calibration, rewardbench_scores
from .vrm import VRM

__all__ = ["pearson", "full_data_elbo", "summarize_vrm", "summarize_reward_model", "Predictions",
           "predict", "evaluate_predictions", "hack_rate"]


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of all entries of ``a`` and ``b``."""
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]).double())[0, 1])


@torch.no_grad()
def full_data_elbo(vrm: VRM, features: PreferenceFeatures, num_particles: int = 16,
                   chunk_size: int = 1024) -> float:
    """ELBO per pair over all of ``features`` (Monte Carlo with ``num_particles`` draws)."""
    elbo = make_elbo(TrainConfig(num_particles=num_particles))
    total = 0.0
    for batch in features.chunks(chunk_size):
        with poutine.block():  # no param-store side effects
            total -= elbo.loss(vrm.model, vrm.guide, batch, preferences=torch.ones(len(batch.index)))
    return total / len(features)


def summarize_vrm(vrm: VRM, train: PreferenceFeatures, test: PreferenceFeatures,
                  standardizer: Standardizer | None = None, truth: dict | None = None,
                  sup_temperature: float = 1.0, extra: dict[str, PreferenceFeatures] | None = None,
                  delta: float = 0.05) -> dict:
    """Accuracy, ELBO, PAC-Bayes bound and, with the simulator's ``truth``, the gap to the
    oracle and the recovery of w (Pearson correlation of E_q[w] with the true w, test prompts).
    Each table in ``extra`` adds ``{name}_accuracy``."""
    ev = {split: evaluate_pairs(vrm, f) for split, f in (("train", train), ("test", test))}
    kl_total = float(ev["train"]["kl"].sum())
    gibbs_error = float(ev["train"]["gibbs_error"].mean())
    summary = {
        "model": "vrm",
        "test_accuracy": pairwise_accuracy(ev["test"]["mean_chosen"], ev["test"]["mean_rejected"]),
        "train_accuracy": pairwise_accuracy(ev["train"]["mean_chosen"], ev["train"]["mean_rejected"]),
        "elbo": full_data_elbo(vrm, train),
        "kl_per_pair": kl_total / len(train),
        "train_gibbs_error": gibbs_error,
        # Paper Eq. 20: the KL summed over the training set enters the bound.
        "pac_bayes_bound": pac_bayes_bound(gibbs_error, kl_total, len(train), delta),
        "pac_bayes_kl": "sum over training pairs",
        "pac_bayes_delta": delta,
        "test_log_loss": float(-ev["test"]["prob_chosen"].clamp_min(1e-12).log().mean()),
    }
    for name, features in (extra or {}).items():
        ev_extra = evaluate_pairs(vrm, features)
        summary[f"{name}_accuracy"] = pairwise_accuracy(ev_extra["mean_chosen"], ev_extra["mean_rejected"])
    if truth is not None:
        summary.update(_oracle(truth, summary["test_accuracy"]))
        w_true = truth["test"]["objective_weights"]
        summary["w_recovery"] = pearson(ev["test"]["weight_mean"], w_true)
        if standardizer is not None:
            target = supervision_target(standardizer(test.chosen_scores), sup_temperature)
            summary["target_w_corr"] = pearson(target, w_true)
    return summary


@torch.no_grad()
def summarize_reward_model(head: RewardHead, train: PreferenceFeatures, test: PreferenceFeatures,
                           truth: dict | None = None, extra: dict[str, PreferenceFeatures] | None = None) -> dict:
    """Accuracy of the Bradley-Terry head and, with ``truth``, its gap to the oracle; each table
    in ``extra`` adds ``{name}_accuracy``."""
    def accuracy(f: PreferenceFeatures) -> float:
        return pairwise_accuracy(head(f.prompt_state, f.chosen_state), head(f.prompt_state, f.rejected_state))

    summary = {"model": "rm", "test_accuracy": accuracy(test), "train_accuracy": accuracy(train)}
    summary.update({f"{name}_accuracy": accuracy(f) for name, f in (extra or {}).items()})
    if truth is not None:
        summary.update(_oracle(truth, summary["test_accuracy"]))
    return summary


def _oracle(truth: dict, test_accuracy: float) -> dict:
    t = truth["test"]
    oracle = pairwise_accuracy(t["chosen_reward"], t["rejected_reward"])
    return {"oracle_accuracy": oracle, "gap_to_oracle": oracle - test_accuracy}


@dataclass
class Predictions:
    """Per pair (N,): the (posterior-mean) rewards of both responses and P(chosen wins)."""

    mean_chosen: torch.Tensor
    mean_rejected: torch.Tensor
    prob_chosen: torch.Tensor

    @property
    def correct(self) -> torch.Tensor:
        """1 where the chosen response gets the higher reward, 1/2 on ties."""
        return (self.mean_chosen > self.mean_rejected).float() + 0.5 * (self.mean_chosen == self.mean_rejected).float()


@torch.no_grad()
def predict(model: VRM | RewardHead, features: PreferenceFeatures) -> Predictions:
    """VRM: posterior-mean rewards and the posterior predictive; RM: rewards and sigmoid(r_c - r_r)."""
    if isinstance(model, VRM):
        ev = evaluate_pairs(model, features)
        return Predictions(ev["mean_chosen"], ev["mean_rejected"], ev["prob_chosen"])
    r_c, r_r = model(features.prompt_state, features.chosen_state), model(features.prompt_state, features.rejected_state)
    return Predictions(r_c, r_r, torch.sigmoid(r_c - r_r))


def evaluate_predictions(predictions: Predictions, subsets: list[str] | None = None) -> dict:
    """Accuracy with a bootstrap 95% interval, calibration, and with ``subsets`` the accuracy per
    subset and RewardBench's section scores."""
    out = {"accuracy": bootstrap_accuracy(predictions.correct), "calibration": calibration(predictions.prob_chosen)}
    if subsets is not None:
        per_subset = accuracy_by_subset(predictions.correct, subsets)
        out["subsets"] = per_subset
        if set(per_subset) & {s for section in REWARDBENCH_SECTIONS.values() for s in section}:
            out["rewardbench"] = rewardbench_scores({k: v["accuracy"] for k, v in per_subset.items()})
    return out


def hack_rate(model: VRM | RewardHead, pairs, featurize: Callable[..., PreferenceFeatures], filler: str) -> dict:
    """Share of pairs whose predicted winner flips when ``filler`` opens the loser's response.

    ``pairs`` is a ``datasets.Dataset`` with prompt, chosen, rejected (and filler_rejected, to
    skip losers that already carry it); ``featurize`` maps such a data set to features.
    """
    if "filler_rejected" in pairs.column_names:
        pairs = pairs.filter(lambda row: not row["filler_rejected"])
    hacked = pairs.map(lambda row: {"rejected": f"{filler} {row['rejected']}"})
    before, after = predict(model, featurize(pairs)), predict(model, featurize(hacked))
    flipped = (before.mean_chosen > before.mean_rejected) != (after.mean_chosen > after.mean_rejected)
    return {"hack_rate": flipped.float().mean().item(), "n": len(pairs)}
