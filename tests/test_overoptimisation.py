"""experiments/overoptimisation.py: a tiny run's results have the documented shape and obey what
must hold whatever the fits (best-of-1 is a random pick, nothing beats the oracle)."""

import importlib
import json
import math
import sys
from pathlib import Path

import pytest

from pyro_vrm import ppo_run, simulated_text

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def load_script():
    sys.path.insert(0, str(EXPERIMENTS))
    try:
        return importlib.import_module("overoptimisation")
    finally:
        sys.path.remove(str(EXPERIMENTS))


def test_quick_setting_yields_to_explicit_flags():
    oo = load_script()
    args = oo.arguments(["--quick", "--members", "2"])
    assert args.members == 2 and args.max_n == oo.QUICK["max_n"] and args.ppo_steps == oo.QUICK["ppo_steps"]
    assert oo.arguments([]).max_n == 256
    args = oo.arguments(["--penalties", "weak", "--ppo-models", "rm,twin"])
    assert args.penalties == ["weak"] and args.ppo_models == ["rm", "twin"]
    assert oo.arguments([]).ppo_models == list(oo.MODELS)
    with pytest.raises(SystemExit):
        oo.arguments(["--ppo-models", "rm,nonesuch"])


def test_tiny_run(monkeypatch, tmp_path, capsys):
    oo = load_script()
    small = simulated_text.TextSimulationConfig(num_prompts=16)
    monkeypatch.setattr(simulated_text, "TextSimulationConfig", lambda seed=0: small)
    monkeypatch.setattr(ppo_run, "TextSimulationConfig", lambda seed=0: small)
    monkeypatch.setattr(oo, "TextSimulationConfig", lambda seed=0: small)
    out = tmp_path / "oo"
    results = oo.main(["--seeds", "1", "--steps", "10", "--log-every", "5", "--max-length", "48", "--members", "2", "--max-n", "4",
                       "--val-pool", "4", "--last-layer-draws", "20", "--ppo-steps", "2", "--eval-every", "1", "--eval-rollouts", "4",
                       "--ood-texts", "8", "--ppo", "rollouts_per_step=4,minibatch_size=4,max_new_tokens=12",
                       "--policy", "warm_start_steps=5", "--out", str(out), "--cache-dir", str(tmp_path / "cache")])
    saved = json.loads((out / "results.json").read_text())
    assert {k: v for k, v in saved.items() if k != "run"} == json.loads(json.dumps(results))
    assert (out / "overoptimisation.png").stat().st_size > 1000
    assert "best-of-4 gold" in capsys.readouterr().out

    bon = results["best_of_n"]
    assert bon["n"] == [1, 2, 4]
    for name in [*oo.MODELS, *oo.VRM_SDS]:
        gold = bon[name]["gold"]
        assert len(gold) == 3 and math.isclose(gold[0], bon["oracle"]["gold"][0], abs_tol=1e-9), name
        assert all(o >= g - 1e-9 for o, g in zip(bon["oracle"]["gold"], gold)), name

    selection = results["selection"]
    chosen = selection["vrm+penalty"]["uncertainty"]
    assert chosen in oo.VRM_SDS
    assert selection[chosen]["validation_gold"] == max(selection[v]["validation_gold"] for v in oo.VRM_SDS)
    assert bon["vrm+penalty"] == bon[chosen]
    assert all(results["kappa"][f"{kind}+penalty"][0] in (0.0, 0.5, 1.0, 2.0, 4.0) for kind in oo.KINDS)
    # the worst case over members has no kappa to choose: PPO optimises it as it is
    assert all(results["ppo"]["weak"][f"{kind}+worst-case"]["kappa"] == [0.0] for kind in oo.KINDS)

    for penalty, beta in (("default", 1.0), ("weak", 0.05)):
        for name in oo.MODELS:
            curve = results["ppo"][penalty][name]
            assert curve["step"] == [0, 1, 2] and curve["beta"] == beta, (penalty, name)
            assert all(len(curve[key]) == 3 for key in ("gold", "proxy", "kl")), (penalty, name)
            assert curve["kl"][0] == 0.0  # the policy starts as its reference

    assert set(results["ood"]) == {"rm+penalty", "twin+penalty", "rm+last-layer", *oo.VRM_SDS}
    for name, ood in results["ood"].items():
        assert set(ood["auroc"]) == {"filler_only", "truncated", "other_family"}
        assert all(0.0 <= a <= 1.0 for a in ood["auroc"].values()), name


def test_seeds_are_aggregated_into_means_standard_errors_and_per_seed_values():
    oo = load_script()

    def run(shift: float) -> dict:
        curve = {"step": [0, 10], "gold": [0.0, 1.0 + shift], "gold_se": [0.1, 0.1], "proxy": [0.0, 2.0],
                 "objective": [0.0, 1.0], "kl": [0.0, 3.0], "filler_rate": [0.5, 0.4 - shift], "kappa": shift,
                 "beta": 0.05, "examples_end": []}
        return {"kappa": {"rm+penalty": shift}, "selection": {"vrm+penalty": {"uncertainty": f"s{shift}"}},
                "best_of_n": {"n": [1, 2], "kl_bon": [0.0, 0.19], "rm": {"gold": [0.0, 1.0 + 2 * shift],
                                                                          "filler_share": [0.5, 0.5]}},
                "ood": {"rm+penalty": {"auroc": {"filler_only": 0.6 + shift}, "mean_sd": {"in_distribution": 1.0}}},
                "ppo": {"weak": {"rm": curve}}}

    out = oo.aggregate([run(0.0), run(0.2)])
    gold = out["best_of_n"]["rm"]
    assert gold["gold"] == [0.0, 1.2] and gold["gold_per_seed"] == [[0.0, 1.0], [0.0, 1.4]]
    assert math.isclose(gold["gold_se"][1], 0.2)  # two seeds: se = |1.4 - 1.0| / 2
    weak = out["ppo"]["weak"]["rm"]
    assert math.isclose(weak["final_gold"], 1.1) and math.isclose(weak["final_gold_se"], 0.1)
    assert weak["peak_gold_per_seed"] == [1.0, 1.2] and weak["kappa"] == [0.0, 0.2]
    assert math.isclose(weak["gold_se"][1], 0.1)  # over seeds, not the first run's rollout se
    assert out["kappa"] == {"rm+penalty": [0.0, 0.2]} and out["selection"]["vrm+penalty"]["uncertainty"] == "s0.0"
    assert math.isclose(out["ood"]["rm+penalty"]["auroc"]["filler_only"], 0.7)
    one = oo.aggregate([run(0.0)])
    assert one["best_of_n"]["rm"]["gold_se"] == [None, None] and one["ppo"]["weak"]["rm"]["gold_se"] == [0.1, 0.1]
