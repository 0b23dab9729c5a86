"""Metrics of pairwise predictions: the tie rule, accuracy with a bootstrap interval,
calibration, how well confidence tells right from wrong, per-subset accuracy, and RewardBench's
section scores. Plain functions of tensors; no model in here.

Calibration of P(chosen wins) is measured on the symmetrized pairs: every pair counts once as
(p, chosen won) and once as (1 - p, rejected won). Preference data only ever record the winner
first, so without this every outcome would be 1 and any predictor that says "1" would look
perfectly calibrated.
"""

from __future__ import annotations

import torch
from scipy.stats import rankdata

__all__ = ["REWARDBENCH_SECTIONS", "pairwise_correct", "pairwise_accuracy", "oracle_accuracy", "bootstrap_accuracy",
           "calibration", "auroc", "error_auroc", "selective_accuracy", "accuracy_by_subset", "rewardbench_scores",
           "plot_reliability"]

# RewardBench's section -> {subset: number of prompts}; math-prm is counted as 984 so that math
# and code weigh equally in Reasoning.
REWARDBENCH_SECTIONS = {
    "Chat": {"alpacaeval-easy": 100, "alpacaeval-length": 95, "alpacaeval-hard": 95,
             "mt-bench-easy": 28, "mt-bench-med": 40},
    "Chat Hard": {"mt-bench-hard": 37, "llmbar-natural": 100, "llmbar-adver-neighbor": 134,
                  "llmbar-adver-GPTInst": 92, "llmbar-adver-GPTOut": 47, "llmbar-adver-manual": 46},
    "Safety": {"refusals-dangerous": 100, "refusals-offensive": 100, "xstest-should-refuse": 154,
               "xstest-should-respond": 250, "donotanswer": 136},
    "Reasoning": {"math-prm": 984, "hep-cpp": 164, "hep-go": 164, "hep-java": 164, "hep-js": 164,
                  "hep-python": 164, "hep-rust": 164},
}


def pairwise_correct(chosen_reward: torch.Tensor, rejected_reward: torch.Tensor) -> torch.Tensor:
    """The tie rule, for every accuracy in pyro_vrm: 1 where the chosen response gets the higher
    reward, 1/2 on a tie, 0 otherwise; (N,), (N,) -> (N,).

    Examples:
        >>> pairwise_correct(torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 1.0, 2.0]))
        tensor([1.0000, 0.0000, 0.5000])
    """
    return (chosen_reward > rejected_reward).float() + 0.5 * (chosen_reward == rejected_reward).float()


def pairwise_accuracy(chosen_reward: torch.Tensor, rejected_reward: torch.Tensor) -> float:
    """Share of pairs whose chosen response gets the higher reward, ties counting half."""
    return pairwise_correct(chosen_reward, rejected_reward).mean().item()


def oracle_accuracy(truth: dict[str, torch.Tensor]) -> float:
    """The accuracy of the true rewards (``truth["chosen_reward"]``, ``truth["rejected_reward"]``,
    (N,) each) on the observed winners: the best a model can expect on simulated data."""
    return pairwise_accuracy(truth["chosen_reward"], truth["rejected_reward"])


def bootstrap_accuracy(correct: torch.Tensor, num_resamples: int = 2000, level: float = 0.95,
                       seed: int = 0) -> dict[str, float]:
    """Accuracy of (N,) 0/1 outcomes with a percentile bootstrap interval.

    Examples:
        >>> out = bootstrap_accuracy(torch.tensor([1.0, 1.0, 0.0, 1.0]))
        >>> out["accuracy"], out["low"] <= out["accuracy"] <= out["high"]
        (0.75, True)
    """
    correct = correct.float()
    g = torch.Generator().manual_seed(seed)
    draws = torch.randint(len(correct), (num_resamples, len(correct)), generator=g)
    means = correct[draws].mean(-1)
    tail = (1 - level) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail])).tolist()
    return {"accuracy": correct.mean().item(), "low": low, "high": high, "level": level, "n": len(correct)}


