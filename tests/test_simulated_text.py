import torch

from pyro_vrm.simulated_text import ASPECTS, FILLER, TextSimulationConfig, simulate_text


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
