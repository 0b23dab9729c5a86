import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pyro_vrm import simulated_text
from pyro_vrm.cli import main
from pyro_vrm.pipeline import ppo_prompts
from pyro_vrm.ppo_run import POLICY_DIR, save_policy
from pyro_vrm.config import ConfigError
from pyro_vrm.policy import TinyPolicyConfig, tiny_policy
from pyro_vrm.ppo import (KLController, PPOConfig, PPOTrainer, RunningMoments, gae, masked_whiten, policy_loss,
                          token_rewards, value_loss)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and the suite shares its cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- the PPO arithmetic against hand-computed 3-token cases -----------------------------------------


def test_gae_matches_the_recursion_worked_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 5.0]])
    values = torch.tensor([[0.5, 0.2, 0.4], [0.5, 0.2, 99.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # the second completion ends after 2 tokens
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    # row 0: delta = (1 - 0.4, 0.9*0.4 - 0.2, 0.9*0.2 - 0.5) from the end; A_t = delta_t + 0.45 A_{t+1}
    a2 = 0.6
    a1 = 0.16 + 0.45 * a2         # 0.43
    a0 = -0.32 + 0.45 * a1        # -0.1265
    # row 1: the token past the end is ignored, its value too
    b1 = 1.0 - 0.2                # 0.8
    b0 = 0.9 * 0.2 - 0.5 + 0.45 * b1   # 0.04
    assert torch.allclose(advantages, torch.tensor([[a0, a1, a2], [b0, b1, 0.0]]))
    assert torch.allclose(returns, torch.tensor([[a0 + 0.5, a1 + 0.2, a2 + 0.4], [b0 + 0.5, b1 + 0.2, 0.0]]))


def test_kl_penalty_on_every_token_and_the_score_on_the_last_generated_one():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -2.0, -0.5]])
    ref_logprobs = torch.tensor([[-1.5, -1.0, -0.5], [-1.5, -1.0, -3.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards, kl = token_rewards(torch.tensor([2.0, 2.0]), logprobs, ref_logprobs, mask, beta=0.1)
    assert torch.allclose(kl, torch.tensor([[0.5, -1.0, 0.0], [0.5, -1.0, 0.0]]))
    assert torch.allclose(rewards, torch.tensor([[-0.05, 0.1, 2.0], [-0.05, 0.1 + 2.0, 0.0]]))


def test_clipped_policy_loss_and_its_gradient():
    ratio = torch.tensor([[1.5, 0.5, 1.1]])
    logprobs = ratio.log().requires_grad_()
    advantages, mask = torch.tensor([[1.0, 1.0, -1.0]]), torch.ones(1, 3)
    loss, clip_fraction = policy_loss(logprobs, torch.zeros(1, 3), advantages, mask, clip_range=0.2)
    # token 0: max(-1.5, -1.2) = -1.2 (clipped); token 1: max(-0.5, -0.8) = -0.5; token 2: 1.1 either way
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.1) / 3)
    assert clip_fraction.item() == pytest.approx(1 / 3)
    loss.backward()
    # d/dlogp of -A * ratio is -A * ratio / 3; the clipped token gets no gradient
    assert torch.allclose(logprobs.grad, torch.tensor([[0.0, -0.5 / 3, 1.1 / 3]]))


def test_clipped_value_loss():
    values, old_values = torch.tensor([[0.5, -0.1, 0.3]]), torch.zeros(1, 3)
    returns, mask = torch.tensor([[1.0, 0.0, -1.0]]), torch.ones(1, 3)
    loss, clip_fraction = value_loss(values, old_values, returns, mask, clip_range=0.2)
    # token 0: max(0.25, (0.2 - 1)^2 = 0.64); token 1: 0.01 both; token 2: max(1.69, (0.2 + 1)^2 = 1.44)
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.01 + 1.69) / 3)
    assert clip_fraction.item() == pytest.approx(1 / 3)


def test_masked_whiten_standardizes_the_real_tokens_only():
    x, mask = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, -7.0]]), torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    white = masked_whiten(x, mask)
    real = white[mask.bool()]
    assert real.mean().abs() < 1e-6 and real.pow(2).mean().sqrt() == pytest.approx(1.0, abs=1e-4)
    assert white[1, 1] == 0 and white[1, 2] == 0
    assert torch.allclose(real, (torch.tensor([1.0, 2, 3, 4]) - 2.5) / torch.tensor([1.0, 2, 3, 4]).std(unbiased=False))


def test_kl_controller_fixed_and_adaptive():
    assert KLController(0.3).update(kl=100.0, n=64) == 0.3  # target 0: fixed
    adaptive = KLController(0.1, target=4.0, horizon=1000)
    assert adaptive.update(kl=4.4, n=100) == pytest.approx(0.1 * (1 + 0.1 * 0.1))  # error 4.4/4 - 1 = 0.1
    assert adaptive.update(kl=40.0, n=100) == pytest.approx(0.1 * 1.01 * (1 + 0.2 * 0.1))  # error clipped at 0.2
    assert KLController(0.1, target=4.0, horizon=1000).update(kl=0.0, n=100) == pytest.approx(0.1 * (1 - 0.2 * 0.1))


