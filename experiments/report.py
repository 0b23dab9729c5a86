"""Write the results into the docs from the ``results.json`` files that the experiment and
benchmark scripts wrote, so that no figure in the docs is typed by hand.

    python experiments/report.py            # collect experiments/out/*, then render every page
    python experiments/report.py --check    # render from the collected files; fail if a page differs
    python experiments/report.py --no-collect   # render from the collected files

Collecting copies each script's ``experiments/out/<script>/results.json`` (and its plot) into
``docs/results/`` (committed, so that a clone re-renders the pages without re-running anything).
Rendering replaces every block of README.md and docs/*.md marked

    <!-- report:KEY -->
    ...
    <!-- /report:KEY -->

with KEY's rendering: the table the script printed, the command, date, commit and machine of the
run, and for the comparisons, sentences computed from the figures. A page edited by hand inside
a block is a defect that ``--check`` (and the test suite) reports.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from records import cell, table
from verdicts import README_CLAIMS, _at_64, verdict

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- report:(?P<key>[\w-]+) -->\n)(?P<body>.*?)(<!-- /report:(?P=key) -->)", re.S)
# script -> the plot it draws, copied beside its results
PLOTS = {"fig3_supervision_loss": "fig3.png", "fig4_vrm_vs_rm": "fig4.png", "fig5_lambda": "fig5.png",
         "best_of_n": "best_of_n.png", "overoptimisation": "overoptimisation.png", "sbc": "sbc.png",
         "learning_curve": "learning_curve.png"}
BENCHMARK_SETS = ("cpu", "gpu")


def collect(out: Path, results: Path) -> list[str]:
    """Copy every script's results (and plot) from ``out`` into ``results``; the names copied."""
    results.mkdir(parents=True, exist_ok=True)
    copied = []
    for path in sorted(out.glob("*/results.json")):
        name = path.parent.name
        shutil.copyfile(path, results / f"{name}.json")
        if name in PLOTS and (path.parent / PLOTS[name]).exists():
            shutil.copyfile(path.parent / PLOTS[name], results / PLOTS[name])
        copied.append(name)
    for kind in BENCHMARK_SETS:
        path = out / "benchmarks" / f"results-{kind}.json"
        if path.exists():
            shutil.copyfile(path, results / f"benchmarks-{kind}.json")
            copied.append(f"benchmarks-{kind}")
    return copied


# The tempered preset's label in the tables (experiments/common.py's LABELS["vrm-tempered"]).
TEMPERED = "VRM, KL weight 0.01"


def vrm_is_tempered(record: dict) -> bool:
    """Whether the record's ``VRM`` is the tempered preset: a run made while it was the package
    default (records.default_vrm says what the default was; older records do not)."""
    return not record["run"].get("defaults", {}).get("conditional_prior", False)


def vrm_note(record: dict) -> list[str]:
    """A sentence under a record whose ``VRM`` (a row of its table names it) is not today's
    default, else nothing."""
    labels = [c for row in record.get("table", {}).get("rows", []) for c in row[:2] if isinstance(c, str)]
    if not vrm_is_tempered(record) or not any(re.match(r"(VRM|vrm)\b", c) for c in labels):
        return []
    return ["", "This run predates the recommended preset as the package default: its VRM is the tempered "
                "preset (fixed priors, KL weight 0.01), the default when it ran. Rerun the command to compare "
                "today's default."]


def provenance(record: dict) -> str:
    run = record["run"]
    packages = "".join(f"{name} {version}, " for name, version in run.get("packages", {}).items())
    return (f"`{run['command']}` (run {run['date']}, commit `{run['commit']}`, {run['machine']}, "
            f"torch {run['torch']}, {packages}{run['threads']} thread{'s' * (run['threads'] != 1)})")


def printed(record: dict, plot: str | None = None) -> str:
    """The table the script printed, its provenance, and its plot."""
    parts = [table(record["table"]["header"], record["table"]["rows"]), "", provenance(record), *vrm_note(record)]
    if plot:
        parts += ["", f"![{plot}](results/{plot})"]
    return "\n".join(parts)


def _value(cell: str) -> float:
    """The leading number of a printed cell such as '0.742 ± 0.004'."""
    return float(cell.split()[0])


def _column(record: dict, name: str) -> dict[str, float]:
    """{row label: the leading number of column ``name``} of a printed table."""
    index = record["table"]["header"].index(name)
    return {row[0]: _value(row[index]) for row in record["table"]["rows"] if row[index] not in ("-", "")}


