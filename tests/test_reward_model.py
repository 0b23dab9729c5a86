import json
import shutil

import pytest
import torch

from pyro_vrm import simulated_text
from pyro_vrm.cli import main
from pyro_vrm.posterior import reward_posterior
from pyro_vrm.reward_model import RewardModel, VRMRewardModel

PROMPTS = ["How can I skip paying for the bus?", "Write three bullet points about bees."]
RESPONSES = ["Please stay safe and within the law; here is what you can do instead.",
             "I will answer in my own way instead of the format you asked for."]


def train_on_text(root, *flags):
    original = simulated_text.TextSimulationConfig
    simulated_text.TextSimulationConfig = lambda seed=0: original(num_prompts=12)
    try:
        assert main(["train", "--data", "simulated-text", "--out", str(root / "run"), "--cache-dir", str(root),
                     "--max-length", "48", "--steps", "20", "--batch-size", "8", "--width", "16", "--quiet",
                     *flags]) == 0
    finally:
        simulated_text.TextSimulationConfig = original
    return root / "run"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train_on_text(tmp_path_factory.mktemp("reward_model"))


def test_scores_survive_save_and_reload(run_dir, tmp_path):
    rm = VRMRewardModel.from_run(run_dir)
    mean, sd = rm.score(PROMPTS, RESPONSES)
    assert mean.shape == sd.shape == (2,) and torch.all(sd > 0)
    rm.save_pretrained(tmp_path / "rm")
    assert json.loads((tmp_path / "rm" / "config.json").read_text())["backbone"]["backbone"] == "minilm"
    again = VRMRewardModel.from_pretrained(tmp_path / "rm")
    mean2, sd2 = again.score(PROMPTS, RESPONSES)
    assert torch.equal(mean, mean2) and torch.equal(sd, sd2)


def test_the_score_is_the_posterior_of_the_pairs_own_states(run_dir):
    rm = VRMRewardModel.from_run(run_dir)
    pairs = rm.backbone.encode_pairs(PROMPTS, RESPONSES, RESPONSES[::-1])
    mean, _ = rm.score(PROMPTS, RESPONSES)
    expected, _ = reward_posterior(rm.model, pairs.prompt_state, pairs.chosen_state)
    assert torch.allclose(mean, expected, atol=1e-6)


def test_risk_averse_callable_subtracts_kappa_sd(run_dir):
    neutral, averse = VRMRewardModel.from_run(run_dir), VRMRewardModel.from_run(run_dir, kappa=2.0)
    mean, sd = neutral.score(PROMPTS, RESPONSES)
    assert neutral(prompts=PROMPTS, completions=RESPONSES) == pytest.approx(mean.tolist())
    assert averse(prompts=PROMPTS, completions=RESPONSES) == pytest.approx((mean - 2.0 * sd).tolist())


def test_a_run_without_text_has_no_backbone(tmp_path):
    assert main(["train", "--out", str(tmp_path / "sim"), "--steps", "5", "--quiet"]) == 0
    with pytest.raises(ValueError, match="no backbone to score text with"):
        VRMRewardModel.from_run(tmp_path / "sim")


@pytest.mark.parametrize("model", ["rm", "twin"])
def test_a_point_estimate_scores_its_own_reward_with_no_sd(tmp_path, model):
    rm = RewardModel.from_run(train_on_text(tmp_path, "--model", model))
    assert rm.kind == model and rm.__name__ == f"{model}_reward"
    mean, sd = rm.score(PROMPTS, RESPONSES)
    pairs = rm.backbone.encode_pairs(PROMPTS, RESPONSES, RESPONSES[::-1])
    with torch.no_grad():
        assert torch.allclose(mean, rm.model(pairs.prompt_state, pairs.chosen_state), atol=1e-6)
    assert torch.equal(sd, torch.zeros(2))
    rm.save_pretrained(tmp_path / "saved")
    assert torch.equal(RewardModel.from_pretrained(tmp_path / "saved").score(PROMPTS, RESPONSES)[0], mean)


def test_an_ensemble_of_runs_scores_the_mixture_of_its_members(run_dir, tmp_path):
    other = train_on_text(tmp_path / "seed1", "--seed", "1")
    members = [RewardModel.from_run(run_dir).score(PROMPTS, RESPONSES), RewardModel.from_run(other).score(PROMPTS, RESPONSES)]
    ensemble = RewardModel.from_runs([run_dir, other])
    assert ensemble.kind == "ensemble" and len(ensemble.config["members"]) == 2
    mean, sd = ensemble.score(PROMPTS, RESPONSES)
    means = torch.stack([m for m, _ in members])
    within = torch.stack([s for _, s in members]).pow(2).mean(0)
    assert torch.allclose(mean, means.mean(0), atol=1e-6)
    assert torch.allclose(sd**2, within + means.var(0, correction=0), atol=1e-6)
    ensemble.save_pretrained(tmp_path / "saved")
    again = RewardModel.from_pretrained(tmp_path / "saved").score(PROMPTS, RESPONSES)
    assert torch.allclose(again[0], mean, atol=1e-6) and torch.allclose(again[1], sd, atol=1e-6)


def test_an_ensemble_standardized_on_reference_text_has_its_members_on_one_scale(run_dir, tmp_path):
    prompts, responses = PROMPTS * 3, [*RESPONSES, *RESPONSES[::-1], RESPONSES[0], RESPONSES[0] + " Thanks!"]
    ensemble = RewardModel.from_runs([run_dir, run_dir], reference=(prompts, responses))
    member, _ = RewardModel.from_run(run_dir).score(prompts, responses)
    mean, sd = ensemble.score(prompts, responses)
    assert torch.allclose(mean, (member - member.mean()) / member.std(), atol=1e-5)
    assert abs(mean.mean().item()) < 1e-5 and abs(mean.std().item() - 1) < 1e-5


def test_an_ensemble_needs_one_backbone(run_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    config = json.loads((other / "config.json").read_text())
    config["backbone_config"]["max_length"] += 1
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"{other}: its backbone .* differs from that of {run_dir}"):
        RewardModel.from_runs([run_dir, other])
