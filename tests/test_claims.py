"""The claims the README reports for simulated data, at the default settings (same data and seed).

VRM against the Bradley-Terry baseline, and the identification of w by supervision. These run
the real defaults (about a minute and a half together).
"""

import json

import pytest

from pyro_vrm.cli import main


@pytest.fixture(scope="module")
def summaries(tmp_path_factory):
    root = tmp_path_factory.mktemp("claims")
    runs = {"vrm": [], "rm": ["--model", "rm"], "vrm_no_sup": ["--lambda-sup", "0"]}
    out = {}
    for name, argv in runs.items():
        assert main(["train", "--quiet", "--out", str(root / name), *argv]) == 0
        out[name] = json.loads((root / name / "summary.json").read_text())
    return out


def test_vrm_is_at_least_the_baseline_minus_one_point(summaries):
    vrm, rm = summaries["vrm"], summaries["rm"]
    assert vrm["oracle_accuracy"] == rm["oracle_accuracy"]  # same test pairs
    assert vrm["test_accuracy"] >= rm["test_accuracy"] - 0.01
    assert vrm["gap_to_oracle"] >= 0 and rm["gap_to_oracle"] >= 0


def test_supervision_identifies_w(summaries):
    with_sup, without = summaries["vrm"], summaries["vrm_no_sup"]
    assert with_sup["w_recovery"] > without["w_recovery"] + 0.1
    assert with_sup["w_recovery"] > with_sup["target_w_corr"]
