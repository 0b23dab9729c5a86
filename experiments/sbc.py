"""Simulation-based calibration of VRM's amortized posterior, for the package default (the
recommended preset, conditional priors), the paper's objective and the tempered preset (fixed
priors, KL weight 0.01): data drawn from the model's own prior and likelihood
(one data set, 1000 held-out pairs), each preset fitted once, then every held-out pair is a
replicate. For each: the chi-square p-values of the ranks of w, of the margin r_c - r_r and of
log p(y, a | latents), the posterior contraction and z-scores, and the fit's test accuracy and
log loss beside the true rewards' (the oracle's). The tempered preset is also fitted at each KL
weight of ``--kl-weights`` (results.json keys ``kl_weight=<beta>``), to show what beta alone can
do.

Each preset is checked twice. "simulator": the held-out pairs of the simulator, whose hidden
states are a function of the true latents, a link that no fixed-prior model holds. "its own fit":
pairs drawn from the fitted model itself at the held-out pairs' hidden states
(:func:`pyro_vrm.sbc.simulate_from_fit`; results.json ``own_generator``), SBC of the inference
under the model as fitted. Writes results.json, sbc.png (the default's ECDF differences with
simultaneous 95% bands, on the simulator), sbc_paper.png, sbc_tempered.png and
sbc_<fit>_own.png.

    python experiments/sbc.py [--steps 1000] [--pairs 6000] [--held-out 1000] [--num-draws 99] [--seed 0]
                              [--kl-weights 0.1,0.3,1]
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import torch  # noqa: E402

from records import show, write_results  # noqa: E402
from pyro_vrm import ModelConfig, Priors, TrainConfig, evaluate_predictions, fit_vrm, predict, preset  # noqa: E402
from pyro_vrm.evaluate import Predictions  # noqa: E402
from pyro_vrm.sbc import plot_sbc_ecdf, simulate_from_fit, simulation_based_calibration  # noqa: E402
from pyro_vrm.simulation import PriorSimulationConfig, simulate_from_prior  # noqa: E402

# results.json key -> the preset it fits
PRESETS = {"default": "recommended", "paper": "paper", "tempered": "tempered"}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=TrainConfig().steps)
    p.add_argument("--pairs", type=int, default=PriorSimulationConfig().num_pairs, help="pairs, train + held out")
    p.add_argument("--held-out", type=int, default=PriorSimulationConfig().held_out)
    p.add_argument("--num-draws", type=int, default=99, help="draws of q per pair, L (L + 1 a multiple of --bins)")
    p.add_argument("--bins", type=int, default=20)
    p.add_argument("--seed", type=int, default=0, help="seed of the simulator and of the fits")
    p.add_argument("--kl-weights", default="0.1,0.3,1", help="KL weights of extra fits of the tempered preset "
                                                            "(comma-separated; empty for none)")
    p.add_argument("--out", type=Path, default=Path("experiments/out/sbc"))
    args = p.parse_args(argv)

    torch.set_num_threads(1)
    priors = Priors()
    sim = PriorSimulationConfig(num_pairs=args.pairs, held_out=args.held_out, seed=args.seed)
    data = simulate_from_prior(priors, sim)
    truth = data.truth["test"]
    oracle = evaluate_predictions(predict_truth(truth))
    results = {"simulation": {**sim.__dict__, "aspect_noise": sim.aspect_noise}, "priors": repr(priors),
               "oracle": {"accuracy": oracle["accuracy"]["accuracy"], "log_loss": oracle["calibration"]["log_loss"]}}
    rows, figures = [], {}
    fits = [(key, name, {}) for key, name in PRESETS.items()]
    fits += [(f"kl_weight={float(beta):g}", "tempered", {"kl_weight": float(beta)})
             for beta in args.kl_weights.split(",") if beta.strip()]
    for key, name, overrides in fits:
        model_config, train_config = preset(name, ModelConfig(), TrainConfig(steps=args.steps, seed=args.seed))
        train_config = replace(train_config, **overrides)
        vrm, standardizer = fit_vrm(data.train, model_config, train_config, priors, progress=False)
        torch.manual_seed(args.seed)
        sbc = simulation_based_calibration(vrm, data, standardizer, args.num_draws, args.bins)
        ranks = sbc.pop("ranks")
        ev = evaluate_predictions(predict(vrm, data.test))
        results[key] = {**sbc, "preset": name, "kl_weight": train_config.kl_weight, **vrm.selections,
                        "test_accuracy": ev["accuracy"]["accuracy"], "test_log_loss": ev["calibration"]["log_loss"],
                        "ece": ev["calibration"]["ece"]}
        rows.append(row(key, name, "simulator", train_config.kl_weight, sbc, ev))
        if key in PRESETS:
            figures[key] = ranks
            torch.manual_seed(args.seed)
            own = simulation_based_calibration(vrm, simulate_from_fit(vrm, data.test, standardizer, args.seed),
                                               standardizer, args.num_draws, args.bins)
            figures[f"{key}_own"] = own.pop("ranks")
            results[key]["own_generator"] = own
            rows.append(row(key, name, "its own fit", train_config.kl_weight, own, ev))
    show(results, ["fit", "preset", "pairs drawn from", "KL weight", "w rank p", "margin rank p", "log-lik rank p", "w contraction",
                   "margin contraction", "margin z-score mean / sd", "test accuracy", "test log loss"], rows)
    print(f"\n{len(data.test)} held-out pairs; the true rewards' accuracy {results['oracle']['accuracy']:.3f}, "
          f"log loss {results['oracle']['log_loss']:.3f}")
    args.out.mkdir(parents=True, exist_ok=True)
    for key, ranks in figures.items():
        fit = key.removesuffix("_own")
        source = "pairs drawn from the fit itself" if key.endswith("_own") else "pairs drawn from the simulator"
        fig = plot_sbc_ecdf(ranks, args.num_draws)
        fig.suptitle(f"SBC ranks, {fit} ({PRESETS[fit]} preset), {source}: ECDF - uniform, 95% simultaneous band",
                     y=1.02)
        fig.savefig(args.out / ("sbc.png" if key == "default" else f"sbc_{key}.png"), dpi=90, bbox_inches="tight")
    write_results(args.out, results)
    return results


def row(key: str, preset_name: str, source: str, kl_weight: float, sbc: dict, ev: dict) -> list:
    return [key, preset_name, source, f"{kl_weight:g}",
            *(f"{sbc[k]:.3g}" for k in ("w_rank_pvalue", "margin_rank_pvalue", "loglik_rank_pvalue")),
            *(f"{sbc[k]:.3f}" for k in ("w_contraction", "margin_contraction")),
            f"{sbc['margin_zscore_mean']:.2f} / {sbc['margin_zscore_sd']:.2f}",
            f"{ev['accuracy']['accuracy']:.3f}", f"{ev['calibration']['log_loss']:.3f}"]


def predict_truth(truth: dict):
    """The simulator's true rewards as predictions (what no model can beat in expectation)."""
    r_c, r_r = truth["chosen_reward"], truth["rejected_reward"]
    return Predictions(r_c, r_r, torch.sigmoid(r_c - r_r), (r_c - r_r).abs())


if __name__ == "__main__":
    main()
