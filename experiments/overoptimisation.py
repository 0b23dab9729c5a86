r"""Overoptimisation curves on simulated-text (after Gao et al. 2023): does a reward's uncertainty
keep a policy from exploiting it? Gold reward against KL for best-of-n and for PPO, for the RM, the
twin and VRM, each without and with an uncertainty penalty (mean - kappa sd), and how well each sd
tells out-of-distribution text from held-out responses.

    python experiments/overoptimisation.py [--quick] [--seeds 3] [--members 5] [--max-n 256] [--ppo-steps 120]

**Fits.** Every model is fitted on the same four fifths of simulated-text's training prompts
(``validation_split(train, 0.2, seed=0)``); the fifth held out is the validation set on which each
kappa and VRM's kind of uncertainty are chosen; the test prompts are used only for the curves.
Each kind (``rm``, ``twin``, ``vrm``) is fitted ``--members`` times, seeds 0 .. M-1. The
unpenalised model is the seed-0 fit. VRM with a Bayesian linear decoder (A, b latent; fixed priors,
the tempered preset, as a conditional prior takes no latent decoder) is fitted once, seed 0.

**Seeds.** Seed s repeats everything that is random, on the same data and split: the members
(seeds s M .. s M + M - 1, so that seed 0 is the run of one seed), the candidate pools
(``--sample-seed`` + 2 s, and + 2 s + 1 for validation), the OOD texts and PPO (its seed + s).
Every figure is the mean over seeds, with its standard error (``*_se``) and its ``*_per_seed``
values.

**Uncertainty.** ``rm+penalty`` and ``twin+penalty``: the ensemble of the M fits, each member
standardized by its rewards on the training responses, ranked by its mixture mean - kappa sd
(:mod:`pyro_vrm.ensemble`). For VRM three sds compete, each a variant of
its own: ``vrm+posterior-sd`` (the seed-0 fit's amortized posterior sd, aleatoric),
``vrm+bayesian-decoder`` and ``vrm+ensemble``; ``vrm+penalty`` is the one whose validation
best-of-16 gold is highest. ``rm+worst-case``, ``twin+worst-case`` and ``vrm+worst-case`` rank by
the lowest standardized member reward instead (Coste et al. 2023's worst-case optimisation,
:class:`pyro_vrm.WorstCase`), with no kappa. ``rm+last-layer`` ranks by mean - kappa sd of the
seed's first RM with a Bayesian last layer sampled by NUTS (:class:`pyro_vrm.BayesianLastLayer`):
epistemic uncertainty from one fit. Each kappa comes from ``--kappas`` by the same criterion (the smallest
on a tie); the test prompts play no part.

**Best-of-n.** As ``best_of_n.py``: a pool of ``--max-n`` fresh responses (filler on half) per test
prompt, the unbiased best-of-n estimator over all n-subsets, n = 1, 2, 4, ... ``--max-n``, gold
reward of the pick against KL_bon = log n - (n - 1)/n.

**PPO.** ``pyro-vrm ppo``'s tiny policy against each of the six models (the unpenalised three with
kappa 0, the penalised three with their kappa), at the default KL penalty and at ``--weak-beta``;
every ``--eval-every`` steps, fresh rollouts on held prompts give the gold reward, the proxy (the
model's mean reward) and the KL to the reference.

**Out of distribution.** For every model with an sd, the AUROC of the sd for telling filler-only,
truncated and other-family texts from held-out responses (:mod:`pyro_vrm.ood`).

**Output.** ``results.json``: ``{"best_of_n": {"n", "kl_bon", MODEL: {"gold", "gold_se",
"gold_per_seed", "filler_share"}}, "ppo": {"default" | "weak": {MODEL: {"step", "gold", "gold_se",
"proxy", "objective", "kl", "filler_rate", "final_gold", "peak_gold" (each with _se, _per_seed)}}},
"ood": {MODEL: {"auroc": {kind: ...}, "auroc_se": {...}, "mean_sd": {...}}}, "kappa": {MODEL: [one
per seed]}, "selection": seed 0's, "per_seed": [{"kappa", "selection"}]}``. With one seed,
``gold_se`` of a PPO curve is the se over its held rollouts; with several, over the seeds.
``overoptimisation.png``: gold reward against KL for all models, best-of-n and PPO.
"""

