"""The runnable examples in examples/, each with tiny settings: they run end to end and report
what they say they report (their figures at full settings are theirs to print)."""

import importlib.util
import math
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from pyro_vrm import simulated_text

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_grpo_with_trl_trains_a_policy_against_a_saved_reward_model(monkeypatch, tmp_path, capsys):
    example = load("grpo_with_trl")
    small = simulated_text.TextSimulationConfig(num_prompts=16)
    monkeypatch.setattr(simulated_text, "TextSimulationConfig", lambda seed=0: small)
    monkeypatch.setattr(example, "TextSimulationConfig", lambda seed=0: small)
    threads = torch.get_num_threads()
    try:
        result = example.main(["--out", str(tmp_path), "--vrm-steps", "10", "--steps", "2", "--prompts-per-step", "2",
                               "--max-completion-length", "12", "--held", "8", "--warm-start-steps", "5"])
    finally:
        torch.set_num_threads(threads)
    assert all(math.isfinite(result[k]) for k in ("gold_before", "gold_after", "reward_first_logged"))
    assert result["gold_before_se"] >= 0 and result["gold_after_se"] >= 0
    assert "gold reward of held-out completions" in capsys.readouterr().out
    assert (tmp_path / "reward-model" / "model.safetensors").exists()  # the reward model was saved, then loaded
    policy = AutoModelForCausalLM.from_pretrained(tmp_path / "policy")
    start = AutoModelForCausalLM.from_pretrained(tmp_path / "start-policy")
    assert any(not torch.equal(a, b) for a, b in zip(policy.parameters(), start.parameters()))  # GRPO moved it
