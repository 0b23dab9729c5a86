"""Every experiment script runs with tiny settings and writes its results, plot and table."""

import importlib
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from pyro_vrm import cli, simulated_text
from pyro_vrm.train import WEIGHT_DECAY_GRID

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
TINY = ["--steps", "20", "--log-every", "10", "--seeds", "1", "--max-length", "48"]

SCRIPTS = {
    "fig3_supervision_loss": (["supervision loss", "final test accuracy"], "fig3.png"),
    "fig4_vrm_vs_rm": (["model", "final test accuracy"], "fig4.png"),
    "fig5_lambda": (["lambda", "final KL per pair"], "fig5.png"),
    "ablation": (["setting", "corr(E[w], aspect target)", "corr(E[w], true w)"], None),
    "reward_hacking": (["model", "shifted accuracy", "hack rate", "test ECE", "test ECE p-value", "error AUROC"], None),
}
# the conditional preset chooses its weight decay in six fits; its path is tested by the SBC script's test
MODELS = {"reward_hacking": ["--models", "vrm,vrm-paper,rm,rm-tuned,twin"]}


@pytest.fixture(scope="module")
def scripts():
    sys.path.insert(0, str(EXPERIMENTS))
    yield {name: importlib.import_module(name) for name in [*SCRIPTS, "vrm_vs_rm_simulated", "sbc", "real_data",
                                                                  "learning_curve"]}
    sys.path.remove(str(EXPERIMENTS))


@pytest.fixture
def small_text(monkeypatch):
    small = simulated_text.TextSimulationConfig(num_prompts=16)
    monkeypatch.setattr(simulated_text, "TextSimulationConfig", lambda seed=0: small)


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_writes_results_plot_and_table(name, scripts, small_text, tmp_path, capsys):
    columns, plot = SCRIPTS[name]
    out = tmp_path / name
    results = scripts[name].main([*TINY, *MODELS.get(name, []), "--out", str(out), "--cache-dir", str(tmp_path / "cache")])
    header = capsys.readouterr().out.splitlines()[0]
    assert all(f" {c} " in header for c in columns), header
    saved = json.loads((out / "results.json").read_text())
    assert saved["data"] == "simulated-text" == results["data"]
    assert saved["table"]["header"] == [c.strip() for c in header.strip("|").split("|")]  # what it printed
    assert {"command", "date", "commit", "machine"} <= set(saved["run"])
    if plot:
        assert (out / plot).stat().st_size > 1000