from __future__ import annotations

import copy
import json
import multiprocessing
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import torch
from common import apply_quick, curve, load, output_dir, parser, plt, quick_flag, show, write_results
from records import cell, standard_error

import best_of_n as bon
from pyro_vrm import (BackboneConfig, BayesianLastLayer, Ensemble, ModelConfig, PPOConfig, RewardModel, RunDir,
                      WorstCase, load_backbone, ood_aurocs, validation_split)
from pyro_vrm.policy import TinyPolicyConfig
from pyro_vrm.pipeline import ppo_prompts
from pyro_vrm.ppo_run import make_policy, run_ppo
from pyro_vrm.simulated_text import TextSimulationConfig, simulate_text

KINDS = ("rm", "twin", "vrm")
VRM_SDS = ("vrm+posterior-sd", "vrm+bayesian-decoder", "vrm+ensemble")
MODELS = (*KINDS, *(f"{kind}+penalty" for kind in KINDS), "rm+last-layer", *(f"{kind}+worst-case" for kind in KINDS))
# results.json's name for each figure of a PPO run's curve -> run_ppo's name for it
PPO_CURVE = {"step": "step", "gold": "gold", "gold_se": "gold_se", "proxy": "reward", "objective": "objective",
             "kl": "kl", "filler_rate": "filler_rate"}
QUICK = {"seeds": 2, "members": 3, "last_layer_draws": 200, "steps": 300, "prompts": 16, "max_n": 64,
         "val_prompts": 16, "val_pool": 16, "ppo_steps": 20, "eval_every": 10, "eval_rollouts": 32, "ood_texts": 64}


def arguments(argv):
    p = parser(__doc__.splitlines()[0], seeds=None, models=None)
    quick_flag(p, QUICK)
    p.add_argument("--seeds", type=int, default=3, help="repetitions of the whole experiment (see Seeds)")
    p.add_argument("--members", type=int, default=5, help="fits per ensemble (seeds s M .. s M + M - 1)")
    bon.candidate_flags(p, max_n=256)
    p.add_argument("--last-layer-draws", type=int, default=500,
                   help="NUTS draws per chain (2 chains) of the RM's Bayesian last layer; warm-up min(300, draws)")
    p.add_argument("--ppo-steps", type=int, default=120, help="PPO steps per run")
    p.add_argument("--beta", type=float, default=PPOConfig().beta, help="the default KL penalty")
    p.add_argument("--weak-beta", type=float, default=0.05, help="the weak KL penalty")
    p.add_argument("--eval-every", type=int, default=20, help="PPO steps between measurements of held rollouts")
    p.add_argument("--eval-rollouts", type=int, default=128, help="held rollouts per measurement")
    p.add_argument("--ood-texts", type=int, default=256, help="texts of each kind for the OOD AUROCs")
    p.add_argument("--ppo", default="", help="further PPOConfig fields, e.g. rollouts_per_step=8,max_new_tokens=20")
    p.add_argument("--policy", default="", help="further TinyPolicyConfig fields, e.g. warm_start_steps=50")
    p.add_argument("--no-ppo", action="store_true", help="best-of-n and OOD only")
    p.add_argument("--penalties", default="default,weak", help="the KL penalties PPO runs at: default, weak or both")
    p.add_argument("--ppo-models", default=",".join(MODELS), help="the models PPO trains against, from MODELS")
    p.add_argument("--workers", type=int, default=1, help="seeds run in this many processes, one thread each")
    p.add_argument("--replot", action="store_true", help="only redraw the figure from the results.json in --out")
    args = p.parse_args(argv)
    apply_quick(args, argv, QUICK)
    args.penalties = [x.strip() for x in args.penalties.split(",") if x.strip()]
    args.ppo_models = [x.strip() for x in args.ppo_models.split(",") if x.strip()]
    if not set(args.penalties) <= {"default", "weak"} or not set(args.ppo_models) <= set(MODELS):
        p.error(f"--penalties takes default and weak; --ppo-models takes {', '.join(MODELS)}")
    if args.data != "simulated-text":
        sys.exit("overoptimisation needs --data simulated-text (its gold reward is the simulator's)")
    return args


