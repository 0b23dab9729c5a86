r"""Epistemic uncertainty from one fit: the RM with a Bayesian last layer sampled by NUTS
(:mod:`pyro_vrm.last_layer`) against ensembles of M fits of the RM and of VRM, on simulated-text.

    python experiments/last_layer.py [--quick] [--members 5] [--max-n 64] [--no-vrm]

**Fits.** Every model is fitted on the same four fifths of simulated-text's training prompts
(``validation_split(train, 0.2, seed=0)``, as ``overoptimisation.py`` does); the fifth held out is
the validation set, which chooses the last layer's prior scale and every kappa. ``rm-last-layer``:
the seed-0 RM, its last layer resampled by NUTS (``--chains`` chains of ``--num-samples`` draws
after ``--warmup``). ``rm-ensemble`` and ``vrm-ensemble``: ``--members`` fits, seeds 0 .. M-1, each
member standardized by its rewards on its training responses (:mod:`pyro_vrm.ensemble`). ``rm``:
the seed-0 RM alone, a point estimate (its sd is 0), for reference. ``vrm``: the seed-0 VRM alone,
its sd the posterior's (q(w), q(z)) of one fit.

**Measures.** Test accuracy and log loss of the posterior predictive P(chosen wins) (an
ensemble's: the mean of its members'); the AUROC of the reward sd for telling each kind of
out-of-distribution text from fresh responses to the test prompts (:func:`pyro_vrm.ood.ood_aurocs`);
best-of-``--max-n`` gold reward of the pick by mean - kappa sd on fresh candidates for test prompts
(``best_of_n.py``'s estimator and candidates), with kappa from ``--kappas`` chosen by the
validation prompts' best-of-16 gold (the smallest on a tie); the test gold at every kappa of the
grid is reported too. Cost: the fits each model needs and the seconds they took (fits and NUTS;
the backbone's features are shared and not counted).

**Output.** ``results.json``: ``{"models": {MODEL: {"fits", "seconds", "test_accuracy",
"test_log_loss", "ood", "kappa", "validation_gold", "gold", "gold_by_kappa"}}, "last_layer": the
NUTS report, ...}`` and two markdown tables.
"""

from __future__ import annotations

import sys
import time

import torch
from common import apply_quick, curve, load, output_dir, parser, quick_flag, show, write_results

import best_of_n as bon
from pyro_vrm import BackboneConfig, Ensemble, load_backbone, ood_aurocs, predict, reward_mean_sd, validation_split
from pyro_vrm.last_layer import BayesianLastLayer

QUICK = {"members": 2, "steps": 200, "prompts": 8, "max_n": 16, "val_prompts": 8, "val_pool": 16, "ood_texts": 32,
         "num_samples": 100, "warmup": 100}


def arguments(argv):
    p = parser(__doc__.splitlines()[0], seeds=None, models=None)
    quick_flag(p, QUICK)
    p.add_argument("--members", type=int, default=5, help="fits per ensemble (seeds 0 .. M-1)")
    p.add_argument("--no-vrm", action="store_true", help="leave out VRM (its one fit and its ensemble)")
    p.add_argument("--num-samples", type=int, default=500, help="NUTS draws per chain")
    p.add_argument("--warmup", type=int, default=300, help="NUTS warmup steps per chain")
    p.add_argument("--chains", type=int, default=2, help="NUTS chains, one after the other")
    bon.candidate_flags(p)
    p.add_argument("--ood-texts", type=int, default=256, help="texts of each kind for the OOD AUROCs")
    args = p.parse_args(argv)
    apply_quick(args, argv, QUICK)
    if args.data != "simulated-text":
        sys.exit("this comparison needs --data simulated-text (its gold reward and OOD texts are the simulator's)")
    return args


class Scorer:
    """One model as the measures read it: ``mean_sd(prompt_state, response_state)`` -> (B,), (B,)
    and ``prob_chosen(features)`` -> (N,), with its cost."""

    def __init__(self, mean_sd, prob_chosen, fits: int, seconds: float):
        self.mean_sd, self.prob_chosen, self.fits, self.seconds = mean_sd, prob_chosen, fits, seconds


def fit_all(args, fit_part, held, out) -> tuple[dict[str, Scorer], dict]:
    splits = {"train": fit_part, "test": held}
    reference = (fit_part.prompt_state.repeat(2, 1), torch.cat([fit_part.chosen_state, fit_part.rejected_state]))

    def fit(kind, seed):
        return curve(kind, splits, out / "fits" / f"{kind}-seed{seed}", seed=seed, steps=args.steps,
                     log_every=args.log_every)[1]

    started = time.perf_counter()
    rm = fit("rm", 0)
    rm_seconds = time.perf_counter() - started
    layer = BayesianLastLayer(rm, fit_part, held)
    report = layer.fit(args.num_samples, args.warmup, seed=0, chains=args.chains)
    scorers = {
        "rm": Scorer(lambda p, r: reward_mean_sd(rm, p, r), lambda f: predict(rm, f).prob_chosen, 1, rm_seconds),
        "rm-last-layer": Scorer(layer.mean_sd, lambda f: layer.prob_chosen(f.prompt_state, f.chosen_state,
                                                                           f.rejected_state),
                                1, time.perf_counter() - started)}
    for kind in ("rm", *(() if args.no_vrm else ("vrm",))):
        started = time.perf_counter()
        members = [fit(kind, 0)]
        if kind == "vrm":  # one fit, its sd the posterior's own: the first member alone
            one = members[0]
            scorers["vrm"] = Scorer(lambda p, r, m=one: reward_mean_sd(m, p, r),
                                    lambda f, m=one: predict(m, f).prob_chosen, 1, time.perf_counter() - started)
        members += [fit(kind, s) for s in range(1, args.members)]
        ensemble = Ensemble(members).standardize(*reference)
        scorers[f"{kind}-ensemble"] = Scorer(
            lambda p, r, e=ensemble: reward_mean_sd(e, p, r),
            lambda f, ms=members: torch.stack([predict(m, f).prob_chosen for m in ms]).mean(0),
            args.members, time.perf_counter() - started)
        print(f"{kind}-ensemble: {args.members} fits in {scorers[f'{kind}-ensemble'].seconds:.0f} s", flush=True)
    return scorers, report


