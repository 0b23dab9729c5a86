"""Every experiment script runs with tiny settings and writes its results, plot and table."""

import importlib
import json
import sys
from pathlib import Path

import pytest

from pyro_vrm import cli, simulated_text

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
TINY = ["--steps", "20", "--log-every", "10", "--seeds", "1", "--max-length", "48"]

SCRIPTS = {
    "fig3_supervision_loss": (["supervision loss", "final test accuracy"], "fig3.png"),
    "fig4_vrm_vs_rm": (["model", "final test accuracy"], "fig4.png"),
    "fig5_lambda": (["lambda", "final KL per pair"], "fig5.png"),
    "ablation": (["setting", "corr(E[w], aspect target)", "corr(E[w], true w)"], None),
    "reward_hacking": (["model", "shifted accuracy", "hack rate", "error AUROC"], None),
}


@pytest.fixture(scope="module")
def scripts():
    sys.path.insert(0, str(EXPERIMENTS))
    yield {name: importlib.import_module(name) for name in [*SCRIPTS, "vrm_vs_rm_simulated", "sbc", "real_data"]}
    sys.path.remove(str(EXPERIMENTS))


@pytest.fixture
def small_text(monkeypatch):
    small = simulated_text.TextSimulationConfig(num_prompts=16)
    monkeypatch.setattr(simulated_text, "TextSimulationConfig", lambda seed=0: small)


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_writes_results_plot_and_table(name, scripts, small_text, tmp_path, capsys):
    columns, plot = SCRIPTS[name]
    out = tmp_path / name
    results = scripts[name].main([*TINY, "--out", str(out), "--cache-dir", str(tmp_path / "cache")])
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
    assert "| default | recommended | simulator | 0.01 |" in printed and "| paper | paper | simulator | 1 |" in printed
    assert "| conditional | conditional | its own fit | 1 |" in printed
    assert "| kl_weight=0.5 | recommended | simulator | 0.5 |" in printed and results["kl_weight=0.5"]["kl_weight"] == 0.5
    assert "own_generator" in results["conditional"] and "own_generator" not in results["kl_weight=0.5"]
    saved = json.loads((tmp_path / "results.json").read_text())
    keys = {"w_rank_pvalue", "margin_rank_pvalue", "loglik_rank_pvalue", "margin_contraction", "w_contraction"}
    for fit in ("default", "paper"):
        assert keys <= set(saved[fit]) and saved[fit]["pairs"] == 200
        assert all(0 <= saved[fit][k] <= 1 for k in keys if k.endswith("pvalue"))
    assert saved["paper"]["preset"] == "paper" and results["default"]["preset"] == "recommended"
    assert keys <= set(saved["default"]["own_generator"])
    assert (tmp_path / "sbc.png").stat().st_size > 1000 and (tmp_path / "sbc_paper.png").exists()
    assert (tmp_path / "sbc_conditional_own.png").exists()
    assert not list(tmp_path.glob("sbc_kl*.png"))


def test_real_data_scores_the_polite_closing_hack_for_every_model(scripts, small_text, tmp_path, capsys):
    real_data = scripts["real_data"]
    results = real_data.main([*TINY, "--data", "simulated-text", "--models", "rm,rm-temperature",
                              "--out", str(tmp_path), "--cache-dir", str(tmp_path / "cache")])
    header = capsys.readouterr().out.splitlines()[0]
    assert " accuracy lost to a polite closing on the loser " in header
    models = results["results"]["simulated-text"]["models"]
    for runs in models.values():
        run = runs[0]
        assert 0 <= run["closing_accuracy"] <= 1
        assert run["closing_drop"] == pytest.approx(run["accuracy"]["accuracy"] - run["closing_accuracy"])
    # the temperature divides the RM's margins: the same ranking, with and without the closing
    assert models["rm-temperature"][0]["closing_accuracy"] == pytest.approx(models["rm"][0]["closing_accuracy"])
    assert models["rm-temperature"][0]["accuracy"]["accuracy"] == pytest.approx(models["rm"][0]["accuracy"]["accuracy"])