def test_running_moments_equal_the_moments_of_everything_seen():
    batches = [torch.randn(5) * 3 + 1, torch.randn(1), torch.randn(11) - 2]
    moments = RunningMoments()
    for b in batches:
        moments.update(b)
    everything = torch.cat(batches)
    assert moments.mean == pytest.approx(everything.mean().item(), abs=1e-5)
    assert moments.sd == pytest.approx(everything.std().item(), abs=1e-5)


def test_bad_config_values_name_the_flag():
    with pytest.raises(ConfigError, match="--minibatch-size"):
        PPOConfig(rollouts_per_step=8, minibatch_size=16)
    with pytest.raises(ConfigError, match="--lam"):
        PPOConfig(lam=1.5)
    with pytest.raises(SystemExit):
        main(["ppo", "--kappa", "-1"])


# -- PPO on a one-word task with a stub reward whose mean and sd are known -----------------------------

WORDS = ["alpha", "beta"]


def stub_reward(prompts, completions):
    """'alpha' has mean 1 and sd 1; anything else mean 0 and sd 0."""
    chosen = torch.tensor([c.strip() == "alpha" for c in completions], dtype=torch.float32)
    return chosen, chosen


def one_word_trainer(**overrides):
    model, tokenizer = tiny_policy(["say a word", *WORDS], TinyPolicyConfig(policy_layers=1, policy_width=16))
    config = PPOConfig(**{"max_new_tokens": 1, "rollouts_per_step": 32, "minibatch_size": 16, "lr": 1e-2,
                          "beta": 0.01, "eval_rollouts": 256, **overrides})
    return PPOTrainer(model, tokenizer, stub_reward, config)


def alpha_share(trainer) -> float:
    rollouts, _ = trainer.evaluate(["say a word"] * 256)
    return sum(c.strip() == "alpha" for c in rollouts.completions) / 256


@pytest.mark.parametrize("kappa", [0.0, 2.0])
def test_ppo_optimizes_mean_minus_kappa_sd(kappa):
    trainer = one_word_trainer(kappa=kappa, steps=30)
    start = alpha_share(trainer)
    history = trainer.train(["say a word"], progress=False)
    end = alpha_share(trainer)
    assert len(history) == 30
    if kappa == 0:   # alpha is worth 1 against 0
        assert end > 0.9 > start
    else:            # alpha is worth 1 - 2 * 1 = -1 against 0
        assert end < start / 2


def test_first_step_kl_is_zero_against_the_frozen_reference_and_grows_after():
    trainer = one_word_trainer(steps=6)
    history = trainer.train(["say a word"], progress=False)
    assert history[0]["kl"] == 0.0 and history[-1]["kl"] > 0.01
    assert not any(p.requires_grad for p in trainer.reference.parameters())


def test_adaptive_beta_follows_the_controller():
    trainer = one_word_trainer(steps=4, beta=0.5, target_kl=0.01, kl_horizon=100)
    history = trainer.train(["say a word"], progress=False)
    assert history[0]["beta"] == 0.5
    for before, after in zip(history, history[1:]):
        error = min(max(before["kl"] / 0.01 - 1, -0.2), 0.2)
        assert after["beta"] == pytest.approx(before["beta"] * (1 + error * 32 / 100))
    assert history[-1]["beta"] != 0.5


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # raised inside peft
def test_lora_trains_only_the_adapters_and_the_value_head(tmp_path):
    trainer = one_word_trainer(lora=True, lora_rank=2, steps=3)
    model = trainer.accelerator.unwrap_model(trainer.model)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer.train(["say a word"], progress=False)
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all("lora_" in name or name.startswith("value_head") for name in changed)
    assert any("lora_" in name for name in changed) and any(name.startswith("value_head") for name in changed)
    # the reference is the base model: with the adapters disabled the policy gives its log-probabilities
    rollout = trainer.generate(["say a word"] * 4)
    trainer._score_tokens(rollout)
    assert not torch.allclose(rollout.logprobs, rollout.ref_logprobs)
    # saved, the adapters are merged: the folder alone gives the trained policy's logits
    save_policy(trainer, trainer.tokenizer, tmp_path / "policy")
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "policy")
    ids = trainer.tokenizer(["say a word"], return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(saved(ids).logits, trainer.policy(input_ids=ids).logits, atol=1e-5)


def test_reward_fn_of_the_wrong_shape_is_named():
    trainer = one_word_trainer()
    trainer.reward_fn = lambda prompts, completions: (torch.zeros(len(prompts) + 1), torch.zeros(len(prompts)))
    with pytest.raises(ValueError, match=r"reward_fn must return \(mean, sd\) of shape \(2,\)"):
        trainer.generate(["say a word"] * 2)


# -- the command line ---------------------------------------------------------------------------------

def test_prompts_files(tmp_path):
    text = tmp_path / "prompts.txt"
    text.write_text("one\n\ntwo\nthree\nfour\nfive\n")
    train, held = ppo_prompts(text, {}, seed=0)
    assert sorted(train + held) == ["five", "four", "one", "three", "two"] and len(held) == 1
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "a"}\n{"text": "b"}\n')
    with pytest.raises(ConfigError, match="line 2: needs a string field 'prompt'"):
        ppo_prompts(bad, {}, seed=0)
    bad.write_text('{"prompt": "a"}\n{"prompt": "b"\n')
    with pytest.raises(ConfigError, match="line 2: not JSON"):
        ppo_prompts(bad, {}, seed=0)