def fields(text: str) -> dict:
    """``a=1,b=2.5`` -> {"a": 1, "b": 2.5}."""
    return {k: type_of(v) for k, v in (item.split("=") for item in text.split(",") if item)}


def type_of(value: str):
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def fit_all(args, fit_part, held, out, first_seed: int = 0) -> dict:
    """name -> fitted model: the members of each kind (seeds ``first_seed`` ...), VRM's
    Bayesian-decoder fit, the ensembles and their worst cases, and the Bayesian last layer of the
    first RM (NUTS; its prior scale chosen on the validation pairs)."""
    splits, fits = {"train": fit_part, "test": held}, {}
    # the members are put on one scale by their rewards on the responses they were fitted to
    reference = (fit_part.prompt_state.repeat(2, 1), torch.cat([fit_part.chosen_state, fit_part.rejected_state]))
    for kind in KINDS:
        members = [curve(kind, splits, out / "fits" / f"{kind}-seed{s}", seed=s, steps=args.steps,
                         log_every=args.log_every)[1] for s in range(first_seed, first_seed + args.members)]
        fits[kind], fits[f"{kind}-ensemble"] = members[0], Ensemble(members).standardize(*reference)
        fits[f"{kind}-worst-case"] = WorstCase(fits[f"{kind}-ensemble"])
    fits["rm-last-layer"] = BayesianLastLayer(fits["rm"], fit_part, held)
    fits["rm-last-layer"].fit(args.last_layer_draws, min(300, args.last_layer_draws), seed=first_seed)
    fits["vrm-bayesian-decoder"] = curve("vrm-tempered", splits,
                                         out / "fits" / f"vrm-bayesian-decoder-seed{first_seed}", seed=first_seed,
                                         steps=args.steps, log_every=args.log_every,
                                         model_config=ModelConfig(bayesian_decoder=True, conditional_prior=False))[1]
    return fits


# each ranked variant: (the fit it scores with, whether it subtracts kappa * sd)
VARIANTS = {"rm": ("rm", False), "twin": ("twin", False), "vrm": ("vrm", False),
            "rm+penalty": ("rm-ensemble", True), "twin+penalty": ("twin-ensemble", True),
            "vrm+posterior-sd": ("vrm", True), "vrm+bayesian-decoder": ("vrm-bayesian-decoder", True),
            "vrm+ensemble": ("vrm-ensemble", True), "rm+last-layer": ("rm-last-layer", True),
            **{f"{kind}+worst-case": (f"{kind}-worst-case", False) for kind in KINDS}}


def choose(fits: dict, val: dict, kappas: list[float]) -> dict:
    """For each penalised variant, the kappa with the highest validation best-of-16 gold; and
    which of VRM's sds is ``vrm+penalty``."""
    n = min(bon.KAPPA_N, val["gold"].shape[1])
    chosen = {}
    for name, (fit, penalised) in VARIANTS.items():
        if not penalised:
            continue
        mean, sd = bon.scores(fits[fit], val)
        gold = {k: bon.best_of_n(mean - k * sd, val["gold"], n).mean().item() for k in kappas}
        best = max(kappas, key=lambda k: (gold[k], -k))
        chosen[name] = {"kappa": best, "validation_gold": gold[best], "by_kappa": {str(k): g for k, g in gold.items()}}
    winner = max(VRM_SDS, key=lambda v: chosen[v]["validation_gold"])
    chosen["vrm+penalty"] = {**chosen[winner], "uncertainty": winner}
    return chosen


def run_best_of_n(fits, chosen, cands, ns) -> dict:
    results = {"n": ns, "kl_bon": [bon.kl_bon(n) for n in ns],
               "oracle": bon.curves(cands["gold"], cands["gold"], cands["filler"], ns)}
    scored = {}  # fit -> (mean, sd), once: a Bayesian decoder's moments are Monte Carlo estimates
    for name, (fit, penalised) in VARIANTS.items():
        if fit not in scored:
            scored[fit] = bon.scores(fits[fit], cands)
        mean, sd = scored[fit]
        kappa = chosen[name]["kappa"] if penalised else 0.0
        results[name] = bon.curves(mean - kappa * sd, cands["gold"], cands["filler"], ns)
    results["vrm+penalty"] = results[chosen["vrm+penalty"]["uncertainty"]]
    return results