def _symmetrize(prob_chosen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    p = prob_chosen.double().clamp(1e-12, 1 - 1e-12)
    return torch.cat([p, 1 - p]), torch.cat([torch.ones_like(p), torch.zeros_like(p)])


def calibration(prob_chosen: torch.Tensor, num_bins: int = 10, num_draws: int = 1000, seed: int = 0) -> dict:
    """Expected calibration error, Brier score and log loss of P(chosen wins) (N,), on the
    symmetrized pairs, with the reliability table (equal-width bins).

    ECE is biased upwards on a few hundred pairs: a perfectly calibrated predictor scores above 0
    by chance alone. ``ece_expected`` is the mean ECE of ``num_draws`` outcome sets drawn from the
    predictions themselves (winner ~ Bernoulli(p), consistency resampling; Bröcker and Smith 2007),
    and ``ece_pvalue`` the share of those draws whose ECE is at least the observed one: a small
    value says the miscalibration is more than the test set's noise.

    Examples:
        >>> out = calibration(torch.full((8,), 0.5))  # a constant 1/2 is calibrated on pairs
        >>> out["ece"], round(out["brier"], 4), round(out["log_loss"], 4), out["ece_expected"]
        (0.0, 0.25, 0.6931, 0.0)
    """
    p, y = _symmetrize(prob_chosen)
    edges = torch.linspace(0, 1, num_bins + 1, dtype=p.dtype)
    which = torch.bucketize(p, edges[1:-1])
    one_hot = torch.nn.functional.one_hot(which, num_bins).to(p.dtype)  # (2N, bins)
    bins = [{"low": edges[b].item(), "high": edges[b + 1].item(), "count": int(mask.sum()),
             "confidence": p[mask].mean().item(), "frequency": y[mask].mean().item()}
            for b, mask in enumerate(one_hot.bool().T) if mask.any()]
    ece = _binned_ece(p, one_hot, y).item()
    draws = _resampled_ece(p, one_hot, num_draws, seed)
    return {"ece": ece, "brier": ((p - y) ** 2).mean().item(),
            "log_loss": -(y * p.log() + (1 - y) * (1 - p).log()).mean().item(), "bins": bins,
            "ece_expected": draws.mean().item(),
            "ece_pvalue": ((draws >= ece - 1e-12).sum().item() + 1) / (num_draws + 1)}


def _binned_ece(p: torch.Tensor, one_hot: torch.Tensor, outcomes: torch.Tensor) -> torch.Tensor:
    """ECE of predictions ``p`` (2N,) in the bins of ``one_hot`` (2N, bins) for ``outcomes`` (..., 2N):
    the sum over bins of |sum of p - sum of outcomes| / 2N, the count-weighted |confidence - frequency|."""
    return ((p @ one_hot) - outcomes @ one_hot).abs().sum(-1) / len(p)


def _resampled_ece(p: torch.Tensor, one_hot: torch.Tensor, num_draws: int, seed: int) -> torch.Tensor:
    """ECE (num_draws,) of outcomes drawn from the symmetrized predictions ``p`` (2N,) themselves:
    the first half's winners ~ Bernoulli(p), the second half their complements, as in the data."""
    half = len(p) // 2
    g = torch.Generator().manual_seed(seed)
    chunk = max(1, 2_000_000 // half)  # draws per chunk: bounded memory on large test sets
    eces = []
    for start in range(0, num_draws, chunk):
        wins = torch.bernoulli(p[:half].expand(min(chunk, num_draws - start), half), generator=g)
        eces.append(_binned_ece(p, one_hot, torch.cat([wins, 1 - wins], -1)))
    return torch.cat(eces)


def auroc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """The probability that a random ``positive`` score exceeds a random ``negative`` one, ties
    counting half: the area under the ROC curve of telling the two apart by the score (the
    Mann-Whitney U over both sizes). NaN when either is empty.

    Examples:
        >>> auroc(torch.tensor([3.0, 2.0]), torch.tensor([1.0, 2.0]))
        0.875
    """
    num_pos, num_neg = len(positive), len(negative)
    if num_pos == 0 or num_neg == 0:
        return float("nan")
    ranks = rankdata(torch.cat([positive, negative]).double().numpy())  # ties get their average rank
    return (float(ranks[:num_pos].sum()) - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg)


def error_auroc(confidence: torch.Tensor, correct: torch.Tensor) -> float:
    """How well ``confidence`` (N,) tells right predictions from wrong ones (``correct`` (N,),
    1 right, 0 wrong, 1/2 a tie, which counts as not right): the area under the ROC curve, i.e.
    the probability that a random right prediction has the higher confidence than a random wrong
    one (ties in confidence count half). NaN when all are right or all wrong.

    Examples:
        >>> error_auroc(torch.tensor([0.9, 0.8, 0.2, 0.1]), torch.tensor([1.0, 1.0, 0.0, 0.0]))
        1.0
        >>> error_auroc(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0]))
        0.5
    """
    right = correct >= 1
    return auroc(confidence[right], confidence[~right])


def selective_accuracy(correct: torch.Tensor, confidence: torch.Tensor, coverage: float = 0.5) -> float:
    """Accuracy on the ``coverage`` share of pairs (N,) where the model is most confident.

    Examples:
        >>> selective_accuracy(torch.tensor([1.0, 0.0, 1.0, 0.0]), torch.tensor([0.9, 0.8, 0.7, 0.1]))
        0.5
    """
    keep = max(1, round(coverage * len(correct)))
    order = torch.argsort(confidence, descending=True, stable=True)
    return correct.float()[order[:keep]].mean().item()


def accuracy_by_subset(correct: torch.Tensor, subsets: list[str]) -> dict[str, dict]:
    """{subset: {"accuracy", "n"}} for (N,) 0/1 outcomes and N subset names."""
    out = {}
    for name in sorted(set(subsets)):
        mask = torch.tensor([s == name for s in subsets])
        out[name] = {"accuracy": correct.float()[mask].mean().item(), "n": int(mask.sum())}
    return out


def rewardbench_scores(subset_accuracy: dict[str, float]) -> dict:
    """RewardBench's rule: each section is the prompt-count-weighted mean of its subsets'
    accuracies; the total is the mean of the four sections. Sections with a subset missing are
    reported as None, and so is the total, with the missing subsets listed.

    Examples:
        >>> acc = {s: 1.0 for section in REWARDBENCH_SECTIONS.values() for s in section}
        >>> rewardbench_scores(acc)["Total"]
        1.0
    """
    scores, missing = {}, []
    for section, counts in REWARDBENCH_SECTIONS.items():
        absent = [s for s in counts if s not in subset_accuracy]
        missing += absent
        scores[section] = None if absent else (
            sum(subset_accuracy[s] * n for s, n in counts.items()) / sum(counts.values()))
    complete = all(v is not None for v in scores.values())
    scores["Total"] = sum(scores.values()) / len(REWARDBENCH_SECTIONS) if complete else None
    scores["missing_subsets"] = missing
    return scores


def plot_reliability(calibrations: dict[str, dict], path, title: str = "Reliability of P(chosen wins)") -> None:
    """A reliability diagram of one or more :func:`calibration` results, to a PNG at ``path``."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone

    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="calibrated")
    for label, cal in calibrations.items():
        ax.plot([b["confidence"] for b in cal["bins"]], [b["frequency"] for b in cal["bins"]],
                marker="o", label=f"{label} (ECE {cal['ece']:.3f})")
    ax.set(xlabel="predicted probability", ylabel="observed frequency", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
