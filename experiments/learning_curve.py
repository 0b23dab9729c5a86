r"""Learning curves: test accuracy, log loss, ECE, shifted accuracy and w recovery of VRM and its
controls against the number of training pairs, where shrinkage toward a prior should beat maximum
likelihood if it ever does.

    python experiments/learning_curve.py [--quick] [--data simulated-text,simulated]
                                         [--sizes 50,100,200,500,1000,all] [--seeds 5] [--members 3]

The defaults took about 50 minutes on 2 cores (two worker processes) and ``--quick`` (3 seeds, up
to 200 pairs, 300 steps) about 8, while another experiment shared the cores and VRM was the
tempered preset, one fit per run; today's default VRM fits once more after five validation fits.

**Data.** ``simulated-text`` (MiniLM features; its shifted split is the filler-hack test) and
``simulated`` (the hidden-state simulator of ``pyro-vrm train --data simulated``). Every model is
tested on the whole test split; the training pairs are the first n of a permutation of the training
split drawn from the seed, so that within a seed each training set holds the smaller ones.

**Models.** ``vrm`` (the package default, ``--preset recommended``), ``vrm-informative`` (the same
objective under an informative prior: the Dirichlet whose mean and variance match the true objective
weights of a disjoint simulated population, seed 1, see :func:`population_concentration`), ``twin``,
``rm``, ``rm-tuned``, and ``rm-ensemble`` / ``vrm-ensemble`` (``--members`` fits of different seeds
on the same pairs; P(chosen wins) is the mean of the members'). Seed s fits model seed s; member m
of an ensemble has seed s + 1000 m, so member 0 is the single fit.

**Comparisons.** For each claim (VRM against the twin, the RM and the tuned RM; the informative prior
against the default one) and each n: the mean over seeds of the paired difference in test log loss
and in accuracy, with its standard error; "better" or "worse" only beyond 2 se, "within noise"
otherwise.

**Output.** ``results.json``: ``{"results": {DATA: {MODEL: {"n", "accuracy", "accuracy_se",
"log_loss", "log_loss_se", "ece", "ece_se", ... "per_seed": {metric: [[seed values] per n]}}}},
"comparisons": [...], "priors": {DATA: alpha}}``; ``learning_curve.png``.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from common import apply_quick, configs, load, output_dir, plt, quick_flag, show, write_results
from records import cell, paired_difference, standard_error

from pyro_vrm import (Priors, SimulationConfig, evaluate_predictions, fit_reward_model, fit_tuned_reward_model,
                      fit_twin, fit_vrm, pearson, predict, simulate, weight_means)
from pyro_vrm.evaluate import Predictions
from pyro_vrm.simulated_text import TextSimulationConfig, simulate_text

MODELS = ("vrm", "vrm-informative", "twin", "rm", "rm-tuned", "rm-ensemble", "vrm-ensemble")
LABELS = {"vrm": "VRM", "vrm-informative": "VRM, informative prior", "twin": "twin", "rm": "RM",
          "rm-tuned": "RM, tuned weight decay", "rm-ensemble": "RM ensemble", "vrm-ensemble": "VRM ensemble"}
METRICS = ("accuracy", "log_loss", "ece", "shifted_accuracy", "w_recovery")
# (claim, model, against): "better" means a lower log loss than `against` by more than 2 se
CLAIMS = (("VRM beats the twin", "vrm", "twin"), ("VRM beats the RM", "vrm", "rm"),
          ("VRM beats the tuned RM", "vrm", "rm-tuned"), ("the prior matters", "vrm-informative", "vrm"),
          ("the informative prior beats the twin", "vrm-informative", "twin"),
          ("the informative prior beats the RM", "vrm-informative", "rm"),
          ("the VRM ensemble beats the RM ensemble", "vrm-ensemble", "rm-ensemble"))
QUICK = {"sizes": "50,100,200", "seeds": 3, "steps": 300, "members": 2}
POPULATION_SEED = 1  # the simulator seed of the disjoint population behind the informative prior


def arguments(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    quick_flag(p, QUICK)
    p.add_argument("--data", default="simulated-text,simulated", help="comma-separated: simulated-text, simulated")
    p.add_argument("--sizes", default="50,100,200,500,1000,all", help="training pairs per fit; all: the whole split")
    p.add_argument("--seeds", type=int, default=5, help="seeds 0 .. N-1 (subset and fit)")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    p.add_argument("--members", type=int, default=3, help="fits per ensemble")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--workers", type=int, default=2, help="fits run in this many processes, one thread each")
    p.add_argument("--backbone", default="minilm")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None, help="output folder (default experiments/out/learning_curve)")
    args = p.parse_args(argv)
    apply_quick(args, argv, QUICK)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        p.error(f"--models: unknown {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    if any(d not in ("simulated-text", "simulated") for d in args.data.split(",")):
        p.error("--data takes simulated-text and simulated: the informative prior needs the simulator's population")
    return args


def population_concentration(weights: torch.Tensor) -> tuple[float, ...]:
    """The Dirichlet concentration whose mean and pooled variance match draws of w (N, K).

    With m = E[w] and V = sum_k Var(w_k), a Dirichlet(s m) has V = (1 - sum_k m_k^2) / (s + 1),
    so s = (1 - sum_k m_k^2) / V - 1 (Minka's moment estimate, pooled over the objectives).

    Examples:
        >>> w = torch.distributions.Dirichlet(torch.tensor([2.0, 6.0])).sample((20000,))
        >>> [round(a) for a in population_concentration(w)]
        [2, 6]
    """
    mean, variance = weights.mean(0), weights.var(0).sum()
    precision = (1 - mean.pow(2).sum()) / variance - 1
    return tuple(float(a) for a in precision * mean)


def population_weights(data: str) -> torch.Tensor:
    """True objective weights (prompts, K) of a simulated population disjoint from the data's."""
    if data == "simulated":
        truth = simulate(SimulationConfig(seed=POPULATION_SEED)).truth
        weights = torch.cat([truth[split]["objective_weights"] for split in ("train", "test")])
    else:
        weights = torch.tensor(simulate_text(TextSimulationConfig(seed=POPULATION_SEED))["weights"])
    return torch.unique(weights, dim=0)  # one row per prompt


@functools.lru_cache(maxsize=None)
def dataset(data: str, backbone: str, max_length: int, cache_dir: Path | None) -> dict:
    """{"train", "test", maybe "shifted", "truth"} of a data set, once per process."""
    if data == "simulated":
        sim = simulate(SimulationConfig(seed=0))
        return {"train": sim.train, "test": sim.test, "truth": sim.truth}
    return load(argparse.Namespace(data=data, backbone=backbone, max_length=max_length, cache_dir=cache_dir))


def fit(name: str, train, seed: int, steps: int, priors: Priors):
    """One fit of ``name`` (vrm, twin, rm, rm-tuned; vrm-informative is vrm under ``priors``)."""
    kind, priors = ("vrm", priors) if name == "vrm-informative" else (name, Priors())
    model_config, train_config = configs(kind, seed=seed, steps=steps, log_every=max(1, steps // 10))
    quiet = {"progress": False}
    if kind == "vrm":
        return fit_vrm(train, model_config, train_config, priors, **quiet)[0]
    if kind == "twin":
        return fit_twin(train, model_config, train_config, **quiet)[0]
    if kind == "rm-tuned":
        return fit_tuned_reward_model(train, model_config, train_config, **quiet)[0]
    return fit_reward_model(train, model_config, train_config, **quiet)


def measure(predictions: list[Predictions], shifted: list[Predictions] | None, weights: list | None,
            truth: dict) -> dict:
    """The metrics of one fit, or of an ensemble whose members' predictions are listed: its
    P(chosen wins) and rewards are the members' means."""
    def mean(members: list[Predictions]) -> Predictions:
        return Predictions(*(torch.stack([getattr(p, f) for p in members]).mean(0)
                             for f in ("mean_chosen", "mean_rejected", "prob_chosen", "confidence")))

    ev = evaluate_predictions(mean(predictions))
    out = {"accuracy": ev["accuracy"]["accuracy"], "log_loss": ev["calibration"]["log_loss"],
           "ece": ev["calibration"]["ece"]}
    if shifted is not None:
        out["shifted_accuracy"] = mean(shifted).correct.mean().item()
    if weights is not None and weights[0] is not None:
        out["w_recovery"] = pearson(torch.stack(weights).mean(0), truth["test"]["objective_weights"])
    return out


def job(data: str, size: str, seed: int, args: argparse.Namespace, priors: Priors) -> dict:
    """Every model's metrics on the first ``size`` training pairs of seed ``seed``'s permutation."""
    torch.set_num_threads(1)
    d = dataset(data, args.backbone, args.max_length, args.cache_dir)
    order = torch.randperm(len(d["train"]), generator=torch.Generator().manual_seed(seed))
    n = len(d["train"]) if size == "all" else min(int(size), len(d["train"]))
    train = d["train"].select(order[:n])
    members: dict[str, list] = {}  # kind -> [(predictions, shifted predictions, E[w])] per member

    def member(kind: str, m: int) -> tuple:
        while len(members.setdefault(kind, [])) <= m:
            model = fit(kind, train, seed + 1000 * len(members[kind]), args.steps, priors)
            members[kind].append((predict(model, d["test"]),
                                  predict(model, d["shifted"]) if "shifted" in d else None,
                                  weight_means(model, d["test"])))
        return members[kind][m]

    out = {"n": n}
    for name in args.models:
        kind, count = (name.removesuffix("-ensemble"), args.members) if name.endswith("-ensemble") else (name, 1)
        fits = [member(kind, m) for m in range(count)]
        out[name] = measure([f[0] for f in fits], None if fits[0][1] is None else [f[1] for f in fits],
                            [f[2] for f in fits], d["truth"])
    return out


def summarize(runs: dict[str, list[dict]], models: list[str]) -> dict:
    """{MODEL: {"n", METRIC, METRIC_se, "per_seed"}} from each size's per-seed job results."""
    out = {}
    for name in models:
        entry = {"n": [seeds[0]["n"] for seeds in runs.values()], "per_seed": {}}
        for metric in METRICS:
            if metric not in next(iter(runs.values()))[0][name]:
                continue
            per_seed = [[s[name][metric] for s in seeds] for seeds in runs.values()]
            entry["per_seed"][metric] = per_seed
            entry[metric] = [statistics.mean(v) for v in per_seed]
            entry[f"{metric}_se"] = [standard_error(v) for v in per_seed]
        out[name] = entry
    return out


def compare(summary: dict, model: str, against: str) -> list[dict]:
    """Per size: the paired differences model - against over seeds in log loss and accuracy, and
    the verdict on log loss (:func:`records.paired_difference`)."""
    rows = []
    for i, n in enumerate(summary[model]["n"]):
        seeds = {metric: (summary[model]["per_seed"][metric][i], summary[against]["per_seed"][metric][i])
                 for metric in ("log_loss", "accuracy")}
        row = {"n": n, "log_loss": paired_difference(*seeds["log_loss"], lower_is_better=True),
               "accuracy": paired_difference(*seeds["accuracy"], lower_is_better=False)}
        rows.append({**row, "verdict": row["log_loss"]["verdict"]})
    return rows


def plot(results: dict, path: Path) -> None:
    panels = [(data, metric) for data in results for metric in ("accuracy", "log_loss", "shifted_accuracy")
              if any(metric in m for m in results[data].values())]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (data, metric) in zip(axes[0], panels):
        for name, entry in results[data].items():
            if metric in entry:
                error = [2 * (se or 0) for se in entry[f"{metric}_se"]]
                ax.errorbar(entry["n"], entry[metric], yerr=error, label=LABELS[name], capsize=2, marker="o",
                            markersize=3)
        ax.set(xscale="log", xlabel="training pairs", title=f"{data}: {metric} (± 2 se)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> dict:
    args = arguments(argv)
    out = output_dir(args, "learning_curve")
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    results = {"args": {k: str(v) for k, v in vars(args).items()}, "results": {}, "priors": {}, "comparisons": []}
    rows, verdicts = [], []
    for data in args.data.split(","):
        priors = Priors(concentration=population_concentration(population_weights(data)))
        results["priors"][data] = list(priors.concentration)
        tasks = [(data, size, seed) for size in sizes for seed in range(args.seeds)]
        if args.workers > 1:
            with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                done = list(pool.map(job, *zip(*tasks), [args] * len(tasks), [priors] * len(tasks)))
        else:
            done = [job(*task, args, priors) for task in tasks]
        runs = {size: [r for (_, s, _), r in zip(tasks, done) if s == size] for size in sizes}
        summary = results["results"][data] = summarize(runs, args.models)
        for name, entry in summary.items():
            for i, n in enumerate(entry["n"]):
                rows.append([data, LABELS[name], n, *(cell(entry[m][i], entry[f"{m}_se"][i]) if m in entry else "-"
                                                      for m in METRICS)])
        for claim, model, against in CLAIMS:
            if model in args.models and against in args.models:
                sizes_compared = compare(summary, model, against)
                results["comparisons"].append({"claim": claim, "data": data, "model": model, "against": against,
                                               "sizes": sizes_compared})
                verdicts += [[data, claim, c["n"], *(cell(c[m]["difference"], c[m]["se"], sign=True)
                                                     for m in ("log_loss", "accuracy")), c["verdict"]]
                             for c in sizes_compared]
        write_results(out, results)  # after each data set, so that a long run keeps what it has
    show(results, ["data", "model", "training pairs", *(f"{m.replace('_', ' ')} (± se)" for m in METRICS)], rows)
    print()
    show(results, ["data", "claim", "training pairs", "log loss difference (± se)", "accuracy difference (± se)",
                   "verdict (log loss, 2 se)"], verdicts, key="verdict_table")
    print(f"\n{args.seeds} seeds; mean ± standard error over seeds; differences are paired by seed")
    plot(results["results"], out / "learning_curve.png")
    write_results(out, results)
    return results


if __name__ == "__main__":
    main()