def fit_of(name: str, fits: dict, chosen: dict) -> tuple[object, float]:
    """(model, kappa) of one of :data:`MODELS`; the unpenalised ones have kappa 0."""
    variant = chosen[name]["uncertainty"] if name == "vrm+penalty" else name
    return fits[VARIANTS[variant][0]], chosen[name]["kappa"] if name in chosen else 0.0


def run_all_ppo(args, fits, chosen, backbone, out, offset: int = 0) -> dict:
    """Every model at both penalties, each run from one copy of the tiny policy, warm-started once;
    PPO's seed is its configured one + ``offset``."""
    policy_config = TinyPolicyConfig(**fields(args.policy))
    seed = PPOConfig(**fields(args.ppo)).seed + offset
    text = simulate_text(TextSimulationConfig(seed=seed)).to_dict()
    torch.set_num_threads(1)  # as pyro-vrm ppo does for the tiny policy, so that its warm start is the same
    model, tokenizer, _ = make_policy(None, text, [p for split in ppo_prompts(None, text, seed) for p in split],
                                      policy_config, seed)
    results = {}
    betas = {"default": args.beta, "weak": args.weak_beta}
    for penalty, beta in ((name, betas[name]) for name in args.penalties):
        results[penalty] = {}
        for name in args.ppo_models:
            reward, kappa = fit_of(name, fits, chosen)
            ppo_config = PPOConfig(**{"steps": args.ppo_steps, "beta": beta, "kappa": kappa,
                                      "eval_every": args.eval_every, "eval_rollouts": args.eval_rollouts,
                                      **fields(args.ppo), "seed": seed})
            summary = run_ppo(RewardModel(reward, backbone, {"kind": name}), RunDir(out / "ppo" / penalty / name),
                              ppo_config, policy_config, progress=False, config={"model": name, "penalty": penalty},
                              initial_policy=(copy.deepcopy(model), tokenizer))
            points = summary["curve"]
            results[penalty][name] = {**{key: [p[field] for p in points] for key, field in PPO_CURVE.items()},
                                      "kappa": kappa, "beta": beta, "examples_end": summary["examples_end"]}
            print(f"ppo {penalty:7s} {name:13s} gold {points[0]['gold']:+.3f} -> {points[-1]['gold']:+.3f}, "
                  f"KL {points[-1]['kl']:.2f}, filler {points[-1]['filler_rate']:.2f}", flush=True)
    return results


def run_ood(args, fits, backbone, prompts, seed: int) -> dict:
    """The OOD AUROCs of every variant that ranks with an sd."""
    return {name: ood_aurocs(RewardModel(fits[fit], backbone, {"kind": name}).score, prompts, args.ood_texts,
                             seed=seed)
            for name, (fit, penalised) in VARIANTS.items() if penalised}


def one_seed(args, seed: int, data: dict, backbone, out) -> dict:
    """Fits, kappas, best-of-n, OOD and PPO of seed ``seed`` (see Seeds)."""
    pairs = data["pairs"]
    weights, prompt_texts = bon.prompt_weights(pairs), list(dict.fromkeys(pairs["prompt"]))
    fit_part, held = validation_split(data["train"], 0.2, seed=0)
    fits = fit_all(args, fit_part, held, out, first_seed=seed * args.members)
    val_prompts = bon.subset([prompt_texts[i] for i in held.prompt_id.unique().tolist()], args.val_prompts, seed=0)
    test_prompts = bon.subset(list(dict.fromkeys(p for p, s in zip(pairs["prompt"], pairs["split"]) if s == "test")),
                              args.prompts, seed=0)
    sample_seed = args.sample_seed + 2 * seed
    val = bon.candidates(val_prompts, weights, args.val_pool, 0.5, sample_seed + 1, backbone)
    chosen = choose(fits, val, args.kappas)
    ns = [2**k for k in range(args.max_n.bit_length())]
    cands = bon.candidates(test_prompts, weights, args.max_n, 0.5, sample_seed, backbone)
    run = {"prompts": len(test_prompts), "kappa": {name: c["kappa"] for name, c in chosen.items()}, "selection": chosen,
           "best_of_n": run_best_of_n(fits, chosen, cands, ns), "ood": run_ood(args, fits, backbone, test_prompts,
                                                                               sample_seed)}
    if not args.no_ppo:
        run["ppo"] = run_all_ppo(args, fits, chosen, backbone, out, offset=seed)
    print(f"seed {seed} done", flush=True)
    return run


