"""Preference data drawn from the VRM generative model itself, with the ground truth kept.

The simulator, fixed before any model is compared on it:

* **Prompts.** ``num_types`` prompt types, each with its own Dirichlet profile
  alpha_t = 1 + 9 p_t: types 0..K-1 put p_t on one objective, the next K types split it
  evenly between two neighbouring objectives (and so on cyclically). Each prompt draws its
  objective weights w ~ Dirichlet(alpha_t) once; its ``pairs_per_prompt`` pairs share them.
* **Responses and preferences.** z^c, z^r and y come from running :func:`pyro_vrm.model.model`
  forward, conditioned on the prompt's w, with the true linear decoder s(z) = A z + b whose rows
  of A have norm ``reward_scale`` (so each s_k(z) has sd ``reward_scale`` under the prior).
  Pairs where y = 0 are swapped so that "chosen" is always the winner, as in real data.
* **Difficulty.** ``reward_scale`` = 2 puts the oracle's accuracy (the true rewards' ranking
  of a pair against the sampled label) at about 0.8; the labels are Bradley-Terry draws, so no
  model can do better than the oracle in expectation.
* **Aspect annotations** (UltraFeedback-style): each response gets K scores
  a_k = s_k(z) + e, e ~ N(0, (aspect_noise * reward_scale)^2): a noisy measurement of its
  per-objective quality. ``aspect_noise`` = 0.5 means the noise sd is half the scores' sd.
* **Hidden states** (what a backbone would give): a fixed random two-layer tanh network of the
  latents plus N(0, state_noise^2) noise. The prompt state embeds (K w - 1, u) where u ~ N(0, I_8)
  is prompt content that does not bear on the reward; the response state embeds (z, K w - 1, u).
* **Split** by prompt: ``test_fraction`` of prompts, with all their pairs, form the test split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from pyro import poutine

from .features import PairBatch, PreferenceFeatures, split_by_prompt
from .metrics import oracle_accuracy
from .model import SITES, LinearDecoder, Priors, model

__all__ = ["SimulationConfig", "SimulatedData", "simulate", "PriorSimulationConfig", "simulate_from_prior"]

NUISANCE_DIM = 8


@dataclass(frozen=True)
class SimulationConfig:
    num_prompts: int = field(default=2500, metadata={"help": "prompts (train + test)"})
    pairs_per_prompt: int = field(default=2, metadata={"help": "preference pairs per prompt"})
    num_types: int = field(default=8, metadata={"help": "prompt types (objective-weight profiles)"})
    num_objectives: int = field(default=4, metadata={"help": "K, objectives and aspects"})
    latent_dim: int = field(default=16, metadata={"help": "true semantic feature dimension"})
    hidden_size: int = field(default=64, metadata={"help": "H, size of the hidden states"})
    reward_scale: float = field(default=2.0, metadata={"help": "sd of each true score s_k(z)"})
    aspect_noise: float = field(default=0.5, metadata={"help": "annotation noise / score sd"})
    state_noise: float = field(default=0.1, metadata={"help": "noise sd on hidden states"})
    test_fraction: float = field(default=0.2, metadata={"help": "share of prompts held out"})
    seed: int = field(default=0, metadata={"help": "seed of the simulator (not of training)"})


@dataclass
class SimulatedData:
    """Train and test features, and the truth behind them (per split: w, z_c, z_r, r_c, r_r)."""

    config: SimulationConfig
    train: PreferenceFeatures
    test: PreferenceFeatures
    decoder: LinearDecoder
    truth: dict[str, dict[str, torch.Tensor]]

    def oracle_accuracy(self, split: str = "test") -> float:
        """Share of pairs whose true rewards rank the observed winner first (ties half)."""
        return oracle_accuracy(self.truth[split])


def type_concentrations(num_types: int, num_objectives: int) -> torch.Tensor:
    """(T, K) Dirichlet profiles: 1 + 9 p_t with p_t spread over 1, 2, ... neighbouring objectives."""
    profiles = torch.zeros(num_types, num_objectives)
    for t in range(num_types):
        width = 1 + t // num_objectives
        for j in range(width):
            profiles[t, (t + j) % num_objectives] += 1.0 / width
    return 1.0 + 9.0 * profiles


def _random_embedding(in_features: int, out_features: int, generator: torch.Generator):
    """A fixed random two-layer tanh network, gains set for unit-scale pre-activations."""
    w1 = torch.randn(in_features, out_features, generator=generator) * 1.5 / in_features**0.5
    w2 = torch.randn(out_features, out_features, generator=generator) * 1.5 / out_features**0.5
    return lambda x: torch.tanh(torch.tanh(x @ w1) @ w2)


def simulate(config: SimulationConfig = SimulationConfig()) -> SimulatedData:
    """Draw a data set from the VRM model (see the module docstring for the full story).

    Examples:
        >>> data = simulate(SimulationConfig(num_prompts=20, seed=1))
        >>> len(data.train) + len(data.test), data.train.hidden_size
        (40, 64)
    """
    c = config
    if c.num_prompts < 2 or c.pairs_per_prompt < 1 or not 0 < c.test_fraction < 1:
        raise ValueError("simulate needs >= 2 prompts, >= 1 pair per prompt, 0 < test_fraction < 1")
    g = torch.Generator().manual_seed(c.seed)
    K, d = c.num_objectives, c.latent_dim

    # True decoder: rows of A with norm reward_scale.
    decoder = LinearDecoder(d, K)
    with torch.no_grad():
        a = torch.randn(K, d, generator=g)
        decoder.weight.copy_(c.reward_scale * a / a.norm(dim=-1, keepdim=True))
        decoder.bias.copy_(torch.randn(K, generator=g))
    decoder.requires_grad_(False).eval()  # fixed truth, not a parameter to register

    # Prompts: a type, weights from the type's profile, and content that does not bear on reward.
    prompt_type = torch.randint(c.num_types, (c.num_prompts,), generator=g)
    alpha = type_concentrations(c.num_types, K)[prompt_type]
    nuisance = torch.randn(c.num_prompts, NUISANCE_DIM, generator=g)
    prompt_id = torch.arange(c.num_prompts).repeat_interleave(c.pairs_per_prompt)
    n = len(prompt_id)
    batch = PairBatch(torch.arange(n), *(torch.empty(n, 0),) * 3)

    with poutine.seed(rng_seed=c.seed):  # seeds, then restores, the global RNG
        prompt_w = Priors().objective_weights(alpha).sample()
        w = prompt_w[prompt_id]
        # Pairs: run the model forward, conditioned on each prompt's w.
        trace = poutine.trace(poutine.condition(model, data={SITES["weights"]: w})).get_trace(
            batch, decoder, Priors())
    z = torch.stack([trace.nodes[SITES["chosen"]]["value"], trace.nodes[SITES["rejected"]]["value"]])
    rewards = torch.stack([trace.nodes["chosen_reward"]["value"], trace.nodes["rejected_reward"]["value"]])
    lost = trace.nodes[SITES["preference"]]["value"] == 0
    z[:, lost], rewards[:, lost] = z.flip(0)[:, lost], rewards.flip(0)[:, lost]  # chosen = winner
    with torch.no_grad():
        _, scores = decoder(w, z)
    aspects = scores + c.aspect_noise * c.reward_scale * torch.randn(scores.shape, generator=g)

    # Hidden states: a fixed random nonlinear embedding of the latents, plus noise.
    prompt_latent = torch.cat([K * prompt_w - 1, nuisance], -1)[prompt_id]
    embed_prompt = _random_embedding(prompt_latent.shape[-1], c.hidden_size, g)
    embed_response = _random_embedding(d + prompt_latent.shape[-1], c.hidden_size, g)

    def noisy(x):
        return x + c.state_noise * torch.randn(x.shape, generator=g)

    prompt_state = noisy(embed_prompt(prompt_latent))
    chosen_state = noisy(embed_response(torch.cat([z[0], prompt_latent], -1)))
    rejected_state = noisy(embed_response(torch.cat([z[1], prompt_latent], -1)))

    features = PreferenceFeatures(prompt_state, chosen_state, rejected_state, prompt_id,
                                  aspects[0], aspects[1])
    truth = {"objective_weights": w, "chosen_features": z[0], "rejected_features": z[1],
             "chosen_reward": rewards[0], "rejected_reward": rewards[1],
             "prompt_type": prompt_type[prompt_id]}

    splits = split_by_prompt(prompt_id, c.test_fraction, c.seed)
    return SimulatedData(
        config=c,
        train=features.select(splits["train"]),
        test=features.select(splits["test"]),
        decoder=decoder,
        truth={s: {k: v[i] for k, v in truth.items()} for s, i in splits.items()},
    )


@dataclass(frozen=True)
class PriorSimulationConfig:
    """Data drawn from the VRM model's own prior and likelihood (:func:`simulate_from_prior`), for
    simulation-based calibration."""

    num_pairs: int = field(default=6000, metadata={"help": "pairs (train + held out), one prompt each"})
    held_out: int = field(default=1000, metadata={"help": "pairs held out (the SBC replicates)"})
    num_objectives: int = field(default=4, metadata={"help": "K, objectives and aspects"})
    latent_dim: int = field(default=16, metadata={"help": "true semantic feature dimension"})
    hidden_size: int = field(default=64, metadata={"help": "H, size of the hidden states"})
    score_scale: float = field(default=0.8, metadata={"help": "sd of each true score s_k(z); sigma_a^2 = 1 - it^2"})
    state_noise: float = field(default=0.1, metadata={"help": "noise sd on hidden states"})
    seed: int = field(default=0, metadata={"help": "seed of the simulator"})

    @property
    def aspect_noise(self) -> float:
        """sigma_a: the aspect scores have variance s_k's + sigma_a^2 = 1 under the prior."""
        return math.sqrt(1.0 - self.score_scale**2)


