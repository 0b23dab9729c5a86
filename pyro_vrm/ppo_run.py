"""A PPO run against a reward model, measured as ``pyro-vrm ppo`` reports it: fresh rollouts on
held-out prompts before and after training, their reward and its standard error, the KL to the
reference, the share that carry simulated-text's planted filler, their length and, on
simulated-text's own prompts, their gold reward (the simulator's true reward of the text, which
no reward model sees).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch

from .config import ConfigError
from .pipeline import ppo_prompts
from .policy import TinyPolicyConfig, tiny_policy, warm_start
from .ppo import PPOConfig, PPOTrainer
from .reward_model import RewardModel
from .runs import RunDir
from .simulated_text import FILLER, TextSimulationConfig, simulate_text, true_reward

__all__ = ["load_reward", "make_policy", "run_ppo"]


def load_reward(path: Path) -> RewardModel:
    """The reward model in ``path``: a ``save_pretrained`` folder or a ``pyro-vrm train`` run
    folder of any model kind."""
    if (path / "model.safetensors").exists():
        return RewardModel.from_pretrained(path)
    if (path / "checkpoint" / "config.json").exists():
        return RewardModel.from_run(path)
    raise ConfigError(f"--reward {path}: neither a save_pretrained folder (model.safetensors) nor a "
                      "pyro-vrm train run folder (checkpoint/)")


def make_policy(policy: str | None, text: dict, prompts: list[str], config: TinyPolicyConfig, seed: int):
    """(policy, tokenizer, warm-start loss (first, last) or None): the causal LM ``policy`` (a
    transformers id or folder), or with None the tiny offline policy warm-started on
    simulated-text's training responses."""
    if policy is not None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(policy)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return AutoModelForCausalLM.from_pretrained(policy), tokenizer, None
    train = [i for i, s in enumerate(text["split"]) if s == "train"]
    model, tokenizer = tiny_policy(text["prompt"] + text["chosen"] + text["rejected"] + prompts, config, seed=seed)
    losses = warm_start(model, tokenizer, [text["prompt"][i] for i in train] * 2,
                        [text["chosen"][i] for i in train] + [text["rejected"][i] for i in train], config, seed=seed)
    return model, tokenizer, [losses[0], losses[-1]]


def run_ppo(reward_model: RewardModel, run: RunDir, ppo_config: PPOConfig = PPOConfig(),
            policy_config: TinyPolicyConfig = TinyPolicyConfig(), policy: str | None = None,
            prompts: Path | None = None, progress: bool = True, config: dict | None = None) -> dict:
    """Train ``policy`` (default: the tiny offline one) by PPO against ``reward_model`` on the
    training prompts (``prompts``, a file, or simulated-text's), measure fresh rollouts on the
    held prompts before and after, and write ``config.json`` (with ``config``), ``metrics.jsonl``
    and ``summary.json`` into ``run``. Returns the summary."""
    started = time.time()
    if policy is None:  # tiny matrices: a second thread costs more in synchronisation than it gains
        torch.set_num_threads(1)
    text = simulate_text(TextSimulationConfig(seed=ppo_config.seed)).to_dict()
    train_prompts, held_prompts = ppo_prompts(prompts, text, ppo_config.seed)
    true_weights = {p: torch.tensor(w) for p, w in zip(text["prompt"], text["weights"])}
    run.write_json("config.json", {**(config or {}), "policy": policy, "prompts": prompts,
                                   "ppo_config": asdict(ppo_config), "policy_config": asdict(policy_config)})
    model, tokenizer, warm_start_loss = make_policy(policy, text, train_prompts + held_prompts, policy_config,
                                                    ppo_config.seed)
    trainer = PPOTrainer(model, tokenizer, reward_model.score, ppo_config)
    held = [held_prompts[i % len(held_prompts)] for i in range(ppo_config.eval_rollouts)]
    summary = {}
    for when in ("start", "end"):
        if when == "end":
            trainer.train(train_prompts, run=run, progress=progress)
        rollouts, figures = trainer.evaluate(held)
        summary.update({f"{name}_{when}": value for name, value in figures.items()})
        summary[f"filler_rate_{when}"] = sum(FILLER in c for c in rollouts.completions) / len(held)
        summary[f"completion_words_{when}"] = sum(len(c.split()) for c in rollouts.completions) / len(held)
        if prompts is None:  # simulated-text's prompts: the gold reward of what the policy wrote
            summary[f"gold_{when}"] = sum(true_reward(p, c, true_weights[p])
                                          for p, c in zip(rollouts.prompts, rollouts.completions)) / len(held)
        summary[f"examples_{when}"] = [{"prompt": p, "completion": c}
                                       for p, c in zip(rollouts.prompts[:3], rollouts.completions[:3])]
    summary["reward_se"] = summary.pop("reward_se_start")
    summary.update({"rise_in_se": (summary["reward_end"] - summary["reward_start"]) / summary["reward_se"],
                    "kl_bound": ppo_config.kl_bound, "kl_within_bound": summary["kl_end"] < ppo_config.kl_bound,
                    "reward_model": reward_model.kind, "held_rollouts": len(held), "warm_start_loss": warm_start_loss,
                    "seconds": round(time.time() - started, 1), "run_dir": str(run.path)})
    run.write_json("summary.json", summary)
    return summary
