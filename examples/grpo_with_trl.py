"""GRPO with TRL against a saved VRM reward model: the tiny offline policy on simulated-text.

1. Fit VRM on simulated-text through MiniLM (``pyro-vrm train``) and save it as a reward model.
2. Build the tiny offline policy, warm-started on simulated-text's responses, as ``pyro-vrm ppo``
   builds it.
3. Train it with TRL's ``GRPOTrainer``, ``reward_funcs=[reward_model]``, on the training prompts.
4. Before and after, sample one completion per held-out prompt and print the mean gold reward: the
   simulator's true reward of the text, which no reward model sees (as ``pyro-vrm ppo`` reports it).

    python examples/grpo_with_trl.py [--out runs/grpo-with-trl] [--steps 80]

A few minutes on two CPU cores; nothing is downloaded. Pass ``--prompts-per-step``, ``--steps``
or ``--vrm-steps`` to trade time for a larger rise.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import time
from pathlib import Path

import datasets
import torch
from transformers import AutoModelForCausalLM
from trl import GRPOConfig, GRPOTrainer

from pyro_vrm import RewardModel
from pyro_vrm.cli import main as pyro_vrm
from pyro_vrm.pipeline import ppo_prompts
from pyro_vrm.policy import TinyPolicyConfig
from pyro_vrm.ppo import PPOConfig
from pyro_vrm.ppo_run import make_policy
from pyro_vrm.simulated_text import TextSimulationConfig, simulate_text, true_reward


@torch.no_grad()
def gold_reward(policy, tokenizer, prompts: list[str], weights: dict, max_new_tokens: int, seed: int
                ) -> tuple[float, float]:
    """(mean, standard error) of the gold reward of one sampled completion per prompt."""
    torch.manual_seed(seed)
    policy.eval()
    tokenizer.padding_side = "left"
    query = tokenizer(prompts, return_tensors="pt", padding=True)
    out = policy.generate(**query, do_sample=True, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                          pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    completions = tokenizer.batch_decode(out[:, query.input_ids.shape[1]:], skip_special_tokens=True)
    gold = torch.tensor([true_reward(p, c.strip(), weights[p]) for p, c in zip(prompts, completions)])
    return float(gold.mean()), float(gold.std() / math.sqrt(len(gold)))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/grpo-with-trl"))
    parser.add_argument("--vrm-steps", type=int, default=500, help="SVI steps of the reward model")
    parser.add_argument("--steps", type=int, default=80, help="GRPO steps")
    parser.add_argument("--prompts-per-step", type=int, default=8, help="prompts per GRPO step (8 completions each)")
    parser.add_argument("--beta", type=float, default=PPOConfig().beta,
                        help="weight of the KL to the starting policy (default: pyro-vrm ppo's)")
    parser.add_argument("--max-completion-length", type=int, default=64)
    parser.add_argument("--held", type=int, default=256, help="held-out prompts measured before and after")
    parser.add_argument("--warm-start-steps", type=int, default=TinyPolicyConfig().warm_start_steps,
                        help="supervised steps of the tiny policy on simulated-text's responses")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.time()
    torch.set_num_threads(1)  # tiny matrices: a second thread costs more in synchronisation than it gains

    # 1. The reward model: VRM (the recommended preset) on simulated-text, saved and loaded back.
    with contextlib.redirect_stdout(io.StringIO()):  # the fit's summary: in args.out/vrm/summary.json
        assert pyro_vrm(["train", "--data", "simulated-text", "--out", str(args.out / "vrm"), "--steps",
                         str(args.vrm_steps), "--max-length", "128", "--seed", str(args.seed), "--quiet"]) == 0
    RewardModel.from_run(args.out / "vrm").save_pretrained(args.out / "reward-model")
    reward_model = RewardModel.from_pretrained(args.out / "reward-model")

    # 2. The policy, and the prompts: simulated-text's training prompts, its test prompts held out.
    text = simulate_text(TextSimulationConfig(seed=args.seed)).to_dict()
    train_prompts, held_prompts = ppo_prompts(None, text, args.seed)
    weights = dict(zip(text["prompt"], text["weights"]))
    policy_config = TinyPolicyConfig(warm_start_steps=args.warm_start_steps)
    policy, tokenizer, _ = make_policy(None, text, train_prompts + held_prompts, policy_config, args.seed)
    policy.save_pretrained(args.out / "start-policy")  # TRL builds its KL reference from the policy's folder
    policy = AutoModelForCausalLM.from_pretrained(args.out / "start-policy")
    held = [held_prompts[i % len(held_prompts)] for i in range(args.held)]
    before = gold_reward(policy, tokenizer, held, weights, args.max_completion_length, args.seed)

    # 3. GRPO: TRL samples 8 completions a prompt and calls reward_model(prompts=..., completions=...).
    num_generations = 8
    config = GRPOConfig(output_dir=str(args.out / "grpo"), max_steps=args.steps, learning_rate=3e-4, beta=args.beta,
                        per_device_train_batch_size=args.prompts_per_step * num_generations,
                        num_generations=num_generations, max_completion_length=args.max_completion_length,
                        temperature=1.0, use_cpu=True, bf16=False, report_to="none", logging_steps=10,
                        save_strategy="no", disable_tqdm=True, seed=args.seed)
    trainer = GRPOTrainer(model=policy, reward_funcs=[reward_model], args=config, processing_class=tokenizer,
                          train_dataset=datasets.Dataset.from_dict({"prompt": train_prompts}))
    trainer.train()
    trainer.save_model(str(args.out / "policy"))

    # 4. The gold reward of the trained policy on the same held-out prompts.
    after = gold_reward(trainer.model, tokenizer, held, weights, args.max_completion_length, args.seed)
    rewards = [r["rewards/vrm_reward/mean"] for r in trainer.state.log_history if "rewards/vrm_reward/mean" in r]
    result = {"gold_before": before[0], "gold_before_se": before[1], "gold_after": after[0],
              "gold_after_se": after[1], "reward_first_logged": rewards[0], "reward_last_logged": rewards[-1],
              "seconds": round(time.time() - started, 1)}
    print(f"gold reward of held-out completions: {before[0]:.3f} ± {before[1]:.3f} before GRPO, "
          f"{after[0]:.3f} ± {after[1]:.3f} after ({args.steps} steps; VRM's reward {rewards[0]:.3f} -> "
          f"{rewards[-1]:.3f}); {result['seconds']:.0f} s")
    return result


if __name__ == "__main__":
    main()
