"""experiments/best_of_n.py: the best-of-n estimator against brute force, and a tiny run."""

import importlib
import itertools
import json
import math
import sys
from pathlib import Path

import torch

from pyro_vrm import simulated_text

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def _brute_force(proxy: list[float], value: list[float], n: int) -> float:
    """Mean over every n-subset of the value of its best by proxy, ties broken uniformly."""
    picks = []
    for subset in itertools.combinations(range(len(proxy)), n):
        top = max(proxy[i] for i in subset)
        winners = [i for i in subset if proxy[i] == top]
        picks.append(sum(value[i] for i in winners) / len(winners))
    return sum(picks) / len(picks)


def test_best_of_n_estimator_and_tiny_run(monkeypatch, tmp_path, capsys):
    sys.path.insert(0, str(EXPERIMENTS))
    try:
        bon = importlib.import_module("best_of_n")
    finally:
        sys.path.remove(str(EXPERIMENTS))

    # The estimator equals brute-force enumeration of all n-subsets, with and without ties.
    g = torch.Generator().manual_seed(0)
    distinct = torch.randn(3, 7, generator=g)
    tied = torch.randint(0, 3, (3, 7), generator=g).double()  # many ties, as the oracle's gold has
    value = torch.randn(3, 7, generator=g).double()
    for proxy in (distinct, tied):
        for n in range(1, 8):
            got = bon.best_of_n(proxy, value, n)
            want = [_brute_force(proxy[p].tolist(), value[p].tolist(), n) for p in range(3)]
            assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), atol=1e-12), (n, got, want)
    assert torch.allclose(bon.bon_weights(7, 3).sum(), torch.tensor(1.0, dtype=torch.float64))
    assert bon.kl_bon(1) == 0.0 and math.isclose(bon.kl_bon(4), math.log(4) - 0.75)

    # A tiny end-to-end run.
    small = simulated_text.TextSimulationConfig(num_prompts=16)
    monkeypatch.setattr(simulated_text, "TextSimulationConfig", lambda seed=0: small)
    out = tmp_path / "bon"
    results = bon.main(["--steps", "10", "--log-every", "5", "--max-length", "48", "--max-n", "4",
                        "--val-pool", "4", "--models", "vrm,rm,twin", "--out", str(out),
                        "--cache-dir", str(tmp_path / "cache")])
    saved = json.loads((out / "results.json").read_text())
    assert {k: v for k, v in saved.items() if k != "run"} == json.loads(json.dumps(results)) and "command" in saved["run"]
    assert (out / "best_of_n.png").stat().st_size > 1000
    header = capsys.readouterr().out.splitlines()[0]
    assert all(f" {c} " in header for c in ("gold n=1", "gold n=4", "filler share n=4")), header

    ns = [1, 2, 4]
    assert results["n"] == ns and results["prompts"] == 3 and results["pool"] == 4
    assert results["kl_bon"] == [bon.kl_bon(n) for n in ns]
    assert results["compared"] == ["vrm", "rm", "twin", "vrm-risk-averse"]
    assert len(results["kappa"]) == 1 and results["kappa"][0] in (0.0, 0.5, 1.0, 2.0)
    oracle = results["oracle"]
    for name in ["oracle", *results["compared"]]:
        curve = results[name]
        assert len(curve["gold"]) == len(curve["filler_share"]) == len(ns), name
        assert all(0.0 <= f <= 1.0 for f in curve["filler_share"]), name
        # best-of-1 is a uniformly random candidate, whoever picks it
        assert math.isclose(curve["gold"][0], oracle["gold"][0], abs_tol=1e-9), name
        # no proxy beats picking by the gold reward itself, at any n
        assert all(o >= g - 1e-9 for o, g in zip(oracle["gold"], curve["gold"])), (name, curve["gold"])
    assert all(b >= a - 1e-12 for a, b in zip(oracle["gold"], oracle["gold"][1:])), oracle["gold"]
    assert oracle["gold"][-1] > oracle["gold"][0]  # 12 candidates of random quality: the oracle gains