def test_simulated_sweep_prints_every_configuration(scripts, tmp_path, capsys, monkeypatch):
    original = cli.SimulationConfig  # a tenth of the simulated prompts: the sweep's bookkeeping is what is tested
    monkeypatch.setattr(cli, "SimulationConfig", lambda **kw: original(**{"num_prompts": 250, **kw}))
    rows = scripts["vrm_vs_rm_simulated"].main(["--seeds", "0", "--steps", "5", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert len(rows) == len(scripts["vrm_vs_rm_simulated"].CONFIGS)
    assert all(f"| {row['config']} |" in printed for row in rows)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [row[0] for row in saved["table"]["rows"]] == [row["config"] for row in rows]


def test_sbc_writes_both_presets_and_the_ecdf_figure(scripts, tmp_path, capsys):
    results = scripts["sbc"].main(["--steps", "10", "--pairs", "400", "--held-out", "200", "--kl-weights", "0.5",
                                   "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "| default | recommended | simulator | 1 |" in printed and "| paper | paper | simulator | 1 |" in printed
    assert "| default | recommended | its own fit | 1 |" in printed
    assert "| tempered | tempered | simulator | 0.01 |" in printed
    assert "| kl_weight=0.5 | tempered | simulator | 0.5 |" in printed and results["kl_weight=0.5"]["kl_weight"] == 0.5
    assert "own_generator" in results["tempered"] and "own_generator" not in results["kl_weight=0.5"]
    assert [row["weight_decay"] for row in results["default"]["weight_decay_selection"]] == list(WEIGHT_DECAY_GRID)
    saved = json.loads((tmp_path / "results.json").read_text())
    keys = {"w_rank_pvalue", "margin_rank_pvalue", "loglik_rank_pvalue", "margin_contraction", "w_contraction"}
    for fit in ("default", "paper"):
        assert keys <= set(saved[fit]) and saved[fit]["pairs"] == 200
        assert all(0 <= saved[fit][k] <= 1 for k in keys if k.endswith("pvalue"))
    assert saved["paper"]["preset"] == "paper" and results["default"]["preset"] == "recommended"
    assert keys <= set(saved["default"]["own_generator"])
    assert (tmp_path / "sbc.png").stat().st_size > 1000 and (tmp_path / "sbc_paper.png").exists()
    assert (tmp_path / "sbc_default_own.png").exists() and (tmp_path / "sbc_tempered.png").exists()
    assert not list(tmp_path.glob("sbc_kl*.png"))


def test_real_data_scores_the_polite_closing_hack_for_every_model(scripts, small_text, tmp_path, capsys):
    real_data = scripts["real_data"]
    results = real_data.main([*TINY, "--seeds", "2", "--data", "simulated-text", "--models", "rm,rm-temperature",
                              "--out", str(tmp_path), "--cache-dir", str(tmp_path / "cache")])
    header = capsys.readouterr().out.splitlines()[0]
    assert " accuracy lost to a polite closing on the loser " in header
    models = results["results"]["simulated-text"]["models"]
    for runs in models.values():
        assert len(runs) == 2
        for run in runs:
            assert 0 <= run["closing_accuracy"] <= 1
            assert run["closing_drop"] == pytest.approx(run["accuracy"]["accuracy"] - run["closing_accuracy"])
            # the control: the same closing on the winner; the bias is half the difference
            assert run["closing_bias"] == pytest.approx((run["closing_on_winner_accuracy"] - run["closing_accuracy"]) / 2)
            assert 0 < run["ece_pvalue"] <= 1
    # each figure of the table is the mean ± se over the seeds
    rm_row = next(r for r in results["table"]["rows"] if r[1] == "RM")
    log_losses = [run["log_loss"] for run in models["rm"]]
    mean, se = (float(x) for x in rm_row[results["table"]["header"].index("log loss")].split(" ± "))
    assert mean == pytest.approx(sum(log_losses) / 2, abs=1e-3)
    assert se == pytest.approx(abs(log_losses[0] - log_losses[1]) / 2, abs=1e-3)
    # the temperature divides the RM's margins: the same ranking, with and without the closing
    for key in ("closing_accuracy", "closing_on_winner_accuracy"):
        assert models["rm-temperature"][0][key] == pytest.approx(models["rm"][0][key])
    assert models["rm-temperature"][0]["accuracy"]["accuracy"] == pytest.approx(models["rm"][0]["accuracy"]["accuracy"])


def test_learning_curve_reports_every_size_with_standard_errors_and_paired_verdicts(scripts, tmp_path, capsys):
    lc = scripts["learning_curve"]
    results = lc.main(["--data", "simulated", "--sizes", "40,all", "--seeds", "2", "--steps", "10", "--members", "2",
                       "--workers", "1", "--models", "vrm,vrm-informative,rm,rm-ensemble", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    saved = json.loads((tmp_path / "results.json").read_text())
    curves = saved["results"]["simulated"]
    assert set(curves) == {"vrm", "vrm-informative", "rm", "rm-ensemble"}
    for entry in curves.values():
        assert entry["n"] == [40, 4000]
        for key in ("accuracy", "accuracy_se", "log_loss", "log_loss_se", "ece", "ece_se"):
            assert len(entry[key]) == 2 and all(v == v for v in entry[key]), key  # no NaN: two seeds give an se
        assert entry["accuracy"][0] == pytest.approx(sum(entry["per_seed"]["accuracy"][0]) / 2)
    assert "w_recovery" in curves["vrm"] and "w_recovery" not in curves["rm"]
    # the informative prior reaches the fit: the same seeds and pairs, other predictions
    assert curves["vrm-informative"]["per_seed"]["log_loss"] != curves["vrm"]["per_seed"]["log_loss"]
    alpha = saved["priors"]["simulated"]
    assert len(alpha) == 4 and all(0 < a < 1 for a in alpha)  # the simulator's types make w sparse
    prior_claim = next(c for c in saved["comparisons"] if c["claim"] == "the prior matters")
    first = prior_claim["sizes"][0]
    per_seed = [a - b for a, b in zip(curves["vrm-informative"]["per_seed"]["log_loss"][0],
                                      curves["vrm"]["per_seed"]["log_loss"][0])]
    assert first["log_loss"]["difference"] == pytest.approx(sum(per_seed) / 2)
    assert first["verdict"] in ("better", "worse", "within noise")
    assert "| simulated | the prior matters | 40 |" in printed
    assert (tmp_path / "learning_curve.png").stat().st_size > 1000


def test_population_concentration_matches_a_dirichlets_mean_and_spread(scripts):
    alpha = torch.tensor([0.5, 1.0, 3.0])
    draws = torch.distributions.Dirichlet(alpha).sample((40000,))
    assert torch.tensor(scripts["learning_curve"].population_concentration(draws)) == pytest.approx(alpha, rel=0.05)


def test_each_model_is_its_preset_with_its_own_overrides_under_the_callers(scripts):
    common = sys.modules["common"]
    assert set(common.LABELS) == set(common.MODELS) >= set(common.OVERRIDES)
    _, auto = common.configs("vrm-auto", seed=2, steps=50)
    assert (auto.kl_weight, auto.weight_decay, auto.seed, auto.steps) == ("auto", 0.0, 2, 50)  # tempered, beta chosen
    _, folds = common.configs("vrm-folds")
    assert (folds.validation_folds, folds.validation_patience, folds.weight_decay) == (5, 20, "auto")
    assert common.LABELS["vrm-folds"] == "VRM, weight decay chosen on 5 folds"
    assert common.configs("vrm")[1] == replace(folds, validation_folds=1, validation_patience=0)
    assert common.configs("vrm-folds", validation_folds=5)[1].validation_folds == 5  # the caller's word is last


def test_real_data_in_worker_processes_matches_one_process(scripts, tmp_path):
    real_data = scripts["real_data"]
    # a file, since the workers load the data themselves (a monkeypatch does not reach them)
    text = simulated_text.simulate_text(simulated_text.TextSimulationConfig(num_prompts=16)).to_dict()
    rows = [{k: text[k][i] for k in ("prompt", "chosen", "rejected")} for i in range(len(text["prompt"]))]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = [*TINY, "--seeds", "2", "--data", str(tmp_path / "pairs.jsonl"), "--models", "rm",
            "--cache-dir", str(tmp_path / "cache")]
    one = real_data.main([*args, "--out", str(tmp_path / "one")])["results"][str(tmp_path / "pairs.jsonl")]["models"]["rm"]
    two = real_data.main([*args, "--out", str(tmp_path / "two"), "--workers", "2"])["results"][str(tmp_path / "pairs.jsonl")]
    for a, b in zip(one, two["models"]["rm"], strict=True):
        assert b["log_loss"] == pytest.approx(a["log_loss"], rel=1e-4)
        assert b["accuracy"]["accuracy"] == pytest.approx(a["accuracy"]["accuracy"], abs=1e-6)


def test_last_layer_compares_one_nuts_fit_with_the_ensembles(scripts, small_text, tmp_path, capsys):
    sys.path.insert(0, str(EXPERIMENTS))
    try:
        last_layer = importlib.import_module("last_layer")
    finally:
        sys.path.remove(str(EXPERIMENTS))
    results = last_layer.main(["--steps", "10", "--log-every", "5", "--max-length", "48", "--members", "2",
                               "--num-samples", "20", "--warmup", "20", "--chains", "2", "--prompts", "4",
                               "--max-n", "4", "--val-prompts", "4", "--val-pool", "4", "--ood-texts", "8",
                               "--kappas", "0,1", "--out", str(tmp_path), "--cache-dir", str(tmp_path / "cache")])
    models = results["models"]
    assert list(models) == ["rm", "rm-last-layer", "rm-ensemble", "vrm", "vrm-ensemble"]
    # its cost is what each is: the last layer is one fit, an ensemble one fit per member
    assert models["rm-last-layer"]["fits"] == 1 and models["rm-ensemble"]["fits"] == 2
    assert models["vrm"]["fits"] == 1
    # one VRM fit has a posterior sd of its own, where the point-estimate RM's is 0
    assert models["vrm"]["ood"]["mean_sd"]["in_distribution"] > 0
    assert models["rm"]["ood"]["mean_sd"]["in_distribution"] == 0
    for r in models.values():
        assert r["kappa"] in (0.0, 1.0) and r["gold"] == r["gold_by_kappa"][str(r["kappa"])]
        assert 0 <= r["test_accuracy"] <= 1 and r["test_log_loss"] > 0
    assert results["last_layer"]["r_hat_max"] > 0.9 and results["last_layer"]["prior_scale"] > 0
    assert json.loads((tmp_path / "results.json").read_text())["table"] == results["table"]
    assert "best-of-4 gold" in capsys.readouterr().out


def test_ppo_demo_trains_each_reward_model_then_ppo_against_it(scripts, small_text, monkeypatch, tmp_path):
    from pyro_vrm import ppo_run

    small = simulated_text.TextSimulationConfig()  # small_text's: PPO draws its prompts from it as well
    monkeypatch.setattr(ppo_run, "TextSimulationConfig", lambda seed=0: small)
    sys.path.insert(0, str(EXPERIMENTS))
    try:
        ppo_demo = importlib.import_module("ppo_demo")
    finally:
        sys.path.remove(str(EXPERIMENTS))
    results = ppo_demo.main(["--models", "rm", "--steps", "2", "--reward-steps", "10", "--out", str(tmp_path),
                             "--extra", "--rollouts-per-step", "4", "--minibatch-size", "4", "--max-new-tokens", "8",
                             "--eval-rollouts", "8", "--eval-every", "1", "--warm-start-steps", "5"])
    run = results["models"]["rm"]
    assert 0 <= run["reward_model"]["test_accuracy"] <= 1
    assert {f"{k}_{end}" for k in ppo_demo.FIGURES for end in ("start", "end")} <= set(run["ppo"])
    assert 0 <= run["ppo"]["filler_rate_end"] <= 1
    assert results["table"]["rows"][0][0] == "RM"
    assert (tmp_path / "rm-ppo").is_dir() and (tmp_path / "results.json").exists()
