import json
import math
import re
import shutil

import datasets
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


def training_responses() -> tuple[list[str], list[str]]:
    """The (prompt, response) of every training response of train_on_text's runs."""
    data = simulated_text.simulate_text(simulated_text.TextSimulationConfig(num_prompts=12))
    rows = [row for row in data if row["split"] == "train"]
    return [r["prompt"] for r in rows] * 2, [r["chosen"] for r in rows] + [r["rejected"] for r in rows]


def test_an_ensemble_of_runs_scores_the_mixture_of_its_members_each_on_its_own_scale(run_dir, tmp_path):
    other = train_on_text(tmp_path / "seed1", "--seed", "1")
    prompts, responses = training_responses()
    for run in (run_dir, other):  # each run recorded its reward statistics on its training responses
        stats = json.loads((run / "summary.json").read_text())["reward_statistics"]
        own, _ = RewardModel.from_run(run).score(prompts, responses)
        assert stats["responses"] == len(responses)
        assert stats["mean"] == pytest.approx(own.mean().item(), abs=1e-4)
        assert stats["sd"] == pytest.approx(own.std().item(), rel=1e-3)
        alone, _ = RewardModel.from_runs([run]).score(prompts, responses)  # no reference text handed
        assert abs(alone.mean().item()) < 1e-3 and alone.std().item() == pytest.approx(1, abs=1e-3)
    members = [RewardModel.from_run(run).score(PROMPTS, RESPONSES) for run in (run_dir, other)]
    scales = [json.loads((run / "summary.json").read_text())["reward_statistics"] for run in (run_dir, other)]
    ensemble = RewardModel.from_runs([run_dir, other])
    assert ensemble.kind == "ensemble" and len(ensemble.config["members"]) == 2
    mean, sd = ensemble.score(PROMPTS, RESPONSES)
    means = torch.stack([(m - s["mean"]) / s["sd"] for (m, _), s in zip(members, scales)])
    within = torch.stack([sd / s["sd"] for (_, sd), s in zip(members, scales)]).pow(2).mean(0)
    assert torch.allclose(mean, means.mean(0), atol=1e-5)
    assert torch.allclose(sd**2, within + means.var(0, correction=0), atol=1e-5)
    ensemble.save_pretrained(tmp_path / "saved")
    again = RewardModel.from_pretrained(tmp_path / "saved").score(PROMPTS, RESPONSES)
    assert torch.allclose(again[0], mean, atol=1e-6) and torch.allclose(again[1], sd, atol=1e-6)


def test_a_conversation_is_scored_as_the_training_prompts_were_rendered(run_dir, tmp_path):
    rm = RewardModel.from_run(run_dir)  # simulated-text: plain-text prompts
    assert rm.config["prompt_form"] == "text"
    messages = [[{"role": "user", "content": p}] for p in PROMPTS]
    replies = [[{"role": "assistant", "content": r}] for r in RESPONSES]
    assert rm(prompts=messages, completions=replies, completion_ids=[[1], [2]], trainer_state=None) == \
        rm(prompts=PROMPTS, completions=RESPONSES)
    with pytest.raises(ValueError, match=r"prompts\[0\] is a conversation of the roles \['user', 'assistant', 'user'\]"
                                         r", but this reward model was trained on plain-text prompts"):
        rm(prompts=[[*messages[0], replies[0][0], *messages[1]]], completions=RESPONSES[:1])
    rm.config["prompt_form"] = "conversation"  # as a run on HH-RLHF or message lists records it
    transcript = [f"\n\nHuman: {p}\n\nAssistant:" for p in PROMPTS]
    assert torch.equal(rm.score(messages, replies)[0], rm.score(transcript, RESPONSES)[0])
    dialogue = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}, *messages[0]]
    as_hh = f"\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: {PROMPTS[0]}\n\nAssistant:"
    features = [rm.backbone.encode(*rm._texts([p], RESPONSES[:1], ("prompts", "responses"))) for p in (dialogue, as_hh)]
    assert all(torch.equal(a, b) for a, b in zip(features[0][:2], features[1][:2]))  # the same hidden states


@pytest.mark.parametrize("prompts, completions, error", [
    ("How?", ["Fine."], r"TypeError: prompts must be a list \(one item per response\), got str"),
    (["How?", 3], ["a", "b"], r"TypeError: prompts\[1\] must be a string or a list of \{'role', 'content'\} messages, got int"),
    (["How?"], [[{"role": "user", "content": "a"}]], r"ValueError: completions\[0\] must be one assistant message"),
    (["How?"], ["a", "b"], r"ValueError: prompts has 1 items and completions 2"),
    ([[{"role": "robot", "content": "a"}]], ["b"], r"ValueError: prompts\[0\]\[0\]\.role is 'robot'"),
])
def test_what_trl_cannot_pass_is_named(run_dir, prompts, completions, error):
    rm = RewardModel.from_run(run_dir)
    with pytest.raises((TypeError, ValueError)) as info:
        rm(prompts=prompts, completions=completions)
    assert re.search(error, f"{info.type.__name__}: {info.value}")


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


@pytest.mark.parametrize("conversational", [False, True])
def test_trls_grpo_trainer_trains_against_the_reward_model(run_dir, tmp_path, conversational):
    """The client users plug a reward model into: TRL's GRPOTrainer, on a standard data set
    (``{"prompt": str}``) and a conversational one (``{"prompt": [messages]}``)."""
    from trl import GRPOConfig, GRPOTrainer

    from pyro_vrm.policy import TinyPolicyConfig, tiny_policy

    rm = RewardModel.from_run(run_dir)
    policy, tokenizer = tiny_policy([*PROMPTS, *RESPONSES], TinyPolicyConfig(policy_layers=1, policy_width=16))
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"  # the policy's own form
    prompts = [[{"role": "user", "content": p}] for p in PROMPTS] if conversational else PROMPTS
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4,
                      max_completion_length=8, max_steps=2, use_cpu=True, bf16=False, report_to="none", logging_steps=1,
                      save_strategy="no", disable_tqdm=True, seed=0)
    trainer = GRPOTrainer(model=policy, reward_funcs=[rm], args=args, processing_class=tokenizer,
                          train_dataset=datasets.Dataset.from_dict({"prompt": prompts * 2}))
    trainer.train()
    logged = [record["rewards/vrm_reward/mean"] for record in trainer.state.log_history
              if "rewards/vrm_reward/mean" in record]
    assert len(logged) == 2 and all(math.isfinite(r) for r in logged)
    # the last batch's rewards are the reward model's scores of what TRL passed it
    texts, completions = list(trainer._logs["prompt"]), list(trainer._logs["completion"])
    assert isinstance(completions[0], list) == conversational
    assert list(trainer._logs["rewards"]["vrm_reward"]) == pytest.approx(rm(texts, completions), abs=1e-5)
