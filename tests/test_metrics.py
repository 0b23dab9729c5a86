import math

import pytest
import torch

from pyro_vrm.metrics import (REWARDBENCH_SECTIONS, accuracy_by_subset, auroc, bootstrap_accuracy, calibration, error_auroc,
                              oracle_accuracy, pairwise_accuracy, plot_reliability, rewardbench_scores,
                              selective_accuracy)


def test_pairwise_accuracy_counts_ties_half_and_the_oracle_uses_the_same_rule():
    chosen, rejected = torch.tensor([1.0, 0.0, 2.0, 1.0]), torch.tensor([0.0, 1.0, 2.0, 0.5])
    assert pairwise_accuracy(chosen, rejected) == 0.625
    assert oracle_accuracy({"chosen_reward": chosen, "rejected_reward": rejected}) == 0.625


def test_error_auroc_is_the_probability_a_right_pick_is_the_more_confident():
    g = torch.Generator().manual_seed(0)
    confidence = torch.rand(3000, generator=g)
    correct = (torch.rand(3000, generator=g) < confidence).float()  # right more often when confident
    pairs = [(i, j) for i in range(0, 3000, 7) for j in range(3, 3000, 11) if correct[i] == 1 and correct[j] == 0]
    by_pairs = sum(float(confidence[i] > confidence[j]) + 0.5 * float(confidence[i] == confidence[j])
                   for i, j in pairs) / len(pairs)
    assert error_auroc(confidence, correct) == pytest.approx(by_pairs, abs=0.02)
    assert 0.8 < error_auroc(confidence, correct) < 0.9  # the theoretical value is 5/6
    assert error_auroc(torch.rand(500, generator=g), correct[:500]) == pytest.approx(0.5, abs=0.07)
    assert error_auroc(-confidence, correct) == pytest.approx(1 - error_auroc(confidence, correct))
    assert error_auroc(confidence, torch.ones(3000)) != error_auroc(confidence, torch.ones(3000))  # NaN


def test_selective_accuracy_keeps_the_most_confident_share():
    correct = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    confidence = torch.tensor([0.9, 0.1, 0.8, 0.2, 0.7, 0.3])
    assert selective_accuracy(correct, confidence, 0.5) == pytest.approx(2 / 3)  # 0.9, 0.8, 0.7
    assert selective_accuracy(correct, confidence, 1.0) == pytest.approx(0.5)
    assert selective_accuracy(correct, -confidence, 0.5) == pytest.approx(1 / 3)


def test_bootstrap_interval_covers_the_truth_and_narrows_with_n():
    g = torch.Generator().manual_seed(0)
    small = bootstrap_accuracy((torch.rand(100, generator=g) < 0.7).float())
    large = bootstrap_accuracy((torch.rand(10_000, generator=g) < 0.7).float())
    assert small["low"] < 0.7 < small["high"] and large["low"] < 0.7 < large["high"]
    assert large["high"] - large["low"] < (small["high"] - small["low"]) / 5


def test_a_perfectly_calibrated_predictor_has_near_zero_ece():
    g = torch.Generator().manual_seed(1)
    p = torch.rand(200_000, generator=g)
    first_wins = torch.rand(200_000, generator=g) < p
    prob_chosen = torch.where(first_wins, p, 1 - p)  # the data record the winner as "chosen"
    out = calibration(prob_chosen, num_draws=20)
    assert out["ece"] < 0.01
    assert out["brier"] == pytest.approx(1 / 6, abs=0.005)  # E[p(1 - p)] for p ~ U(0, 1)


def test_constant_and_overconfident_predictors():
    half = calibration(torch.full((100,), 0.5))
    assert half["ece"] == 0 and half["brier"] == pytest.approx(0.25)
    assert half["log_loss"] == pytest.approx(0.6931, abs=1e-4)
    # always 0.9 for the chosen response while it wins only 60% of pairs: ECE = 0.9 - 0.6
    wins = torch.tensor([True] * 60 + [False] * 40)
    sure = calibration(torch.where(wins, 0.9, 0.1))
    assert sure["ece"] == pytest.approx(0.3, abs=1e-6)


def test_rewardbench_sections_by_hand():
    acc = {s: 0.5 for section in REWARDBENCH_SECTIONS.values() for s in section}
    acc["alpacaeval-easy"] = 1.0          # Chat: (100 * 1 + 258 * 0.5) / 358
    acc["math-prm"] = 0.0                 # Reasoning: (984 * 0 + 984 * 0.5) / 1968 = 0.25
    scores = rewardbench_scores(acc)
    chat = (100 * 1.0 + (95 + 95 + 28 + 40) * 0.5) / 358
    assert scores["Chat"] == pytest.approx(chat)
    assert scores["Reasoning"] == pytest.approx(0.25)
    assert scores["Safety"] == pytest.approx(0.5) and scores["Chat Hard"] == pytest.approx(0.5)
    assert scores["Total"] == pytest.approx((chat + 0.5 + 0.5 + 0.25) / 4)
    del acc["hep-go"]
    partial = rewardbench_scores(acc)
    assert partial["Reasoning"] is None and partial["Total"] is None and partial["missing_subsets"] == ["hep-go"]


def test_accuracy_by_subset_and_reliability_plot(tmp_path):
    out = accuracy_by_subset(torch.tensor([1.0, 0.0, 1.0, 1.0]), ["a", "a", "b", "b"])
    assert out == {"a": {"accuracy": 0.5, "n": 2}, "b": {"accuracy": 1.0, "n": 2}}
    plot_reliability({"vrm": calibration(torch.rand(50))}, tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 1000


def test_auroc_is_the_share_of_positive_negative_pairs_ordered_right():
    g = torch.Generator().manual_seed(0)
    positive, negative = torch.randint(0, 4, (9,), generator=g).float(), torch.randint(0, 4, (7,), generator=g).float()
    pairs = [(p > n) + 0.5 * (p == n) for p in positive.tolist() for n in negative.tolist()]
    assert math.isclose(auroc(positive, negative), sum(pairs) / len(pairs))
    assert math.isclose(auroc(negative, positive), 1 - auroc(positive, negative))
    assert math.isnan(auroc(positive, torch.tensor([])))


def test_ece_expected_of_a_calibrated_predictor_matches_its_observed_ece():
    # a calibrated predictor on 300 pairs: its ECE is well above 0 by chance alone, about what the
    # consistency resampling expects, and its p-value is not small
    g = torch.Generator().manual_seed(2)
    pvalues, ratios = [], []
    for _ in range(20):
        p = 0.5 + 0.3 * torch.rand(300, generator=g)
        prob_chosen = torch.where(torch.rand(300, generator=g) < p, p, 1 - p)
        out = calibration(prob_chosen, num_draws=400)
        pvalues.append(out["ece_pvalue"])
        ratios.append(out["ece"] / out["ece_expected"])
    assert 0.75 < sum(ratios) / len(ratios) < 1.25
    assert sum(pv < 0.05 for pv in pvalues) <= 4  # about 1 in 20 by design
    assert 0.02 < calibration(prob_chosen)["ece_expected"] < 0.1


def test_ece_pvalue_flags_an_overconfident_predictor():
    # says 0.75 for pairs whose first response wins 60% of the time
    wins = torch.tensor([True] * 180 + [False] * 120)
    out = calibration(torch.where(wins, 0.75, 0.25))
    assert out["ece"] == pytest.approx(0.15, abs=1e-6)
    assert out["ece_expected"] < 0.06 and out["ece_pvalue"] < 0.01
