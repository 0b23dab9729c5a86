"""The report that writes results into the docs: it renders what the scripts printed, with their
provenance, and the committed pages are what it renders from the committed results."""

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_report():
    sys.path.insert(0, str(ROOT / "experiments"))
    spec = importlib.util.spec_from_file_location("report", ROOT / "experiments" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RUN = {"command": "python experiments/reward_hacking.py", "date": "2026-01-02", "commit": "abc1234",
       "machine": "a CPU, 2 cores, GPU: none", "torch": "2.13.0",
       "packages": {"pyro-ppl": "1.9.2", "numpy": "2.4.6"}, "threads": 1}
HEADER = ["model", "seeds", "test accuracy", "shifted accuracy", "hack rate"]
ROWS = [["VRM", "3", "0.750 ± 0.010", "0.700 ± 0.020", "0.100 ± 0.010"],
        ["RM", "3", "0.830 ± 0.004", "0.424 ± 0.001", "0.290 ± 0.004"],
        ["twin", "3", "0.760 ± 0.010", "0.710 ± 0.010", "0.090 ± 0.010"]]


def fixture(tmp_path: Path) -> Path:
    """A repository with one script's output and a README with a block for it and one for a
    script that has not run."""
    out = tmp_path / "experiments" / "out" / "reward_hacking"
    out.mkdir(parents=True)
    (out / "results.json").write_text(json.dumps({"run": RUN, "data": "simulated-text",
                                                  "table": {"header": HEADER, "rows": ROWS}}))
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("# Title\n\nprose stays\n\n<!-- report:reward_hacking -->\nold\n"
                                        "<!-- /report:reward_hacking -->\n\n<!-- report:best_of_n -->\n"
                                        "<!-- /report:best_of_n -->\n")
    return tmp_path


def test_the_report_renders_the_printed_table_with_its_provenance(tmp_path, capsys):
    report = load_report()
    root = fixture(tmp_path)
    assert report.main(["--root", str(root)]) == 0
    page = (root / "README.md").read_text()
    assert page.startswith("# Title\n\nprose stays\n") and "old\n" not in page
    assert "| VRM | 3 | 0.750 ± 0.010 | 0.700 ± 0.020 | 0.100 ± 0.010 |" in page
    assert "`python experiments/reward_hacking.py` (run 2026-01-02, commit `abc1234`" in page
    assert "GPU: none, torch 2.13.0, pyro-ppl 1.9.2, numpy 2.4.6, 1 thread)" in page  # the versions it ran with
    # the sentence is computed from the figures: 0.700 - 0.424 and 0.700 - 0.710
    assert "VRM's accuracy is +0.276 from the RM's and -0.010 from the deterministic twin's" in page
    assert "(not run yet" in page  # best_of_n has no results
    assert (root / "docs" / "results" / "reward_hacking.json").exists()  # collected, to be committed
    first = page
    assert report.main(["--root", str(root)]) == 0
    assert (root / "README.md").read_text() == first  # rendering twice changes nothing
    assert report.main(["--root", str(root), "--check"]) == 0


def test_a_hand_edited_figure_is_caught(tmp_path, capsys):
    report = load_report()
    root = fixture(tmp_path)
    report.main(["--root", str(root)])
    readme = root / "README.md"
    readme.write_text(readme.read_text().replace("0.700 ± 0.020", "0.800 ± 0.020"))
    capsys.readouterr()
    assert report.main(["--root", str(root), "--check"]) == 1
    assert "README.md" in capsys.readouterr().err


def test_the_committed_pages_are_what_the_report_renders(capsys):
    report = load_report()
    assert report.main(["--root", str(ROOT), "--check"]) == 0, capsys.readouterr().err


def test_the_overoptimisation_findings_follow_the_figures():
    """The two criteria are judged from the figures: each sentence says holds or fails as they do."""
    report = load_report()
    models = ("rm", "twin", "vrm", "rm+penalty", "twin+penalty", "vrm+penalty")
    bon = {"n": [1, 64], **{m: {"gold": [0.0, g]} for m, g in zip(models, (1.0, 2.0, 2.5, 1.5, 2.2, 2.4))}}
    ppo = {m: {"gold": [-1.0, g, end], "gold_se": [0.1] * 3, "kl": [0.0, 2.0, 9.0], "beta": 0.05,
                "step": [0, 10, 20]}
           for m, g, end in zip(models, (0.0, 0.5, 0.2, 0.1, 0.4, 0.3), (-2.0, -1.0, -0.5, -1.5, 0.45, -2.5))}
    record = {"best_of_n": bon, "ppo": {"weak": ppo},
              "selection": {"vrm+penalty": {"uncertainty": "vrm+ensemble", "kappa": 1.0}},
              "ood": {"vrm+ensemble": {"auroc": {"filler_only": 0.8}}, "rm+penalty": {"auroc": {"filler_only": 0.6}}}}
    best_of_64, final_gold, falls, ood = report.overoptimisation_findings(record)
    assert "mean gold reward 2.400, against 2.000 for the twin and 1.000 for the RM" in best_of_64
    assert best_of_64.endswith("the criterion that VRM's is the higher holds.")
    assert "holds for the unpenalised one" in final_gold and "fails for the penalised VRM" in final_gold
    assert "rm 2.00 (peak at KL 2.0, step 10 of 20)" in falls and "twin+penalty 0.00 (peak at KL 9.0, step 20 of 20)" in falls
    assert ood == "The best out-of-distribution AUROC of any sd: filler-only 0.80 (vrm+ensemble)."
    bon["vrm+penalty"]["gold"][1] = 1.9  # below the twin's
    assert report.overoptimisation_findings(record)[0].endswith("the criterion that VRM's is the higher fails.")


def test_the_verdict_table_judges_each_claim_by_its_standard_errors(tmp_path):
    """A claim is "better" or "worse" at an n only beyond 2 se of the paired per-seed differences,
    each metric in its own direction; the table says so per n, and says when the posterior sd has
    no error bars."""
    report = load_report()
    curves = {"vrm-informative": {"n": [50, 100], "per_seed": {"log_loss": [[0.60, 0.62], [0.50, 0.52]],
                                                               "accuracy": [[0.7, 0.7], [0.8, 0.9]],
                                                               "w_recovery": [[0.5, 0.6], [0.3, 0.4]]}},
              "vrm": {"n": [50, 100], "per_seed": {"log_loss": [[0.70, 0.72], [0.50, 0.56]],
                                                   "accuracy": [[0.7, 0.7], [0.8, 0.9]],
                                                   "w_recovery": [[0.2, 0.3], [0.3, 0.3]]}}}
    comparisons = [{"claim": "the prior matters", "data": "simulated-text", "model": "vrm-informative",
                    "against": "vrm"}]
    (tmp_path / "learning_curve.json").write_text(json.dumps({"run": RUN, "comparisons": comparisons,
                                                              "results": {"simulated-text": curves}}))
    rendered = report.verdict(tmp_path)
    # log loss: -0.1 ± 0 at n = 50 (lower: better), -0.02 ± 0.02 at n = 100; accuracy: no difference;
    # recovery of w, higher is better: +0.3 ± 0 at n = 50, +0.05 ± 0.05 at n = 100; no shifted split
    assert ("| the prior matters | simulated-text | vrm-informative - vrm | -0.020 ± 0.020; better at n = 50; "
            "within noise at n = 100 | +0.000 ± 0.000; within noise at every n | - | +0.050 ± 0.050; better at "
            "n = 50; within noise at n = 100 |") in rendered
    bon = {"n": [1, 64], "vrm": {"gold": [0.0, 2.0]}, "vrm+posterior-sd": {"gold": [0.0, 2.5]},
           "vrm+penalty": {"gold": [0.0, 2.5]}, "twin+penalty": {"gold": [0.0, 2.2]}}
    (tmp_path / "overoptimisation.json").write_text(json.dumps({"run": RUN, "best_of_n": bon}))
    assert "| +0.500 (one seed, no se) | not measured with error bars |" in report.verdict(tmp_path)
    bon["vrm"]["gold_per_seed"] = [[0.0, 2.0], [0.0, 1.0]]
    bon["vrm+posterior-sd"]["gold_per_seed"] = [[0.0, 2.5], [0.0, 1.4]]
    bon["vrm+penalty"]["gold_per_seed"] = bon["twin+penalty"]["gold_per_seed"] = [[0.0, 2.0], [0.0, 2.0]]
    ppo = {"weak": {"vrm": {"gold": [0.0, 1.0], "final_gold_per_seed": [1.0, 0.6]},
                    "twin": {"gold": [0.0, 0.5], "final_gold_per_seed": [0.5, 0.6]},
                    "rm": {"gold": [0.0, -3.0]}}}
    (tmp_path / "overoptimisation.json").write_text(json.dumps({"run": RUN, "best_of_n": bon, "ppo": ppo}))
    rendered = report.verdict(tmp_path)
    assert "| +0.450 ± 0.050 (2 seeds) | better |" in rendered
    assert "| +0.000 ± 0.000 (2 seeds) | within noise |" in rendered
    # PPO's final gold, paired by seed: vrm - twin is +0.5 and 0, so +0.25 ± 0.25: within 2 se
    assert ("| VRM beats the twin | PPO's final gold at the weak KL penalty, vrm minus twin | +0.250 ± 0.250 "
            "(2 seeds) | within noise |") in rendered
    assert "| PPO's final gold at the weak KL penalty, vrm minus rm | +4.000 (one seed, no se) |" in rendered