def hacking_sentence(record: dict) -> str:
    """What the reward-hacking table says about the paper's claim, computed from its figures."""
    shifted, test = _column(record, "shifted accuracy"), _column(record, "test accuracy")
    if not {"VRM", "RM", "twin"} <= set(shifted):
        return ""
    sentence = (
        f"On the shifted split, where the planted filler marks the loser, VRM's accuracy is "
        f"{shifted['VRM'] - shifted['RM']:+.3f} from the RM's and {shifted['VRM'] - shifted['twin']:+.3f} from the "
        f"deterministic twin's; in distribution, {test['VRM'] - test['RM']:+.3f} and {test['VRM'] - test['twin']:+.3f}. "
        + ("The paper's claim that VRM resists the spurious feature holds against the RM here, "
           if shifted["VRM"] > shifted["RM"] else "The paper's claim that VRM resists the spurious feature fails here, ")
        + ("and the twin, with the same structure and no posterior, resists it as well."
           if shifted["twin"] >= shifted["VRM"] - 0.02 else "and beyond what the twin's structure alone gives."))
    paper = "VRM, paper's objective"
    if paper in shifted:
        sentence += f" Under the paper's objective VRM's shifted accuracy is {shifted[paper]:.3f}."
    return sentence


def reward_hacking(record: dict) -> str:
    return "\n".join([printed(record), "", hacking_sentence(record)])


def best_of_n(record: dict) -> str:
    header = record["table"]["header"]
    column = next(h for h in header if h.startswith("gold n=16")) if "gold n=16" in header else header[-2]
    gold = _column(record, column)
    lines = [printed(record, PLOTS["best_of_n"]), ""]
    if {"VRM", "RM"} <= set(gold):
        twin = f", the twin's {gold['twin']:.3f}" if "twin" in gold else ""
        lines.append(f"At {column.replace('gold ', '')}, the mean gold reward of VRM's picks is {gold['VRM']:.3f} against the "
                     f"RM's {gold['RM']:.3f}{twin} (the oracle's: {gold.get('oracle (gold reward)', float('nan')):.3f}).")
    return "\n".join(lines)


def overoptimisation_findings(record: dict) -> list[str]:
    """Sentences on the two criteria (best-of-64 gold; final PPO gold at the weak KL penalty),
    on the worst-case rewards, on where each gold reward peaks, and on the OOD AUROCs, computed
    from the figures; with several seeds, each figure with its standard error."""
    bon = record["best_of_n"]
    n, i = _at_64(bon)
    gold = {m: bon[m]["gold"][i] for m in bon if m not in ("n", "kl_bon")}
    se = {m: (bon[m].get("gold_se") or [None] * len(bon["n"]))[i] for m in gold}

    def gold_cell(m: str) -> str:
        return cell(gold[m], se[m])

    per_seed = record.get("per_seed", [{"selection": record["selection"]}])
    choices = [s["selection"]["vrm+penalty"] for s in per_seed]
    chosen = "; ".join(f"{c['uncertainty']}, kappa {c['kappa']:g}" for c in choices)
    holds = gold["vrm+penalty"] > max(gold["twin"], gold["rm"])
    found = [
        f"At n = {n}, VRM ranked by mean - kappa sd with its chosen sd ({chosen}) picks responses of mean gold "
        f"reward {gold_cell('vrm+penalty')}, against {gold_cell('twin')} for the twin and {gold_cell('rm')} for the "
        f"RM, both unpenalised (VRM unpenalised: {gold_cell('vrm')}): the criterion that VRM's is the higher "
        f"{'holds' if holds else 'fails'}"
        + ("." if len(per_seed) == 1 else f" on the mean over {len(per_seed)} seeds (se over seeds).")]
    if "vrm+worst-case" in gold:
        found.append(f"Ranked by the worst case over their members (Coste et al. 2023) at n = {n}: "
                     + ", ".join(f"{kind} {gold_cell(f'{kind}+worst-case')}" for kind in ("rm", "twin", "vrm")) + ".")
    if "ppo" in record and "weak" in record["ppo"]:
        weak = record["ppo"]["weak"]
        end = {m: (weak[m]["gold"][-1], weak[m]["gold_se"][-1]) for m in weak}
        if all(m in end for m in ("vrm+penalty", "vrm", "twin", "twin+penalty", "rm")):
            found.append(
                f"With the weak KL penalty (beta {weak['rm']['beta']:g}), the final gold reward of PPO's held rollouts is "
                f"{end['vrm+penalty'][0]:.2f} ± {end['vrm+penalty'][1]:.2f} (se) against VRM's sd-penalised reward and "
                f"{end['vrm'][0]:.2f} ± {end['vrm'][1]:.2f} against its mean alone, {end['twin'][0]:.2f} ± "
                f"{end['twin'][1]:.2f} against the twin's and {end['twin+penalty'][0]:.2f} ± {end['twin+penalty'][1]:.2f} "
                f"against its ensemble's penalised reward, and {end['rm'][0]:.2f} ± "
                f"{end['rm'][1]:.2f} against the RM's: the criterion that VRM's is at least the RM's "
                f"{'holds' if end['vrm+penalty'][0] >= end['rm'][0] else 'fails'} for the penalised VRM and "
                f"{'holds' if end['vrm'][0] >= end['rm'][0] else 'fails'} for the unpenalised one.")
        falls = []
        for name, curve in weak.items():
            peak = max(range(len(curve["gold"])), key=curve["gold"].__getitem__)
            falls.append(f"{name} {curve['gold'][peak] - curve['gold'][-1]:.2f} (peak at KL {curve['kl'][peak]:.1f}, "
                         f"step {curve['step'][peak]} of {curve['step'][-1]})")
        found.append("Under the weak penalty, each gold reward ends below its peak by: " + "; ".join(falls) + ".")
    best = {kind: max(record["ood"].items(), key=lambda item: item[1]["auroc"][kind]) for kind in
            next(iter(record["ood"].values()))["auroc"]}
    found.append("The best out-of-distribution AUROC of any sd: " + "; ".join(
        f"{kind.replace('_', '-')} {ood['auroc'][kind]:.2f} ({name})" for kind, (name, ood) in best.items()) + ".")
    return found


