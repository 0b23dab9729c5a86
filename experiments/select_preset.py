"""How the tempered preset's KL weight beta was chosen (its priors are fixed; the recommended
preset's conditional priors are fitted at KL weight 1): on validation pairs carved from the
training pairs (20% of their prompts), never the test split.

For each data set (MiniLM features of simulated-text, and simulated hidden states) and each
beta of the grid, VRM with its aspects observed and no softmax supervision (lambda 0) is fitted
to the rest of the training pairs and scored on the validation pairs by the mean log
posterior-predictive probability of the observed preferences (a proper score), averaged over
the data sets. Below some beta that score is flat within its noise, so beta is chosen by the
one-standard-error rule (Hastie, Tibshirani and Friedman, "The Elements of Statistical Learning",
7.10): the largest beta, the most regularised fit, whose score is within one standard error of
the best one's, the standard error of the paired per-pair differences on the same validation
pairs; accuracy breaks ties.

sigma_a, the noise of the annotations around s(z), is a parameter of their likelihood that the
aspect scores identify, so it is estimated with the decoder (``Priors.aspect_noise=None``). The
rows with sigma_a fixed show what choosing it by held-out preferences would do: the looser the
tie to the aspects, the better the in-distribution score, up to the edge of any grid (sigma_a ->
infinity drops the aspects), whatever that does out of distribution. The paper's objective (beta
1, lambda 0.1, no aspect likelihood) is scored beside them.

    python experiments/select_preset.py [--steps 1000]
"""

from __future__ import annotations

import itertools
import statistics
from dataclasses import replace

import torch

from common import configs, load, output_dir, parser, show, write_results
from pyro_vrm import (Priors, SimulationConfig, fit_vrm, pair_posterior, pairwise_accuracy, simulate,
                      validation_split)

KL_WEIGHTS = (1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001)
FIXED_ASPECT_NOISES = (0.5, 1.0, 2.0, 4.0)  # for comparison; sigma_a is learned


@torch.no_grad()
def validation_scores(vrm, validation) -> tuple[dict, torch.Tensor]:
    """(mean log P(chosen wins) under the posterior predictive and accuracy on ``validation``,
    the per-pair log-probabilities (N,))."""
    batch = validation.batch(torch.arange(len(validation)))
    out = pair_posterior(vrm, batch, num_samples=256)
    log_prob = out["prob_chosen"].clamp_min(1e-12).log()
    return ({"validation_log_lik": float(log_prob.mean()),
             "validation_accuracy": pairwise_accuracy(out["mean_chosen"], out["mean_rejected"])}, log_prob)


def one_standard_error_choice(grid: list[dict], per_pair: dict[int, dict[str, torch.Tensor]]) -> dict:
    """The row of ``grid`` with the largest beta whose mean validation log-likelihood is within
    one standard error of the best row's; ``per_pair[id(row)][data set]`` holds its per-pair
    values, so the standard error is that of the paired differences, averaged over data sets
    as the score is. Accuracy breaks ties. Adds ``standard_error`` and ``within_one_se`` to the rows."""
    best = max(grid, key=lambda r: (r["mean_validation_log_lik"], r["mean_validation_accuracy"]))
    for row in grid:
        differences = [per_pair[id(best)][n] - per_pair[id(row)][n] for n in per_pair[id(best)]]
        variance = sum(float(d.var() / len(d)) for d in differences) / len(differences) ** 2
        row["standard_error"] = variance ** 0.5
        row["within_one_se"] = best["mean_validation_log_lik"] - row["mean_validation_log_lik"] <= row["standard_error"]
    return max((r for r in grid if r["within_one_se"]), key=lambda r: (r["kl_weight"], r["mean_validation_accuracy"]))


def candidates() -> list[dict]:
    learned = [{"preset": "tempered", "kl_weight": beta, "aspect_noise": None} for beta in KL_WEIGHTS]
    fixed = [{"preset": "tempered", "kl_weight": beta, "aspect_noise": sigma}
             for sigma, beta in itertools.product(FIXED_ASPECT_NOISES, KL_WEIGHTS[:5])]
    return learned + fixed + [{"preset": "paper", "kl_weight": 1.0, "aspect_noise": None}]


def _sigma(row: dict) -> str:
    if row["preset"] == "paper":
        return "-"
    if row["aspect_noise"] is not None:
        return str(row["aspect_noise"])
    learned = [s for key, v in row.items() if isinstance(v, dict) for s in v.get("learned_aspect_noise", [])]
    return f"learned ({min(learned):.2f}-{max(learned):.2f})"


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--learned-only", action="store_true", help="only the rows with sigma_a learned")
    args = p.parse_args(argv)
    out = output_dir(args, "select_preset")
    data_sets = {"simulated-text": load(args)["train"], "simulated": simulate(SimulationConfig()).train}
    rows, per_pair = [], {}
    for candidate in candidates():
        if args.learned_only and (candidate["aspect_noise"] is not None or candidate["preset"] == "paper"):
            continue
        row = dict(candidate)
        per_pair[id(row)] = {}
        for name, train in data_sets.items():
            fit_part, validation = validation_split(train, 0.2, seed=0)
            name_ = "vrm-tempered" if candidate["preset"] == "tempered" else "vrm-paper"
            model_config, train_config = configs(name_, steps=args.steps, log_every=args.steps)
            if candidate["preset"] == "tempered":
                model_config = replace(model_config, observe_aspects=True)
                train_config = replace(train_config, kl_weight=candidate["kl_weight"], lambda_sup=0.0)
            vrm, _ = fit_vrm(fit_part, model_config, train_config, Priors(aspect_noise=candidate["aspect_noise"]),
                             progress=False)
            row[name], per_pair[id(row)][name] = validation_scores(vrm, validation)
            if vrm.decoder.aspect_noise is not None:
                row[name]["learned_aspect_noise"] = vrm.decoder.aspect_noise.tolist()
        row["mean_validation_log_lik"] = statistics.mean(row[n]["validation_log_lik"] for n in data_sets)
        row["mean_validation_accuracy"] = statistics.mean(row[n]["validation_accuracy"] for n in data_sets)
        rows.append(row)
    grid = [r for r in rows if r["preset"] == "tempered" and r["aspect_noise"] is None]
    chosen = one_standard_error_choice(grid, per_pair)
    header = ["objective", "beta", "sigma_a", *[f"{n} val log-lik" for n in data_sets],
              *[f"{n} val accuracy" for n in data_sets], "mean val log-lik", "paired se vs best", "chosen"]
    results = {"data": list(data_sets), "steps": args.steps, "rows": rows, "chosen": {"kl_weight": chosen["kl_weight"]}}
    show(results, header, [[
        "aspects observed, lambda 0" if r["preset"] == "tempered" else "paper (lambda 0.1, no aspects)",
        r["kl_weight"], _sigma(r),
        *[f"{r[n]['validation_log_lik']:.4f}" for n in data_sets],
        *[f"{r[n]['validation_accuracy']:.3f}" for n in data_sets],
        f"{r['mean_validation_log_lik']:.4f}", f"{r['standard_error']:.4f}" if "standard_error" in r else "-",
        "yes" if r is chosen else ""] for r in rows])
    write_results(out, results)
    return results


if __name__ == "__main__":
    main()