def scores(scorer: Scorer, cands: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, sd), each (P, m), on best-of-n candidates."""
    mean, sd = scorer.mean_sd(cands["prompt_state"], cands["response_state"])
    return mean.reshape(cands["gold"].shape), sd.reshape(cands["gold"].shape)


def measure(args, scorer: Scorer, test, backbone, val, cands, test_prompts) -> dict:
    torch.manual_seed(args.sample_seed)  # every model's posterior draws from the same stream, whatever came before
    prob = scorer.prob_chosen(test).double()
    ood = ood_aurocs(lambda p, r: scorer.mean_sd(*backbone.encode(p, r)[:2]), test_prompts, args.ood_texts,
                     seed=args.sample_seed)
    n_val = min(bon.KAPPA_N, args.val_pool)
    mean, sd = scores(scorer, val)
    validation_gold = {k: bon.best_of_n(mean - k * sd, val["gold"], n_val).mean().item() for k in args.kappas}
    kappa = max(args.kappas, key=lambda k: (validation_gold[k], -k))
    mean, sd = scores(scorer, cands)
    by_kappa = {k: bon.best_of_n(mean - k * sd, cands["gold"], args.max_n).mean().item() for k in args.kappas}
    return {"fits": scorer.fits, "seconds": scorer.seconds, "test_accuracy": float((prob > 0.5).double().mean()),
            "test_log_loss": float(-prob.clamp_min(1e-12).log().mean()), "ood": ood, "kappa": kappa,
            "validation_gold": {str(k): g for k, g in validation_gold.items()}, "gold": by_kappa[kappa],
            "gold_by_kappa": {str(k): g for k, g in by_kappa.items()}}


def report(results: dict, kappas: list[float], n: int) -> None:
    kinds = ("filler_only", "truncated", "other_family")
    rows = [[name, r["fits"], f"{r['seconds']:.0f}", f"{r['test_accuracy']:.3f}", f"{r['test_log_loss']:.3f}",
             *(f"{r['ood']['auroc'][k]:.3f}" for k in kinds), f"{r['ood']['mean_sd']['in_distribution']:.3g}",
             f"{r['kappa']:g}", f"{r['gold']:.3f}"] for name, r in results["models"].items()]
    show(results, ["model", "fits", "seconds", "test accuracy", "test log loss",
                   *(f"sd AUROC {k.replace('_', '-')}" for k in kinds), "mean sd in distribution",
                   "kappa (validation)", f"best-of-{n} gold"], rows)
    print()
    rows = [[name, *(f"{r['gold_by_kappa'][str(k)]:.3f}" for k in kappas)] for name, r in results["models"].items()]
    show(results, ["model", *(f"best-of-{n} gold, kappa {k:g}" for k in kappas)], rows, key="gold_table")


def main(argv=None) -> dict:
    started = time.time()
    args = arguments(argv)
    out, data = output_dir(args, "last_layer"), load(args)
    pairs = data["pairs"]
    fit_part, held = validation_split(data["train"], 0.2, seed=0)
    weights, prompt_texts = bon.prompt_weights(pairs), list(dict.fromkeys(pairs["prompt"]))
    test_prompts = bon.subset(list(dict.fromkeys(p for p, s in zip(pairs["prompt"], pairs["split"]) if s == "test")),
                              args.prompts, seed=0)
    val_prompts = bon.subset([prompt_texts[i] for i in held.prompt_id.unique().tolist()], args.val_prompts, seed=0)
    backbone = load_backbone(BackboneConfig(backbone=args.backbone, max_length=args.max_length))
    cands = bon.candidates(test_prompts, weights, args.max_n, 0.5, args.sample_seed, backbone)
    val = bon.candidates(val_prompts, weights, args.val_pool, 0.5, args.sample_seed + 1, backbone)
    scorers, nuts = fit_all(args, fit_part, held, out)
    results = {"data": args.data, "models": {name: measure(args, s, data["test"], backbone, val, cands, test_prompts)
                                             for name, s in scorers.items()},
               "last_layer": nuts, "members": args.members, "prompts": len(test_prompts), "pool": args.max_n,
               "validation_prompts": len(val_prompts), "kappas": args.kappas, "steps": args.steps}
    print(f"NUTS: tau {nuts['prior_scale']:g}, R-hat max {nuts['r_hat_max']:.3f}, n_eff min {nuts['n_eff_min']:.0f}, "
          f"divergences {nuts['divergences']}, {nuts['seconds']:.0f} s\n")
    report(results, args.kappas, args.max_n)
    results["seconds"] = time.time() - started
    print(f"\nwall time {results['seconds']:.0f} s")
    write_results(out, results)
    return results


if __name__ == "__main__":
    main()