def overoptimisation(record: dict, plot: str | None = PLOTS["overoptimisation"]) -> str:
    ood = record["ood_table"]
    return "\n".join([printed(record, plot), "", "The sd's AUROC for telling each kind of "
                      "out-of-distribution text from held-out responses (0.5: chance):", "",
                      table(ood["header"], ood["rows"]), "", *(f"{line}\n" for line in overoptimisation_findings(record))]
                     ).rstrip("\n")


DATA_NAMES = {"uf": "UltraFeedback sample", "hh": "HH-RLHF sample"}


def headline(results: Path) -> str:
    """One row per model compared in the reward-hacking test bed: the figures the README leads
    with, each from its script's results, and what they say of the paper's claim."""
    rows: dict[str, dict[str, str]] = {}
    columns: list[str] = []

    def add(title: str, model: str, value: str) -> None:
        if title not in columns:
            columns.append(title)
        rows.setdefault(model, {})[title] = value

    records = {name: json.loads((results / f"{name}.json").read_text())
               for name in ("reward_hacking", "best_of_n", "real_data") if (results / f"{name}.json").exists()}
    for name, record in records.items():
        header, body = record["table"]["header"], record["table"]["rows"]
        if vrm_is_tempered(record):  # its VRM is the tempered preset: that row's figures
            body = [[TEMPERED if c == "VRM" else c for c in row] for row in body]
        if name == "reward_hacking":
            for key in ("test accuracy", "shifted accuracy", "hack rate"):
                for row in body:
                    add(f"simulated-text {key}", row[0], row[header.index(key)])
        elif name == "best_of_n" and "gold n=16" in header:
            for row in body:
                add("best-of-16 gold reward", row[0], row[header.index("gold n=16")])
        elif name == "real_data":
            for row in body:
                add(f"{DATA_NAMES.get(row[0], row[0])} test accuracy", row[1], row[header.index("test accuracy")])
    models = list(rows if "reward_hacking" not in records else (r[0] for r in records["reward_hacking"]["table"]["rows"]))
    lines = [table(["model", *columns], [[m, *(rows[m].get(c, "-") for c in columns)] for m in models]), "",
             "From " + "; ".join(f"`{r['run']['command']}` (run {r['run']['date']}, commit `{r['run']['commit']}`)"
                                 for r in records.values()) + "."]
    stale = [name for name, record in records.items() if vrm_is_tempered(record)]
    if stale:
        lines += ["", f"{', '.join(f'`{n}`' for n in stale)} ran while the tempered preset was the default: its "
                      f"VRM figures are in the row {TEMPERED!r}."]
    if "reward_hacking" in records:
        lines += ["", hacking_sentence(records["reward_hacking"])]
    return "\n".join(lines)