def simulate_from_prior(priors: Priors = Priors(),
                        config: PriorSimulationConfig = PriorSimulationConfig()) -> SimulatedData:
    """Draw a data set from :func:`pyro_vrm.model.model` itself, run forward under ``priors``,
    as simulation-based calibration needs (the prompt-type simulator of :func:`simulate` is not
    the model's prior).

    Each pair has its own prompt, since the model draws w per pair: w ~ Dirichlet(alpha0)
    (under a hyperprior, alpha0 too), z_c, z_r ~ p(z), y ~ Bernoulli(sigmoid(r_c - r_r)) with a
    true linear decoder whose rows of A have norm ``score_scale`` and b = 0; pairs where y = 0 are
    swapped, so that the chosen response won, as in real data. Aspect scores are
    a ~ N(s(z), sigma_a^2) with sigma_a^2 = 1 - score_scale^2: under a standard-Normal p(z) each
    aspect has mean 0 and variance 1, so a fit's standardization of the scores is the identity up
    to sampling error, and the model a fit assumes is the one that drew the data. Hidden states
    are made as :func:`simulate` makes them. The last ``held_out`` pairs are the test split; the
    truth holds sigma_a as ``aspect_noise`` (a (K,) tensor per split).

    Examples:
        >>> data = simulate_from_prior(config=PriorSimulationConfig(num_pairs=50, held_out=10))
        >>> len(data.train), len(data.test), data.train.hidden_size
        (40, 10, 64)
    """
    c = config
    if c.num_pairs <= c.held_out or c.held_out < 1 or not 0 < c.score_scale < 1:
        raise ValueError("simulate_from_prior needs 0 < held_out < num_pairs and 0 < score_scale < 1")
    g = torch.Generator().manual_seed(c.seed)
    K, d, n = c.num_objectives, c.latent_dim, c.num_pairs

    decoder = LinearDecoder(d, K)
    with torch.no_grad():
        a = torch.randn(K, d, generator=g)
        decoder.weight.copy_(c.score_scale * a / a.norm(dim=-1, keepdim=True))
        decoder.bias.zero_()
    decoder.requires_grad_(False).eval()

    batch = PairBatch(torch.arange(n), *(torch.empty(n, 0),) * 3)
    with poutine.seed(rng_seed=c.seed):
        trace = poutine.trace(model).get_trace(batch, decoder, priors)
    w = trace.nodes[SITES["weights"]]["value"]
    z = torch.stack([trace.nodes[SITES["chosen"]]["value"], trace.nodes[SITES["rejected"]]["value"]])
    rewards = torch.stack([trace.nodes["chosen_reward"]["value"], trace.nodes["rejected_reward"]["value"]])
    lost = trace.nodes[SITES["preference"]]["value"] == 0
    z[:, lost], rewards[:, lost] = z.flip(0)[:, lost], rewards.flip(0)[:, lost]
    with torch.no_grad():
        _, scores = decoder(w, z)
    aspects = scores + c.aspect_noise * torch.randn(scores.shape, generator=g)

    prompt_latent = torch.cat([K * w - 1, torch.randn(n, NUISANCE_DIM, generator=g)], -1)
    embed_prompt = _random_embedding(prompt_latent.shape[-1], c.hidden_size, g)
    embed_response = _random_embedding(d + prompt_latent.shape[-1], c.hidden_size, g)

    def noisy(x):
        return x + c.state_noise * torch.randn(x.shape, generator=g)

    features = PreferenceFeatures(noisy(embed_prompt(prompt_latent)),
                                  noisy(embed_response(torch.cat([z[0], prompt_latent], -1))),
                                  noisy(embed_response(torch.cat([z[1], prompt_latent], -1))),
                                  torch.arange(n), aspects[0], aspects[1])
    truth = {"objective_weights": w, "chosen_features": z[0], "rejected_features": z[1],
             "chosen_reward": rewards[0], "rejected_reward": rewards[1]}
    splits = {"train": torch.arange(n - c.held_out), "test": torch.arange(n - c.held_out, n)}
    return SimulatedData(
        config=c, train=features.select(splits["train"]), test=features.select(splits["test"]),
        decoder=decoder, truth={s: {k: v[i] for k, v in truth.items()} for s, i in splits.items()},
    )
