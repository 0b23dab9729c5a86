"""VRM against its controls on simulated data, over seeds, plus the variants tried.

Every run uses `pyro-vrm train` with the same simulated data set (--sim-seed 0); within a seed,
every model shares the minibatch order and the optimisation budget. Prints a Markdown table and
writes every summary to OUT/results.json.

    python experiments/vrm_vs_rm_simulated.py [--seeds 0 1 2] [--out experiments/out/vrm_vs_rm]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
from pathlib import Path

from pyro_vrm.cli import main as pyro_vrm
from records import show, write_results

# (label, flags) of every configuration; the first PER_SEED run for every seed.
CONFIGS = [
    ("VRM (recommended)", ["--model", "vrm"]),
    ("VRM, paper's objective", ["--model", "vrm", "--preset", "paper"]),
    ("RM", ["--model", "rm"]),
    ("RM, tuned weight decay", ["--model", "rm-tuned"]),
    ("twin", ["--model", "twin"]),
    ("VRM, paper's objective, lambda 0", ["--model", "vrm", "--preset", "paper", "--lambda-sup", "0"]),
    ("VRM, KL weight 0.01", ["--model", "vrm", "--preset", "tempered"]),
    ("VRM, KL weight 0.01, 3000 steps", ["--model", "vrm", "--preset", "tempered", "--steps", "3000"]),
    ("RM, 3000 steps", ["--model", "rm", "--steps", "3000"]),
    ("VRM, KL weight 0.01, 4 particles", ["--model", "vrm", "--preset", "tempered", "--num-particles", "4"]),
    ("VRM, KL weight 0.01, Trace_ELBO", ["--model", "vrm", "--preset", "tempered", "--elbo", "trace"]),
    ("VRM, KL weight 0.01, mlp decoder (no aspect likelihood)", ["--model", "vrm", "--preset", "tempered",
                                                                "--decoder", "mlp"]),
]
PER_SEED = 5


def run(flags: list[str], out: Path) -> dict:
    with contextlib.redirect_stdout(io.StringIO()):
        assert pyro_vrm(["train", "--quiet", "--out", str(out), *flags]) == 0
    return json.loads((out / "summary.json").read_text())


def fmt(values: list[float]) -> str:
    spec = ".2e" if abs(statistics.mean(values)) < 0.01 else ".3f"  # a collapsed KL per pair is ~1e-4
    if len(values) == 1:
        return f"{values[0]:{spec}}"
    return f"{statistics.mean(values):{spec}} ± {statistics.stdev(values):{spec}}"


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("experiments/out/vrm_vs_rm_simulated"))
    parser.add_argument("--steps", type=int, default=None, help="override every run's --steps")
    args = parser.parse_args(argv)

    rows = []
    for i, (label, flags) in enumerate(CONFIGS):
        seeds = args.seeds if i < PER_SEED else args.seeds[:1]
        extra = [] if args.steps is None else ["--steps", str(args.steps)]
        summaries = [run([*flags, *extra, "--seed", str(s)], args.out / f"{i}-seed{s}") for s in seeds]
        rows.append({"config": label, "flags": " ".join(flags), "seeds": seeds, "summaries": summaries})

    results = {"data": "simulated", "rows": rows, "oracle_accuracy": rows[0]["summaries"][0]["oracle_accuracy"]}
    cells = []
    for row in rows:
        s = row["summaries"]
        cell = lambda key: fmt([x[key] for x in s]) if s[0].get(key) is not None else "-"  # noqa: E731
        cells.append([row["config"], len(s), *(cell(k) for k in ("test_accuracy", "gap_to_oracle", "test_log_loss",
                                                                   "kl_per_pair", "w_recovery", "target_w_corr"))])
    show(results, ["configuration", "seeds", "test accuracy", "gap to oracle", "test log loss", "KL per pair",
                   "w_recovery", "target_w_corr"], cells)
    print(f"\noracle accuracy on the test pairs: {results['oracle_accuracy']:.3f}")
    write_results(args.out, results)
    return rows


if __name__ == "__main__":
    main()