def test_a_folder_that_is_no_reward_model_is_named(tmp_path, capsys):
    assert main(["ppo", "--reward", str(tmp_path), "--out", str(tmp_path / "ppo")]) == 2
    assert "neither a save_pretrained folder" in capsys.readouterr().err


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory):
    """A VRM fitted briefly on a small simulated-text sample through MiniLM: a saved reward model
    for the command's machinery. That PPO raises a reward is shown exactly on the one-word task
    above, and against VRM's reward by ``experiments/ppo_demo.py``, whose runs are experiments."""
    root = tmp_path_factory.mktemp("ppo_reward")
    original = simulated_text.TextSimulationConfig
    simulated_text.TextSimulationConfig = lambda seed=0: original(num_prompts=40, seed=seed)
    try:
        assert main(["train", "--data", "simulated-text", "--out", str(root / "vrm"), "--cache-dir", str(root),
                     "--max-length", "96", "--steps", "100", "--batch-size", "32", "--quiet"]) == 0
    finally:
        simulated_text.TextSimulationConfig = original
    return root / "vrm"


def test_measuring_along_the_way_leaves_training_as_it_was(reward_run, tmp_path):
    """``--eval-every`` adds a curve of held-out measurements without touching the training run's
    random stream (against an ensemble, which the run's recorded statistics standardize); and the
    command leaves a policy that transformers loads and that generates."""
    short = ["--steps", "4", "--eval-rollouts", "16", "--rollouts-per-step", "8", "--minibatch-size", "8",
             "--max-new-tokens", "16", "--warm-start-steps", "20", "--quiet"]
    ensemble = [str(reward_run), str(reward_run)]
    assert main(["ppo", "--reward", *ensemble, "--out", str(tmp_path / "plain"), *short]) == 0
    assert main(["ppo", "--reward", *ensemble, "--out", str(tmp_path / "measured"), "--eval-every", "2", *short]) == 0
    plain, measured = ([json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
                       for run in ("plain", "measured"))
    # the command's record of a run: every step, finite, the KL from 0 at the start and within its bound
    assert [r["step"] for r in plain] == [1, 2, 3, 4]
    for key in ("reward", "reward_sd", "kl", "entropy", "clip_fraction", "value_loss", "policy_loss", "beta"):
        assert all(math.isfinite(r[key]) for r in plain), key
    summary = json.loads((tmp_path / "plain" / "summary.json").read_text())
    assert summary["kl_start"] == 0.0 < summary["kl_end"] < PPOConfig().kl_bound and summary["kl_within_bound"]
    assert summary["rise_in_se"] == pytest.approx((summary["reward_end"] - summary["reward_start"]) / summary["reward_se"])
    assert all(math.isfinite(summary[k]) for k in ("gold_start", "gold_end", "filler_rate_start", "filler_rate_end"))
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["ppo_config"]["steps"] == 4
    policy = AutoModelForCausalLM.from_pretrained(tmp_path / "plain" / POLICY_DIR)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "plain" / POLICY_DIR)
    query = tokenizer(["Any tips for saving money?"], return_tensors="pt")
    out = policy.generate(**query, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] > query.input_ids.shape[1] and tokenizer.decode(out[0, query.input_ids.shape[1]:]).strip()
    assert [r["step"] for r in measured] == [1, 2, 3, 4] and "held_gold" in measured[1] and "held_gold" not in measured[0]
    for a, b in zip(plain, measured):
        assert all(math.isclose(a[key], b[key], rel_tol=1e-5, abs_tol=1e-7) for key in a), (a, b)
    summary = json.loads((tmp_path / "measured" / "summary.json").read_text())
    assert summary["reward_model"] == "ensemble"
    assert [p["step"] for p in summary["curve"]] == [0, 2, 4]
    assert summary["curve"][0]["gold"] == summary["gold_start"] and summary["curve"][-1]["kl"] == summary["kl_end"]
    assert summary["curve"][1]["gold"] == measured[1]["held_gold"]
