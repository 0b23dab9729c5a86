"""PPO for a ``transformers`` causal LM against a reward that returns a posterior mean and sd.

One PPO step (Ziegler et al. 2019; Ouyang et al. 2022):

1. sample a completion for each of ``rollouts_per_step`` prompts from the policy pi;
2. score each decoded (prompt, completion) with ``reward_fn(prompts, completions) -> (mean, sd)``,
   for instance :meth:`pyro_vrm.reward_model.VRMRewardModel.score`; the sequence reward is
   ``mean - kappa * sd`` (kappa > 0: risk-averse), placed on the last generated token;
3. per token t of a completion, r_t = -beta * (log pi(y_t) - log pi_ref(y_t)) (+ the sequence
   reward at the last token), pi_ref a frozen copy of the initial policy (with LoRA: the base
   model, adapters disabled); beta fixed or adapted to a target KL (Ziegler et al.'s controller);
4. advantages by GAE(gamma, lambda) from a value head on the policy's last hidden states,
   whitened over the batch;
5. ``ppo_epochs`` passes of minibatches over the rollouts, minimising the clipped surrogate
   policy loss plus ``vf_coef`` times the clipped value loss, gradients clipped to
   ``max_grad_norm``.

Everything runs through an ``accelerate.Accelerator`` (one CPU process needs no launch config).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .config import ConfigError, check_positive, option

__all__ = ["PPOConfig", "KLController", "RunningMoments", "PolicyWithValue", "PPOTrainer", "masked_mean", "masked_whiten",
           "token_rewards", "gae", "policy_loss", "value_loss"]


@dataclass(frozen=True)
class PPOConfig:
    """PPO against a posterior-mean reward: rollouts, KL penalty, GAE, clipped losses, LoRA."""

    steps: int = field(default=200, metadata=option("PPO steps (one batch of rollouts each)"))
    rollouts_per_step: int = field(default=32, metadata=option("prompts sampled and completed per step"))
    minibatch_size: int = field(default=16, metadata=option("rollouts per gradient step"))
    ppo_epochs: int = field(default=4, metadata=option("passes over each batch of rollouts"))
    lr: float = field(default=3e-4, metadata=option("learning rate (Adam) of policy and value head"))
    max_new_tokens: int = field(default=80, metadata=option("most tokens generated per completion"))
    temperature: float = field(default=1.0, metadata=option("sampling temperature of the rollouts"))
    kappa: float = field(default=0.0, metadata=option("risk aversion: the reward is mean - kappa * sd"))
    normalize_score: bool = field(default=True, metadata=option(
        "standardize the sequence reward by the running mean and sd of all rewards so far before the "
        "KL penalty is added (VRM's posterior-mean rewards are tiny: this makes beta's unit one sd)"))
    beta: float = field(default=1.0, metadata=option(
        "initial (or fixed) KL penalty coefficient, per nat, against the standardized reward"))
    target_kl: float = field(default=0.0, metadata=option(
        "nats per completion; > 0 adapts beta towards it (Ziegler et al. 2019), 0 keeps beta fixed"))
    kl_horizon: int = field(default=10000, metadata=option("horizon of the adaptive KL controller"))
    kl_bound: float = field(default=10.0, metadata=option(
        "the KL to the reference (nats per completion) that the demonstration must stay under"))
    gamma: float = field(default=1.0, metadata=option("discount of GAE"))
    lam: float = field(default=0.95, metadata=option("lambda of GAE"))
    clip_range: float = field(default=0.2, metadata=option("clip of the policy ratio"))
    clip_range_value: float = field(default=0.2, metadata=option("clip of the value update"))
    vf_coef: float = field(default=0.1, metadata=option("weight of the value loss"))
    max_grad_norm: float = field(default=1.0, metadata=option("gradient norm clip"))
    whiten_advantages: bool = field(default=True, metadata=option("whiten advantages over each batch"))
    lora: bool = field(default=False, metadata=option("train LoRA adapters (peft) instead of the whole policy"))
    lora_rank: int = field(default=8, metadata=option("rank of the LoRA adapters"))
    lora_alpha: float = field(default=16.0, metadata=option("scale numerator of the LoRA adapters"))
    eval_rollouts: int = field(default=256, metadata=option("fresh rollouts on held prompts at start and end"))
    eval_every: int = field(default=0, metadata=option(
        "every this many steps, also measure eval_rollouts fresh rollouts on held prompts (0: only at start and end)"))
    seed: int = field(default=0, metadata=option("seed of sampling and initialisation"))

    def __post_init__(self):
        check_positive(self, "steps", "rollouts_per_step", "minibatch_size", "ppo_epochs", "lr", "max_new_tokens",
                  "temperature", "kl_horizon", "kl_bound", "clip_range", "clip_range_value",
                  "max_grad_norm", "lora_rank", "lora_alpha", "eval_rollouts")
        for name in ("kappa", "beta", "target_kl", "vf_coef", "eval_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        for name in ("gamma", "lam"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"--{name} must be in [0, 1], got {getattr(self, name)}")
        if self.minibatch_size > self.rollouts_per_step:
            raise ConfigError(f"--minibatch-size ({self.minibatch_size}) exceeds --rollouts-per-step "
                              f"({self.rollouts_per_step})")


class RunningMoments:
    """Running mean and sd of every value seen (Chan et al.'s parallel update).

    Examples:
        >>> m = RunningMoments(); m.update(torch.tensor([1.0, 3.0])); m.update(torch.tensor([5.0]))
        >>> m.mean, round(m.sd, 3)
        (3.0, 2.0)
    """

    def __init__(self):
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, x: torch.Tensor) -> None:
        n, mean = x.numel(), float(x.mean())
        delta, total = mean - self.mean, self.count + n
        self.m2 += float(((x - mean) ** 2).sum()) + delta ** 2 * self.count * n / total
        self.mean += delta * n / total
        self.count = total

    @property
    def sd(self) -> float:
        return math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 1.0


class KLController:
    """beta, fixed (``target`` 0) or adapted: beta *= 1 + clip(KL / target - 1, +-0.2) * n / horizon.

    Examples:
        >>> c = KLController(0.1, target=6.0, horizon=100)
        >>> round(c.update(kl=12.0, n=10), 3)   # KL twice the target: beta grows by 2%
        0.102
    """

    def __init__(self, beta: float, target: float = 0.0, horizon: int = 10000):
        self.beta, self.target, self.horizon = beta, target, horizon

    def update(self, kl: float, n: int) -> float:
        if self.target > 0:
            error = min(max(kl / self.target - 1, -0.2), 0.2)
            self.beta *= 1 + error * n / self.horizon
        return self.beta


# -- the PPO arithmetic, on (batch, T) tensors over completion tokens; mask 1 on real tokens ---------

def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(x - mean) / sd over the masked entries; zero where the mask is 0."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


def token_rewards(score: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                  mask: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rewards (B, T), kl (B, T)): r_t = -beta * kl_t, kl_t = log pi - log pi_ref, plus the
    sequence reward ``score`` (B,) at each completion's last real token.

    Examples:
        >>> r, kl = token_rewards(torch.tensor([1.0]), torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]]),
        ...                       torch.tensor([[1.0, 1.0]]), beta=0.1)
        >>> r
        tensor([[-0.0500,  1.1000]])
    """
    kl = (logprobs - ref_logprobs) * mask
    rewards = -beta * kl
    last = mask.sum(1).long().clamp(min=1) - 1  # completions hold at least one token
    rewards[torch.arange(len(score)), last] += score
    return rewards, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimates and returns (B, T), zero past each completion's end.

    delta_t = r_t + gamma V_{t+1} - V_t (V = 0 after the last token), A_t = delta_t + gamma lam A_{t+1}.
    """
    values = values * mask
    advantages = torch.zeros_like(rewards)
    next_value = next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t], next_value = next_advantage, values[:, t]
    return advantages, (advantages + values) * mask


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, clip_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, clip fraction): the masked mean of max(-A ratio, -A clip(ratio, 1 +- eps))."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
    return masked_mean(torch.max(unclipped, clipped), mask), masked_mean((clipped > unclipped).float(), mask)


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               mask: torch.Tensor, clip_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, clip fraction): 0.5 masked mean of max((V - R)^2, (V_old + clip(V - V_old, +-eps) - R)^2)."""
    clipped_values = old_values + (values - old_values).clamp(-clip_range, clip_range)
    unclipped_loss, clipped_loss = (values - returns) ** 2, (clipped_values - returns) ** 2
    return (0.5 * masked_mean(torch.max(unclipped_loss, clipped_loss), mask),
            masked_mean((clipped_loss > unclipped_loss).float(), mask))


class PolicyWithValue(nn.Module):
    """A causal LM and a scalar value head V(s_t) on its last hidden state."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy
        self.value_head = nn.Linear(policy.config.hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids, attention_mask, position_ids):
        out = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          output_hidden_states=True)
        return out.logits, self.value_head(out.hidden_states[-1]).squeeze(-1)


@dataclass
class Rollout:
    """A batch of sampled completions; token tensors are (B, T) over the completion tokens."""

    prompts: list[str]
    completions: list[str]
    input_ids: torch.Tensor        # (B, P + T): left-padded prompts, then completions
    attention_mask: torch.Tensor   # (B, P + T)
    mask: torch.Tensor             # (B, T): 1 on generated tokens up to and including EOS
    mean: torch.Tensor             # (B,) reward posterior mean
    sd: torch.Tensor               # (B,) reward posterior sd
    logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    values: torch.Tensor | None = None


class PPOTrainer:
    """PPO of ``policy`` (a transformers causal LM) against ``reward_fn(prompts, completions) -> (mean, sd)``.

    ``tokenizer(prompts)`` must give the policy's input for each prompt (add a chat template or a
    separator before passing prompts in); completions are decoded without special tokens.
    """

    def __init__(self, policy, tokenizer, reward_fn, config: PPOConfig = PPOConfig(), accelerator=None):
        from accelerate import Accelerator

        torch.manual_seed(config.seed)
        self.config, self.tokenizer, self.reward_fn = config, tokenizer, reward_fn
        self.accelerator = accelerator or Accelerator()
        if tokenizer.pad_token_id is None:
            raise ValueError("the policy's tokenizer has no pad token; set tokenizer.pad_token")
        tokenizer.padding_side = "left"
        if config.lora:
            from peft import LoraConfig, get_peft_model

            policy = get_peft_model(policy, LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha,
                                                       task_type="CAUSAL_LM"))
            self.reference = None  # the base model with its adapters disabled
        else:
            self.reference = copy.deepcopy(policy).eval().requires_grad_(False).to(self.accelerator.device)
        model = PolicyWithValue(policy)
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.kl_controller = KLController(config.beta, config.target_kl, config.kl_horizon)
        self.score_moments = RunningMoments()

    @property
    def policy(self):
        return self.accelerator.unwrap_model(self.model).policy

    # -- rollouts ---------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: list[str]) -> Rollout:
        """Sample one completion per prompt and score it (no log-probabilities yet)."""
        c, tok, device = self.config, self.tokenizer, self.accelerator.device
        query = tok(list(prompts), padding=True, return_tensors="pt").to(device)
        policy = self.policy
        was_training = policy.training
        policy.eval()
        sequences = policy.generate(**query, do_sample=True, max_new_tokens=c.max_new_tokens,
                                    temperature=c.temperature, top_k=0, top_p=1.0,
                                    pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        policy.train(was_training)
        completion = sequences[:, query.input_ids.shape[1]:]
        is_eos = completion == tok.eos_token_id
        ended = is_eos.cumsum(1) - is_eos.long()  # EOS tokens before this one
        mask = (ended == 0).float()               # up to and including the first EOS
        if completion.shape[1] == 0:
            raise ValueError("the policy generated no tokens; check --max-new-tokens")
        mask[:, 0] = 1.0
        completions = tok.batch_decode(completion * mask.long() + tok.pad_token_id * (1 - mask.long()),
                                       skip_special_tokens=True)
        mean, sd = self.reward_fn(list(prompts), completions)
        mean, sd = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(sd, dtype=torch.float32)
        if mean.shape != (len(prompts),) or sd.shape != (len(prompts),):
            raise ValueError(f"reward_fn must return (mean, sd) of shape ({len(prompts)},) each, "
                             f"got {tuple(mean.shape)} and {tuple(sd.shape)}")
        attention_mask = torch.cat([query.attention_mask.float(), mask], 1).long()
        return Rollout(list(prompts), completions, sequences, attention_mask, mask.to(device),
                       mean.to(device), sd.to(device))

    def _forward(self, model, rollout: Rollout, rows=slice(None)):
        """(log-probabilities, values, logits) of the completion tokens: (b, T), (b, T), (b, T, V)."""
        ids, attention = rollout.input_ids[rows], rollout.attention_mask[rows]
        positions = (attention.cumsum(1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=attention, position_ids=positions)
        logits, values = out if isinstance(out, tuple) else (out.logits, None)
        T = rollout.mask.shape[1]
        logits = logits[:, -T - 1:-1].float() / self.config.temperature  # the state before each token
        logprobs = torch.gather(F.log_softmax(logits, -1), 2, ids[:, -T:, None]).squeeze(-1)
        return logprobs, None if values is None else values[:, -T - 1:-1], logits

    @torch.no_grad()
    def _score_tokens(self, rollout: Rollout) -> None:
        rollout.logprobs, rollout.values, _ = self._forward(self.model, rollout)
        if self.reference is None:
            with self.policy.disable_adapter():
                rollout.ref_logprobs = self._forward(self.policy, rollout)[0]
        else:
            rollout.ref_logprobs = self._forward(self.reference, rollout)[0]

    def sequence_reward(self, rollout: Rollout) -> torch.Tensor:
        """(B,): mean - kappa * sd, standardized by the running moments if ``normalize_score``."""
        reward = rollout.mean - self.config.kappa * rollout.sd
        if not self.config.normalize_score:
            return reward
        self.score_moments.update(reward)
        return (reward - self.score_moments.mean) / max(self.score_moments.sd, 1e-12)

    # -- one step ---------------------------------------------------------------------------------
    def step(self, prompts: list[str]) -> dict:
        """Roll out on ``prompts``, then optimise; returns the step's metrics."""
        c = self.config
        self.model.eval()  # dropout off: before the first update the new and old log-probabilities agree
        rollout = self.generate(prompts)
        self._score_tokens(rollout)
        mask, beta = rollout.mask, self.kl_controller.beta
        rewards, kl = token_rewards(self.sequence_reward(rollout), rollout.logprobs, rollout.ref_logprobs,
                                    mask, beta)
        advantages, returns = gae(rewards, rollout.values, mask, c.gamma, c.lam)
        if c.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        stats = {"policy_loss": [], "value_loss": [], "entropy": [], "clip_fraction": [], "value_clip_fraction": []}
        for _ in range(c.ppo_epochs):
            for rows in torch.randperm(len(prompts)).split(c.minibatch_size):
                m = mask[rows]
                logprobs, values, logits = self._forward(self.model, rollout, rows)
                pg_loss, clip_fraction = policy_loss(logprobs, rollout.logprobs[rows], advantages[rows], m,
                                                     c.clip_range)
                vf_loss, vf_clip = value_loss(values, rollout.values[rows], returns[rows], m, c.clip_range_value)
                loss = pg_loss + c.vf_coef * vf_loss
                self.optimizer.zero_grad()
                self.accelerator.backward(loss)
                self.accelerator.clip_grad_norm_(self.model.parameters(), c.max_grad_norm)
                self.optimizer.step()
                with torch.no_grad():
                    entropy = masked_mean(torch.logsumexp(logits, -1) - (F.softmax(logits, -1) * logits).sum(-1), m)
                for name, value in zip(stats, (pg_loss, vf_loss, entropy, clip_fraction, vf_clip)):
                    stats[name].append(value.detach().item())
        kl_per_completion = float(kl.sum(1).mean())
        self.kl_controller.update(kl_per_completion, len(prompts))
        return {"reward_mean": float(rollout.mean.mean()), "reward_sd": float(rollout.sd.mean()),
                "reward": float((rollout.mean - c.kappa * rollout.sd).mean()), "kl": kl_per_completion,
                **{name: sum(v) / len(v) for name, v in stats.items()}, "beta": beta,
                "completion_tokens": float(mask.sum(1).mean())}

    def train(self, prompts: list[str], run=None, progress: bool = True, after_step=None) -> list[dict]:
        """``config.steps`` PPO steps on prompts drawn with replacement; logged to ``run`` (a RunDir).
        ``after_step(step)``, if given, runs after each step; a dict it returns joins the step's record."""
        from tqdm import tqdm

        if not prompts:
            raise ValueError("PPO needs at least one training prompt")
        g = torch.Generator().manual_seed(self.config.seed)
        history = []
        if run is not None:
            run.start_metrics()
        bar = tqdm(range(1, self.config.steps + 1), desc="ppo", disable=not progress)
        for step in bar:
            batch = torch.randint(len(prompts), (self.config.rollouts_per_step,), generator=g).tolist()
            record = {"step": step, **self.step([prompts[i] for i in batch])}
            if not all(math.isfinite(v) for v in record.values()):
                raise FloatingPointError(f"PPO step {step} produced a non-finite metric: {record}")
            if after_step is not None:
                record.update(after_step(step) or {})
            history.append(record)
            if run is not None:
                run.log_metrics(record)
            bar.set_postfix(reward=f"{record['reward']:.3g}", kl=f"{record['kl']:.2f}")
        return history

    @torch.no_grad()
    def evaluate(self, prompts: list[str], batch_size: int | None = None) -> tuple[Rollout, dict]:
        """Fresh rollouts, one per prompt: (the rollouts, a summary: mean posterior-mean reward and
        its standard error, mean posterior sd, mean of mean - kappa * sd, mean KL to the reference)."""
        batch_size = batch_size or self.config.rollouts_per_step
        parts = []
        for start in range(0, len(prompts), batch_size):
            rollout = self.generate(prompts[start:start + batch_size])
            self._score_tokens(rollout)
            parts.append(rollout)
        mean, sd = torch.cat([r.mean for r in parts]), torch.cat([r.sd for r in parts])
        kl = torch.cat([((r.logprobs - r.ref_logprobs) * r.mask).sum(1) for r in parts])
        merged = Rollout([p for r in parts for p in r.prompts], [x for r in parts for x in r.completions],
                         None, None, None, mean, sd)
        return merged, {"reward": float(mean.mean()), "reward_se": float(mean.std() / math.sqrt(len(mean))),
                        "reward_sd": float(sd.mean()), "objective": float((mean - self.config.kappa * sd).mean()),
                        "kl": float(kl.mean())}