def seed_job(args, seed: int) -> dict:
    """:func:`one_seed` in a process of its own (``--workers``), on one thread."""
    torch.set_num_threads(1)
    out = output_dir(args, "overoptimisation")
    backbone = load_backbone(BackboneConfig(backbone=args.backbone, max_length=args.max_length))
    return one_seed(args, seed, load(args), backbone, out / f"seed{seed}" if seed else out)


def _mean_se(values: list[float], key: str) -> dict:
    """{key: mean, key_se: se, key_per_seed: values}."""
    return {key: statistics.mean(values), f"{key}_se": standard_error(values), f"{key}_per_seed": values}


def aggregate(runs: list[dict]) -> dict:
    """The seeds' results as one: each curve the mean over seeds, with its se and per-seed values."""
    first = runs[0]
    bo = {"n": first["best_of_n"]["n"], "kl_bon": first["best_of_n"]["kl_bon"]}
    for name in first["best_of_n"]:
        if name in bo:
            continue
        per_seed = [r["best_of_n"][name]["gold"] for r in runs]
        filler = zip(*(r["best_of_n"][name]["filler_share"] for r in runs))
        bo[name] = {"gold": [statistics.mean(v) for v in zip(*per_seed)],
                    "gold_se": [standard_error(v) for v in zip(*per_seed)], "gold_per_seed": per_seed,
                    "filler_share": [statistics.mean(v) for v in filler]}
    ood = {}
    for name, first_ood in first["ood"].items():
        aurocs = {kind: [r["ood"][name]["auroc"][kind] for r in runs] for kind in first_ood["auroc"]}
        ood[name] = {"auroc": {k: statistics.mean(v) for k, v in aurocs.items()},
                     "auroc_se": {k: standard_error(v) for k, v in aurocs.items()},
                     "mean_sd": {k: statistics.mean(r["ood"][name]["mean_sd"][k] for r in runs)
                                 for k in first_ood["mean_sd"]}}
    out = {"kappa": {name: [r["kappa"][name] for r in runs] for name in first["kappa"]},
           "selection": first["selection"],
           "per_seed": [{"kappa": r["kappa"], "selection": r["selection"]} for r in runs],
           "best_of_n": bo, "ood": ood}
    if "ppo" in first:
        out["ppo"] = {penalty: {name: _ppo_curve([r["ppo"][penalty][name] for r in runs]) for name in curves}
                      for penalty, curves in first["ppo"].items()}
    return out


def _ppo_curve(curves: list[dict]) -> dict:
    """One model's PPO curve over seeds: the mean of each figure by step, the final and peak gold."""
    first = curves[0]
    out = {key: [statistics.mean(v) for v in zip(*(c[key] for c in curves))] for key in PPO_CURVE}
    by_step = zip(*(c["gold"] for c in curves))
    out["gold_se"] = first["gold_se"] if len(curves) == 1 else [standard_error(v) for v in by_step]
    out["gold_per_seed"] = [c["gold"] for c in curves]
    out.update(_mean_se([c["gold"][-1] for c in curves], "final_gold"))
    out.update(_mean_se([max(c["gold"]) for c in curves], "peak_gold"))
    return {**out, "kappa": [c["kappa"] for c in curves], "beta": first["beta"], "examples_end": first["examples_end"]}