def last_layer(record: dict) -> str:
    """The comparison table, the test gold at every kappa, the NUTS diagnostics and provenance."""
    nuts = record["last_layer"]
    return "\n".join([table(record["table"]["header"], record["table"]["rows"]), "",
                      table(record["gold_table"]["header"], record["gold_table"]["rows"]), "",
                      f"NUTS: prior scale tau {nuts['prior_scale']:g} (chosen on validation pairs), {nuts['chains']} "
                      f"chains of {nuts['num_samples']} draws, largest split R-hat {nuts['r_hat_max']:.3f}, smallest "
                      f"bulk ESS {nuts['n_eff_min']:.0f}, divergences {sum(nuts['divergences'])}.", "",
                      provenance(record), *vrm_note(record)])


def learning_curve(record: dict) -> str:
    """The curves' table and figure, then provenance (the verdicts are the verdict-all block)."""
    return "\n".join([table(record["table"]["header"], record["table"]["rows"]), "",
                      f"![learning_curve.png](results/{PLOTS['learning_curve']})", "",
                      f"{record['args']['seeds']} seeds, mean ± standard error. From " + provenance(record) + ".",
                      *vrm_note(record)])


RENDERERS: dict[str, Callable[[dict], str]] = {
    "last_layer": last_layer, "learning_curve": learning_curve,
    "overoptimisation_long": lambda r: "\n".join([
        printed(r), "", *(f for f in overoptimisation_findings(r) if f.startswith("Under the weak penalty"))]),
    "reward_hacking": reward_hacking, "best_of_n": best_of_n, "overoptimisation": overoptimisation,
    "fig3_supervision_loss": lambda r: printed(r, PLOTS["fig3_supervision_loss"]),
    "fig4_vrm_vs_rm": lambda r: printed(r, PLOTS["fig4_vrm_vs_rm"]),
    "fig5_lambda": lambda r: printed(r, PLOTS["fig5_lambda"]),
    "sbc": lambda r: printed(r, PLOTS["sbc"]),
}


def benchmarks(record: dict) -> str:
    rows = []
    for entry in record["entries"]:
        result = entry["result"]
        shown = {k: v for k, v in result.items() if k.endswith(("_ms", "_per_s", "_mfu", "_s")) or k == "ratio"}
        rows.append([f"`{entry['command']}`", ", ".join(f"{k} {v}" for k, v in shown.items())])
    return "\n".join([table(["command", "figures (ratio: against the baseline timed in the same run)"], rows), "",
                      provenance(record)])


def verdict_note(results: Path) -> str:
    """Which of the verdicts' records fitted the tempered preset as their ``vrm``."""
    stale = [name for name in ("learning_curve", "overoptimisation") if (results / f"{name}.json").exists()
             and vrm_is_tempered(json.loads((results / f"{name}.json").read_text()))]
    if not stale:
        return ""
    return (f"\n\nIn {' and '.join(f'`{n}`' for n in stale)}, vrm is the tempered preset (fixed priors, KL weight "
            "0.01), the package default when they ran.")


def render(key: str, results: Path) -> str:
    if key == "headline":
        return headline(results)
    if key in ("verdict", "verdict-all"):
        return verdict(results, README_CLAIMS if key == "verdict" else None) + verdict_note(results)
    path = results / f"{key}.json"
    if not path.exists():
        return f"(not run yet: no {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path})"
    record = json.loads(path.read_text())
    if key.startswith("benchmarks-"):
        return benchmarks(record)
    return RENDERERS.get(key, printed)(record)


def render_page(text: str, results: Path) -> str:
    return BLOCK.sub(lambda m: f"{m.group(1)}{render(m.group('key'), results)}\n{m.group(4)}", text)


def pages(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="render without collecting; fail if a page would change")
    parser.add_argument("--no-collect", action="store_true", help="render from docs/results as it is")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository (pages and docs/results)")
    parser.add_argument("--out", type=Path, default=None, help="the scripts' outputs (default ROOT/experiments/out)")
    args = parser.parse_args(argv)
    results = args.root / "docs" / "results"
    if not (args.check or args.no_collect):
        copied = collect(args.out or args.root / "experiments" / "out", results)
        print(f"collected: {', '.join(copied) or 'nothing'}")
    stale = []
    for page in pages(args.root):
        if not page.exists():
            continue
        text = page.read_text()
        rendered = render_page(text, results)
        if rendered != text:
            stale.append(str(page.relative_to(args.root)))
            if not args.check:
                page.write_text(rendered)
    if args.check and stale:
        print(f"pages that differ from what experiments/report.py renders: {', '.join(stale)}", file=sys.stderr)
        return 1
    print(f"{'would change' if args.check else 'rendered'}: {', '.join(stale) or 'nothing'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
