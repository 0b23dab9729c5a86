import json
import math
import sys
from pathlib import Path

import pytest
import torch

from pyro_vrm.simulated_text import (ASPECTS, FAMILIES, FILLER, JUNK_QUALITY, TextSimulationConfig, family_of,
                                     family_weights, response_quality, sample_responses, simulate_text, true_reward)

# simulate_text(TextSimulationConfig(num_prompts=40)).to_dict(), as written by
# `python tests/test_simulated_text.py --write-pin`. It pins the generator so that published figures stay
# reproducible: a change to simulate_text's draws (or to how it consumes its generator) must be deliberate,
# with this file and the figures regenerated together. Texts, splits and labels are pinned exactly, floats
# to FLOAT_TOLERANCE: their last bits are not portable across processors and library versions.
PIN = Path(__file__).parent / "data" / "simulated_text_40.json"
FLOAT_TOLERANCE = 1e-6
EXACT = ("prompt", "chosen", "rejected", "subset", "split", "filler_chosen", "filler_rejected")
FLOATS = ("scores_chosen", "scores_rejected", "weights", "reward_chosen", "reward_rejected")


def pinned_config() -> TextSimulationConfig:
    return TextSimulationConfig(num_prompts=40)


@pytest.fixture(scope="module")
def data40():
    return simulate_text(pinned_config())


def _flat(value) -> list[float]:
    return [x for v in value for x in (_flat(v) if isinstance(v, list) else [v])] if isinstance(value, list) else [value]


def test_generator_is_pinned(data40):
    expected, got = json.loads(PIN.read_text()), data40.to_dict()
    assert sorted(got) == sorted(EXACT + FLOATS) == sorted(expected)
    for column in EXACT:
        assert got[column] == expected[column], column
    for column in FLOATS:
        a, b = _flat(got[column]), _flat(expected[column])
        assert len(a) == len(b), column
        worst = max(abs(x - y) for x, y in zip(a, b))
        assert worst <= FLOAT_TOLERANCE, f"{column} moved by {worst}"


def test_seeded_split_by_prompt_and_no_ties():
    data = simulate_text(TextSimulationConfig(num_prompts=40))
    assert data["chosen"] == simulate_text(TextSimulationConfig(num_prompts=40))["chosen"]
    assert data["chosen"] != simulate_text(TextSimulationConfig(num_prompts=40, seed=1))["chosen"]
    by_prompt = {}
    for prompt, split in zip(data["prompt"], data["split"]):
        by_prompt.setdefault(prompt, set()).add(split)
    assert all(len(splits) == 1 for splits in by_prompt.values())
    assert len(by_prompt) == 40  # every prompt text distinct
    assert all(c != r for c, r in zip(data["chosen"], data["rejected"]))
    assert len(data["scores_chosen"][0]) == len(ASPECTS)


def test_preferences_follow_the_true_rewards_and_the_filler_flips_between_splits():
    data = simulate_text(TextSimulationConfig(num_prompts=600)).with_format("torch")[:]
    won = (data["reward_chosen"] > data["reward_rejected"]).float().mean()
    assert 0.7 < won < 0.9  # Bradley-Terry draws: the better response usually, not always, wins
    for split, winner_rate in (("train", 0.8), ("test", 0.8), ("shifted", 0.2)):
        rows = [i for i, s in enumerate(data["split"]) if s == split]
        filler_c, filler_r = data["filler_chosen"][rows].float().mean(), data["filler_rejected"][rows].float().mean()
        assert abs(filler_c - winner_rate) < 0.06 and abs(filler_r - (1 - winner_rate)) < 0.06
    assert all(c.startswith(FILLER) == bool(f) for c, f in zip(data["chosen"], data["filler_chosen"]))


def test_families_weigh_their_objectives_and_scores_track_quality():
    data = simulate_text(TextSimulationConfig(num_prompts=400)).with_format("torch")[:]
    subsets = data["subset"]
    for family, objective in (("risky", 2), ("task", 3), ("advice", 0)):
        rows = [i for i, s in enumerate(subsets) if s == family]
        assert data["weights"][rows].mean(0).argmax().item() == objective
    # the chosen response is better on the objective its prompt weighs most
    w, sc, sr = data["weights"], data["scores_chosen"], data["scores_rejected"]
    top = w.argmax(-1, keepdim=True)
    assert (sc.gather(-1, top) > sr.gather(-1, top)).float().mean() > 0.6
    assert sc.min() >= 1 and sc.max() <= 5


