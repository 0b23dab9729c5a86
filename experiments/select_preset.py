"""How the recommended preset's KL weight beta was chosen: on validation pairs carved from the
training pairs (20% of their prompts), never the test split.

For each data set (MiniLM features of simulated-text, and simulated hidden states) and each
beta of the grid, VRM with its aspects observed and no softmax supervision (lambda 0) is fitted
to the rest of the training pairs and scored on the validation pairs by the mean log
posterior-predictive probability of the observed preferences (a proper score), accuracy breaking
ties; beta maximises the mean of that score over the data sets.

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

from common import configs, load, output_dir, parser, table, write_results
from pyro_vrm import (Priors, SimulationConfig, fit_vrm, pair_posterior, pairwise_accuracy, simulate,
                      validation_split)

KL_WEIGHTS = (1.0, 0.3, 0.1, 0.03, 0.01)
ASPECT_NOISES = (None, 0.5, 1.0, 2.0, 4.0)  # None: learned


@torch.no_grad()
def validation_scores(vrm, validation) -> dict:
    """Mean log P(chosen wins) under the posterior predictive, and accuracy, on ``validation``."""
    batch = validation.batch(torch.arange(len(validation)))
    out = pair_posterior(vrm, batch, num_samples=256)
    return {"validation_log_lik": float(out["prob_chosen"].clamp_min(1e-12).log().mean()),
            "validation_accuracy": pairwise_accuracy(out["mean_chosen"], out["mean_rejected"])}


def candidates() -> list[dict]:
    grid = [{"preset": "recommended", "kl_weight": beta, "aspect_noise": sigma}
            for sigma, beta in itertools.product(ASPECT_NOISES, KL_WEIGHTS)]
    return grid + [{"preset": "paper", "kl_weight": 1.0, "aspect_noise": None}]


def _sigma(row: dict) -> str:
    if row["preset"] == "paper":
        return "-"
    if row["aspect_noise"] is not None:
        return str(row["aspect_noise"])
    learned = [s for key, v in row.items() if isinstance(v, dict) for s in v.get("learned_aspect_noise", [])]
    return f"learned ({min(learned):.2f}-{max(learned):.2f})"


def main(argv=None) -> dict:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    out = output_dir(args, "select_preset")
    data_sets = {"simulated-text": load(args)["train"], "simulated": simulate(SimulationConfig()).train}
    rows = []
    for candidate in candidates():
        row = dict(candidate)
        for name, train in data_sets.items():
            fit_part, validation = validation_split(train, 0.2, seed=0)
            name_ = "vrm" if candidate["preset"] == "recommended" else "vrm-paper"
            model_config, train_config = configs(name_, steps=args.steps, log_every=args.steps)
            if candidate["preset"] == "recommended":
                model_config = replace(model_config, observe_aspects=True)
                train_config = replace(train_config, kl_weight=candidate["kl_weight"], lambda_sup=0.0)
            vrm, _ = fit_vrm(fit_part, model_config, train_config, Priors(aspect_noise=candidate["aspect_noise"]),
                             progress=False)
            row[name] = validation_scores(vrm, validation)
            if vrm.decoder.aspect_noise is not None:
                row[name]["learned_aspect_noise"] = vrm.decoder.aspect_noise.tolist()
        row["mean_validation_log_lik"] = statistics.mean(row[n]["validation_log_lik"] for n in data_sets)
        row["mean_validation_accuracy"] = statistics.mean(row[n]["validation_accuracy"] for n in data_sets)
        rows.append(row)
    grid = [r for r in rows if r["preset"] == "recommended" and r["aspect_noise"] is None]
    chosen = max(grid, key=lambda r: (r["mean_validation_log_lik"], r["mean_validation_accuracy"]))
    header = ["objective", "beta", "sigma_a", *[f"{n} val log-lik" for n in data_sets],
              *[f"{n} val accuracy" for n in data_sets], "mean val log-lik", "chosen"]
    print(table(header, [[
        "aspects observed, lambda 0" if r["preset"] == "recommended" else "paper (lambda 0.1, no aspects)",
        r["kl_weight"], _sigma(r),
        *[f"{r[n]['validation_log_lik']:.4f}" for n in data_sets],
        *[f"{r[n]['validation_accuracy']:.3f}" for n in data_sets],
        f"{r['mean_validation_log_lik']:.4f}", "yes" if r is chosen else ""] for r in rows]))
    results = {"data": list(data_sets), "steps": args.steps, "rows": rows, "chosen": {"kl_weight": chosen["kl_weight"]}}
    write_results(out, results)
    return results


if __name__ == "__main__":
    main()
