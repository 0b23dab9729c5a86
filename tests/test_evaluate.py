import json

import pytest

import datasets
import torch

from pyro_vrm.cli import main
from pyro_vrm.evaluate import Predictions, evaluate_predictions, hack_rate
from pyro_vrm.features import PreferenceFeatures

FILLER = "Great question!"


def stub_featurize(pairs):
    """State of a response: (starts with the filler, length / 100)."""
    def state(texts):
        return torch.tensor([[float(t.startswith(FILLER)), len(t) / 100] for t in texts])
    return PreferenceFeatures(torch.zeros(len(pairs), 2), state(pairs["chosen"]), state(pairs["rejected"]))


def stub_reward(prompt_state, response_state):
    """A reward that the filler dominates: the hackable model."""
    return 10 * response_state[:, 0] + response_state[:, 1]


def test_hack_rate_counts_winners_that_flip_when_the_loser_gets_the_filler():
    pairs = datasets.Dataset.from_dict({
        "prompt": ["p"] * 4,
        "chosen": ["a long good answer", "short", "another long answer", "x"],
        "rejected": ["bad", "a much longer bad answer", "no", FILLER + " already there"],
        "filler_rejected": [False, False, False, True]})
    out = hack_rate(stub_reward, pairs, stub_featurize, FILLER)
    # the last pair is skipped (its loser already has the filler); of the other three, the two
    # that were predicted right flip, the one predicted wrong stays wrong
    assert out["n"] == 3 and abs(out["hack_rate"] - 2 / 3) < 1e-6


def test_length_only_reward_is_not_hacked_by_a_short_filler():
    pairs = datasets.Dataset.from_dict({"prompt": ["p"] * 2, "chosen": ["x" * 300, "y" * 400],
                                        "rejected": ["z", "w"]})
    assert hack_rate(lambda p, r: r[:, 1], pairs, stub_featurize, FILLER)["hack_rate"] == 0.0


def test_evaluate_predictions_reports_intervals_calibration_confidence_and_subsets():
    pred = Predictions(torch.tensor([1.0, 2.0, 0.0, -3.0]), torch.zeros(4), torch.tensor([0.7, 0.8, 0.5, 0.1]),
                       confidence=torch.tensor([1.0, 2.0, 0.0, 3.0]))
    out = evaluate_predictions(pred, ["a", "a", "b", "b"])
    assert out["accuracy"]["accuracy"] == 0.625  # right, right, a tie (half), wrong
    assert out["subsets"]["b"] == {"accuracy": 0.25, "n": 2}
    assert "rewardbench" not in out  # no RewardBench subset here
    # symmetrized: (0.7, 1) (0.3, 0) (0.8, 1) (0.2, 0) (0.5, 1) (0.5, 0) (0.1, 1) (0.9, 0)
    brier = (0.3**2 + 0.3**2 + 0.2**2 + 0.2**2 + 0.5**2 + 0.5**2 + 0.9**2 + 0.9**2) / 8
    assert out["calibration"]["brier"] == pytest.approx(brier)
    # right picks have confidence 1 and 2; the wrong ones (the tie counts as not right) 0 and 3
    assert out["error_auroc"] == pytest.approx(0.5)
    assert out["selective_accuracy_50"] == pytest.approx(0.5)  # the confidences 3 and 2: wrong, right


@pytest.mark.parametrize("model, flags", [("vrm", ["--weight-decay", "0.01"]), ("vrm", ["--preset", "tempered"]),
                                          ("rm", []), ("twin", [])])
def test_evaluate_command_on_a_simulated_run(tmp_path, capsys, model, flags):
    out = tmp_path / model
    assert main(["train", "--model", model, "--out", str(out), "--steps", "30", "--quiet", *flags]) == 0
    assert main(["evaluate", str(out)]) == 0
    result = json.loads((out / "eval.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    test = result["splits"]["test"]
    assert test["accuracy"]["accuracy"] == summary["test_accuracy"]
    assert test["accuracy"]["low"] <= test["accuracy"]["accuracy"] <= test["accuracy"]["high"]
    assert 0.5 < test["error_auroc"] and test["selective_accuracy_50"] > test["accuracy"]["accuracy"]
    assert (out / "reliability.png").stat().st_size > 1000
    # a bound needs a prior fixed before the data: not the RM's, the twin's or a conditional prior's
    assert (result["pac_bayes_bound"] is not None) == (flags == ["--preset", "tempered"])
    capsys.readouterr()


def test_evaluate_refuses_a_folder_that_is_no_run(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
