"""A PPO run against a reward model, measured as ``pyro-vrm ppo`` reports it: fresh rollouts on
held-out prompts before and after training, their reward and its standard error, the KL to the
reference, the share that carry simulated-text's planted filler, their length and, on
simulated-text's own prompts, their gold reward (the simulator's true reward of the text, which
no reward model sees). The trained policy is saved in the run folder's ``policy/``.
"""

from __future__ import annotations

import copy
import math
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

__all__ = ["POLICY_DIR", "load_reward", "make_policy", "measure", "run_ppo", "save_policy"]

POLICY_DIR = "policy"
"""The run folder's subfolder that holds the trained policy and its tokenizer."""

# what a measurement on held prompts records at every point of the curve (``--eval-every``)
CURVE = ("reward", "objective", "reward_sd", "kl", "gold", "gold_se", "filler_rate", "completion_words")


def load_reward(path: Path | list[Path]) -> RewardModel:
    """The reward model in ``path``: a ``save_pretrained`` folder or a ``pyro-vrm train`` run
    folder of any model kind; several run folders make an ensemble of their fits."""
    if isinstance(path, list):
        if len(path) > 1:
            missing = [str(p) for p in path if not (p / "checkpoint" / "config.json").exists()]
            if missing:
                raise ConfigError(f"--reward: an ensemble is made of pyro-vrm train run folders; "
                                  f"{', '.join(missing)} holds no checkpoint/")
            return RewardModel.from_runs(path)
        path = path[0]
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


def measure(trainer: PPOTrainer, held: list[str], true_weights: dict | None) -> dict:
    """Fresh rollouts on ``held`` prompts, one each: the reward model's mean reward (the proxy),
    its standard error, mean sd and mean - kappa * sd, the KL to the reference, the share with
    the planted filler, the mean length in words, three examples and, given the prompts' true
    objective weights, the gold reward (the simulator's true reward of the text) and its standard
    error."""
    rollouts, figures = trainer.evaluate(held)
    figures["filler_rate"] = sum(FILLER in c for c in rollouts.completions) / len(held)
    figures["completion_words"] = sum(len(c.split()) for c in rollouts.completions) / len(held)
    if true_weights is not None:
        gold = torch.tensor([true_reward(p, c, true_weights[p]) for p, c in zip(rollouts.prompts, rollouts.completions)])
        figures["gold"] = float(gold.mean())
        figures["gold_se"] = float(gold.std() / math.sqrt(len(gold))) if len(gold) > 1 else float("nan")
    figures["examples"] = [{"prompt": p, "completion": c} for p, c in zip(rollouts.prompts[:3], rollouts.completions[:3])]
    return figures


def _figures(figures: dict, suffix: str = "") -> dict:
    return {name: figures[name + suffix] for name in CURVE if name + suffix in figures}


def save_policy(trainer: PPOTrainer, tokenizer, folder: Path) -> None:
    """The trained policy and its tokenizer in ``folder`` (``save_pretrained``), so that
    ``AutoModelForCausalLM.from_pretrained(folder)`` loads it; LoRA adapters are merged into the
    base weights of a copy first, so that the folder needs no base model beside it."""
    policy = trainer.policy
    if trainer.config.lora:
        policy = copy.deepcopy(policy).merge_and_unload()
    policy.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def run_ppo(reward_model: RewardModel, run: RunDir, ppo_config: PPOConfig = PPOConfig(),
            policy_config: TinyPolicyConfig = TinyPolicyConfig(), policy: str | None = None,
            prompts: Path | None = None, progress: bool = True, config: dict | None = None,
            initial_policy: tuple | None = None) -> dict:
    """Train ``policy`` (default: the tiny offline one) by PPO against ``reward_model`` on the
    training prompts (``prompts``, a file, or simulated-text's), measure fresh rollouts on the
    held prompts before and after (and every ``eval_every`` steps, as ``summary["curve"]``), and
    write ``config.json`` (with ``config``), ``metrics.jsonl`` and ``summary.json`` into ``run``.
    ``initial_policy``, a (model, tokenizer) that :func:`make_policy` built, starts from that
    model (trained in place: pass a copy) instead of building the policy again. Returns the summary."""
    started = time.time()
    if policy is None:  # tiny matrices: a second thread costs more in synchronisation than it gains
        torch.set_num_threads(1)
    text = simulate_text(TextSimulationConfig(seed=ppo_config.seed)).to_dict()
    train_prompts, held_prompts = ppo_prompts(prompts, text, ppo_config.seed)
    true_weights = {p: torch.tensor(w) for p, w in zip(text["prompt"], text["weights"])}
    run.write_json("config.json", {**(config or {}), "policy": policy, "prompts": prompts,
                                   "ppo_config": asdict(ppo_config), "policy_config": asdict(policy_config)})
    if initial_policy is not None:
        (model, tokenizer), warm_start_loss = initial_policy, None
    else:
        model, tokenizer, warm_start_loss = make_policy(policy, text, train_prompts + held_prompts, policy_config,
                                                        ppo_config.seed)
    trainer = PPOTrainer(model, tokenizer, reward_model.score, ppo_config)
    held = [held_prompts[i % len(held_prompts)] for i in range(ppo_config.eval_rollouts)]
    gold_weights = true_weights if prompts is None else None  # simulated-text's prompts: gold is known
    summary = {f"{name}_start": value for name, value in measure(trainer, held, gold_weights).items()}
    curve = [{"step": 0, **_figures(summary, "_start")}]

    def after_step(step: int) -> dict | None:
        if ppo_config.eval_every and step % ppo_config.eval_every == 0 and step < ppo_config.steps:
            with torch.random.fork_rng():  # measuring leaves the training run's random stream as it was
                torch.manual_seed(ppo_config.seed + step)
                figures = measure(trainer, held, gold_weights)
            curve.append({"step": step, **_figures(figures)})
            return {f"held_{k}": v for k, v in _figures(figures).items()}
        return None

    trainer.train(train_prompts, run=run, progress=progress, after_step=after_step)
    save_policy(trainer, tokenizer, run.path / POLICY_DIR)
    summary.update({f"{name}_end": value for name, value in measure(trainer, held, gold_weights).items()})
    if ppo_config.eval_every:
        summary["curve"] = [*curve, {"step": ppo_config.steps, **_figures(summary, "_end")}]
    summary["reward_se"] = summary.pop("reward_se_start")
    summary.update({"rise_in_se": (summary["reward_end"] - summary["reward_start"]) / summary["reward_se"],
                    "kl_bound": ppo_config.kl_bound, "kl_within_bound": summary["kl_end"] < ppo_config.kl_bound,
                    "reward_model": reward_model.kind, "held_rollouts": len(held), "warm_start_loss": warm_start_loss,
                    "seconds": round(time.time() - started, 1), "run_dir": str(run.path)})
    run.write_json("summary.json", summary)
    return summary
