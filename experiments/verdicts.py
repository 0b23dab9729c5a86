"""The verdict tables the report renders (keys ``verdict``, README's claims, and ``verdict-all``):
each claim of the learning curves judged on paired differences over seeds, metric by metric, then
the best-of-n and PPO gold gains of the overoptimisation run."""

from __future__ import annotations

import json
from pathlib import Path

from records import cell, paired_difference, table


def _at_64(best_of_n: dict) -> tuple[int, int]:
    """(n, its index) of the best-of-n curve point the findings read: n = 64, else the largest n."""
    n = 64 if 64 in best_of_n["n"] else best_of_n["n"][-1]
    return n, best_of_n["n"].index(n)


def _sizes_verdict(sizes: list[dict]) -> str:
    """'better at n = 50, 100; within noise at n = 200' from per-size verdicts."""
    groups: dict[str, list[str]] = {}
    for size in sizes:
        groups.setdefault(size["verdict"], []).append(str(size["n"]))
    if len(groups) == 1:
        return f"{next(iter(groups))} at every n"
    return "; ".join(f"{v} at n = {', '.join(ns)}" for v, ns in groups.items())


# the learning curves' metrics a verdict reads, each with whether lower is better
VERDICT_METRICS = {"log_loss": True, "accuracy": False, "shifted_accuracy": False, "w_recovery": False}


def _claim_cells(curves: dict, model: str, against: str, at: int = 100) -> list[str]:
    """Per metric of :data:`VERDICT_METRICS`: the paired difference model - against at n = ``at``
    (or the smallest n) with its se, and the verdict at every n; '-' where either lacks it."""
    cells = []
    for metric, lower_is_better in VERDICT_METRICS.items():
        seeds = [curves[m]["per_seed"].get(metric) for m in (model, against)]
        if not all(seeds):
            cells.append("-")
            continue
        sizes = [{"n": n, **paired_difference(a, b, lower_is_better)} for n, a, b in zip(curves[model]["n"], *seeds)]
        shown = next((size for size in sizes if size["n"] == at), sizes[0])
        cells.append(f"{cell(shown['difference'], shown['se'], sign=True)}; {_sizes_verdict(sizes)}")
    return cells


# (claim, ranking, against it, what the difference is): best-of-n gold gains the verdict reads
GOLD_CLAIMS = (("the posterior sd helps", "vrm+posterior-sd", "vrm",
                "VRM ranked by mean - kappa sd with its posterior sd, minus VRM by its mean"),
               ("VRM's penalised ranking beats the twin's", "vrm+penalty", "twin+penalty",
                "VRM by mean - kappa sd with its chosen sd, minus the twin by its ensemble's"))


def _gold_gain(record: dict, model: str, against: str) -> tuple[int, str, str]:
    """(n, the difference in best-of-n gold at n = 64 or the largest n, paired by seed where there
    are several, and its verdict)."""
    bon = record["best_of_n"]
    n, i = _at_64(bon)
    seeds = [bon[m].get("gold_per_seed") for m in (model, against)]
    per_seed = [[g[i] for g in s] for s in seeds] if all(seeds) else None
    return n, *_gain(per_seed, bon[model]["gold"][i] - bon[against]["gold"][i])


def _gain(per_seed: list[list[float]] | None, difference: float) -> tuple[str, str]:
    """(the gain of a higher-is-better figure, paired by seed where ``per_seed`` (model, against)
    has several seeds, else ``difference`` alone; its verdict)."""
    if not per_seed or len(per_seed[0]) < 2:
        return f"{difference:+.3f} (one seed, no se)", "not measured with error bars"
    gain = paired_difference(*per_seed, lower_is_better=False)
    return f"{cell(gain['difference'], gain['se'], sign=True)} ({len(per_seed[0])} seeds)", gain["verdict"]


# (claim, model, against): PPO's final gold reward on held rollouts at each KL penalty
PPO_CLAIMS = (("VRM beats the twin", "vrm", "twin"), ("VRM beats the RM", "vrm", "rm"),
              ("VRM's penalised ranking beats the twin's", "vrm+penalty", "twin+penalty"))


def _ppo_gain(curves: dict, model: str, against: str) -> tuple[str, str]:
    """(the difference in PPO's final gold, paired by seed where there are several, its verdict)."""
    seeds = [curves[m].get("final_gold_per_seed") for m in (model, against)]
    return _gain(seeds if all(seeds) else None, curves[model]["gold"][-1] - curves[against]["gold"][-1])


# the learning curves' claims the README's verdict table shows (docs/results.md shows them all)
README_CLAIMS = ("VRM beats the twin", "VRM beats the RM", "the prior matters")


def verdict(results: Path, claims: tuple[str, ...] | None = None) -> str:
    """The verdict tables: for each claim of the learning curves (those in ``claims``; None: all),
    the paired differences over seeds in each metric, at n = 100 and at every n; then the
    posterior sd's best-of-n gain."""
    parts, sources = [], []
    path = results / "learning_curve.json"
    if path.exists():
        record = json.loads(path.read_text())
        sources.append(record)
        rows = [[c["claim"], c["data"], f"{c['model']} - {c['against']}",
                 *_claim_cells(record["results"][c["data"]], c["model"], c["against"])]
                for c in record["comparisons"] if claims is None or c["claim"] in claims]
        parts += [table(["claim", "data", "difference", *(f"{m.replace('_', ' ')}: at n = 100 (± se); beyond 2 se"
                                                           for m in VERDICT_METRICS)], rows), ""]
    path = results / "overoptimisation.json"
    if path.exists():
        record = json.loads(path.read_text())
        sources.append(record)
        rows = []
        for claim, model, against, what in GOLD_CLAIMS:
            n, difference, said = _gold_gain(record, model, against)
            rows.append([claim, f"best-of-{n} gold, {what}", difference, said])
        for penalty, curves in record.get("ppo", {}).items():
            rows += [[claim, f"PPO's final gold at the {penalty} KL penalty, {model} minus {against}",
                      *_ppo_gain(curves, model, against)]
                     for claim, model, against in PPO_CLAIMS if model in curves and against in curves]
        parts += [table(["claim", "evidence", "difference", "verdict (beyond 2 se)"], rows), ""]
    if not parts:
        return "(not run yet: python experiments/learning_curve.py)"
    return "\n".join([*parts, "From " + "; ".join(f"`{r['run']['command']}` (run {r['run']['date']}, commit "
                                                  f"`{r['run']['commit']}`)" for r in sources) + "."])