def plot(results: dict, path) -> None:
    """Top: gold reward against KL (best-of-n, then PPO at each penalty). Below the PPO panels: the
    same gold reward against the training step, since PPO's KL on fresh rollouts need not grow."""
    penalties = list(results.get("ppo", {}))
    fig, axes = plt.subplots(2 if penalties else 1, 1 + len(penalties), figsize=(5 * (1 + len(penalties)), 7.6 if penalties else 4),
                             squeeze=False)
    r = results["best_of_n"]
    for name in [*MODELS, "oracle"]:
        style = {"color": "black", "linestyle": "--"} if name == "oracle" else {}
        se = r[name].get("gold_se")
        axes[0][0].errorbar(r["kl_bon"], r[name]["gold"], yerr=None if not se or se[0] is None else se, capsize=2,
                            marker="o", markersize=3, label=name, **style)
    axes[0][0].set(xlabel="KL_bon (nats)", ylabel="gold reward", title="best-of-n, n = 1 ... " + str(r["n"][-1]))
    axes[0][0].legend(fontsize=7)
    for column, penalty in enumerate(penalties, 1):
        p = results["ppo"][penalty]
        title = f"PPO, {penalty} KL penalty (beta {next(iter(p.values()))['beta']:g})"
        for name in p:
            axes[0][column].plot(p[name]["kl"], p[name]["gold"], marker="o", markersize=3, label=name)
            axes[1][column].errorbar(p[name]["step"], p[name]["gold"], yerr=p[name]["gold_se"], marker="o",
                                     markersize=3, capsize=2, label=name)
        axes[0][column].set(xlabel="KL to the reference on held rollouts (nats)", ylabel="gold reward", title=title)
        axes[1][column].set(xlabel="PPO step", ylabel="gold reward (± se)", title=title)
    if penalties:
        axes[1][0].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(results: dict) -> None:
    """Print the curves' table and the OOD table, and keep both in ``results``."""
    r, rows = results["best_of_n"], []
    table_n = [n for n in (1, 4, 16, 64, 256) if n in r["n"]]
    for name in MODELS:
        kappas = "/".join(f"{k:g}" for k in results["kappa"].get(name, [0.0]))
        row = [name, kappas, *(cell(r[name]["gold"][r["n"].index(n)], r[name]["gold_se"][r["n"].index(n)])
                               for n in table_n)]
        for penalty in results.get("ppo", {}):
            p = results["ppo"][penalty].get(name)
            if p is None:
                row.append("-")
                continue
            row.append(f"{p['gold'][0]:.2f} / {cell(p['peak_gold'], p['peak_gold_se'], 2)} / "
                       f"{cell(p['final_gold'], p['final_gold_se'], 2)} (KL {p['kl'][-1]:.1f}, "
                       f"proxy {p['proxy'][-1] - p['proxy'][0]:+.2g})")
        rows.append(row)
    show(results, ["model", "kappa (per seed)", *(f"best-of-{n} gold" for n in table_n),
                   *(f"PPO {p} penalty: gold start / peak / end" for p in results.get("ppo", {}))], rows)
    print()
    kinds = list(next(iter(results["ood"].values()))["auroc"])
    rows = [[name + (" (chosen: vrm+penalty)" if name == results["selection"]["vrm+penalty"]["uncertainty"] else ""),
             *(cell(ood["auroc"][k], ood["auroc_se"][k]) for k in kinds),
             f"{ood['mean_sd']['in_distribution']:.3g}"] for name, ood in results["ood"].items()]
    show(results, ["model (its sd)", *(f"AUROC {k.replace('_', '-')}" for k in kinds), "mean sd in distribution"],
         rows, key="ood_table")


def main(argv=None) -> dict:
    started = time.time()
    args = arguments(argv)
    if args.replot:
        out = output_dir(args, "overoptimisation")
        results = json.loads((out / "results.json").read_text())
        plot(results, out / "overoptimisation.png")
        return results
    out, data = output_dir(args, "overoptimisation"), load(args)  # load() caches the features the workers read
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            runs = list(pool.map(seed_job, [args] * args.seeds, range(args.seeds)))
    else:
        backbone = load_backbone(BackboneConfig(backbone=args.backbone, max_length=args.max_length))
        runs = [one_seed(args, seed, data, backbone, out / f"seed{seed}" if seed else out)
                for seed in range(args.seeds)]
    print(f"{args.seeds} seeds done after {time.time() - started:.0f} s", flush=True)
    results = {"data": args.data, "seeds": args.seeds, "members": args.members, "prompts": runs[0]["prompts"],
               "pool": args.max_n, **aggregate(runs), "seconds": round(time.time() - started)}
    plot(results, out / "overoptimisation.png")
    report(results)
    write_results(out, results)
    return results


if __name__ == "__main__":
    main()