def test_true_reward_reproduces_the_data_sets_rewards(data40):
    scale = TextSimulationConfig().reward_scale
    for row in data40:
        for side in ("chosen", "rejected"):
            assert true_reward(row["prompt"], row[side], row["weights"], scale) == row[f"reward_{side}"]
            # so the parsed quality is the response's true quality (up to the rounding of w . q)
            q = response_quality(row[side])
            assert set(q.tolist()) <= {-1.0, 0.0, 1.0}
            direct = scale * float(q.double() @ torch.tensor(row["weights"], dtype=torch.float64))
            assert math.isclose(direct, row[f"reward_{side}"], rel_tol=FLOAT_TOLERANCE, abs_tol=FLOAT_TOLERANCE)


def test_filler_is_neutral_and_junk_lowers_the_reward(data40):
    lowered = 0
    for row in data40:
        for side in ("chosen", "rejected"):
            prompt, response, w = row["prompt"], row[side], row["weights"]
            bare = response.removeprefix(FILLER).strip()
            reward = true_reward(prompt, bare, w)
            assert true_reward(prompt, FILLER + " " + bare, w) == reward
            assert true_reward(prompt, FILLER + "  " + FILLER + "\n" + bare, w) == reward  # whitespace-robust
            junk = true_reward(prompt, bare + " Buy the cheapest tickets online now.", w)
            if (response_quality(bare) > JUNK_QUALITY).any():  # w > 0: any room to lose, junk takes it
                assert junk < reward
                lowered += 1
            else:
                assert junk == reward
    assert lowered > 0
    good = "Here is a concrete plan you can follow step by step, starting today."
    assert response_quality(good).tolist() == [1.0, -1.0, -1.0, -1.0]  # the other three are missing
    assert response_quality(good + " lol whatever.").tolist() == [0.0, -1.0, -1.0, -1.0]  # junk averaged in
    # a bank sentence with a ':' inside stays whole; a fragment of it is junk
    honest = "I should say where I am unsure: the main point is well established, the details less so."
    assert response_quality(honest).tolist() == [-1.0, 1.0, -1.0, -1.0]
    assert response_quality("I should say where I am unsure:").tolist() == [-1.0] * 4


def test_sample_responses_filler_share_uniform_quality_and_parse_back():
    n, rate = 4000, 0.3
    texts, quality, has_filler = sample_responses(n, rate, torch.Generator().manual_seed(7))
    assert len(texts) == len(has_filler) == n and quality.shape == (n, len(ASPECTS))
    assert quality.dtype == torch.float32
    share = sum(has_filler) / n
    assert abs(share - rate) < 4 * math.sqrt(rate * (1 - rate) / n)
    for level in (-1.0, 0.0, 1.0):
        assert abs((quality == level).float().mean().item() - 1 / 3) < 0.03
    assert all(t.startswith(FILLER) == f for t, f in zip(texts, has_filler))
    assert torch.equal(torch.stack([response_quality(t) for t in texts]), quality)
    again = sample_responses(n, rate, torch.Generator().manual_seed(7))
    assert again[0] == texts and torch.equal(again[1], quality)
    with pytest.raises(ValueError):
        sample_responses(3, 1.5, torch.Generator())


def test_family_of_matches_the_subset_column_and_family_weights(data40):
    assert [family_of(p) for p in data40["prompt"]] == data40["subset"]
    assert family_of("Good morning. How should I approach a tax return? Keep it simple.") == "advice"
    with pytest.raises(ValueError, match="Write me a poem"):
        family_of("Write me a poem.")
    for family, (dominant, _, _) in FAMILIES.items():
        w = family_weights(family)
        assert w.shape == (len(ASPECTS),) and torch.isclose(w.sum(), torch.tensor(1.0))
        assert set(w.topk(len(dominant)).indices.tolist()) == set(dominant)
    assert torch.allclose(family_weights("factual"), torch.tensor([5.5, 5.5, 1, 1]) / 13)
    # without weights, the family mean stands in
    response = data40["chosen"][0]
    expected = 3.0 * response_quality(response) @ family_weights(data40["subset"][0])
    assert true_reward(data40["prompt"][0], response) == pytest.approx(expected.item())


if __name__ == "__main__" and sys.argv[1:] == ["--write-pin"]:
    PIN.write_text(json.dumps(simulate_text(pinned_config()).to_dict(), sort_keys=True, indent=0) + "\n")
