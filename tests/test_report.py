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
       "machine": "a CPU, 2 cores, GPU: none", "torch": "2.13.0", "threads": 1}
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
