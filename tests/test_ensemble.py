"""pyro_vrm/ensemble.py: the mixture's moments, for point estimates and for VRM members."""

import pytest
import torch

from pyro_vrm.baseline import RewardHead
from pyro_vrm.config import ModelConfig
from pyro_vrm.ensemble import Ensemble, WorstCase, reward_mean_sd
from pyro_vrm.posterior import reward_posterior
from pyro_vrm.vrm import VRM

H = 6


def states(n: int = 5):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, H, generator=g), torch.randn(n, H, generator=g)


def test_an_ensemble_of_point_estimates_has_the_spread_of_its_members_as_sd():
    torch.manual_seed(0)
    heads = [RewardHead(H, 8, 1) for _ in range(3)]
    prompt_state, response_state = states()
    with torch.no_grad():
        rewards = torch.stack([h(prompt_state, response_state) for h in heads])   # (3, 5)
    mean, sd = reward_mean_sd(Ensemble(heads), prompt_state, response_state)
    assert torch.allclose(mean, rewards.mean(0), atol=1e-6)
    assert torch.allclose(sd, rewards.std(0, correction=0), atol=1e-6)  # the uniform mixture: ddof 0
    assert torch.all(sd > 0)
    # one member: the member itself, with no spread
    one_mean, one_sd = reward_mean_sd(Ensemble(heads[:1]), prompt_state, response_state)
    assert torch.allclose(one_mean, rewards[0], atol=1e-6) and torch.equal(one_sd, torch.zeros(5))


def test_an_ensemble_of_vrms_adds_the_members_posterior_variance_to_their_spread():
    members = []
    for seed in range(2):
        torch.manual_seed(seed)
        members.append(VRM(ModelConfig(latent_dim=3, width=8), H, 4))
    prompt_state, response_state = states()
    moments = [reward_posterior(m, prompt_state, response_state) for m in members]
    means = torch.stack([m for m, _ in moments])
    within = torch.stack([s for _, s in moments]).pow(2).mean(0)
    mean, sd, between = Ensemble(members).mean_sd(prompt_state, response_state)
    assert torch.allclose(mean, means.mean(0), atol=1e-6)
    assert torch.allclose(between, (means[0] - means[1]).abs() / 2, atol=1e-6)  # two members: half their gap
    assert torch.allclose(sd**2, within + between**2, atol=1e-6)
    assert torch.all(sd >= torch.stack([s for _, s in moments]).min(0).values)
    assert torch.allclose(Ensemble(members)(prompt_state, response_state), mean)


def test_an_empty_ensemble_is_refused():
    with pytest.raises(ValueError, match="at least one member"):
        Ensemble([])


def test_standardized_members_agree_on_a_shifted_and_scaled_copy():
    """A member and an affine copy of it (r' = 3 r + 5: the same preferences) disagree on every
    response until standardized, and then not at all."""
    torch.manual_seed(0)
    head = RewardHead(H, 8, 1)
    copy = RewardHead(H, 8, 1)
    copy.load_state_dict(head.state_dict())
    with torch.no_grad():
        last = copy.net[-1]
        last.weight.mul_(3.0)
        last.bias.mul_(3.0).add_(5.0)
    prompt_state, response_state = states(20)
    ensemble = Ensemble([head, copy])
    assert reward_mean_sd(ensemble, prompt_state, response_state)[1].min() > 1.0
    ensemble.standardize(prompt_state[:10], response_state[:10])
    mean, sd = reward_mean_sd(ensemble, prompt_state[10:], response_state[10:])
    assert torch.allclose(sd, torch.zeros(10), atol=1e-5)
    with torch.no_grad():
        reward = head(prompt_state[10:], response_state[10:])
        reference = head(prompt_state[:10], response_state[:10])
    assert torch.allclose(mean, (reward - reference.mean()) / reference.std(), atol=1e-5)
    assert torch.equal(Ensemble([head]).scale, torch.ones(1))


def test_the_worst_case_reward_is_the_lowest_standardized_member_reward():
    torch.manual_seed(0)
    heads = [RewardHead(H, 8, 1) for _ in range(3)]
    prompt_state, response_state = states(20)
    ensemble = Ensemble(heads).standardize(prompt_state[:10], response_state[:10])
    with torch.no_grad():
        standardized = torch.stack([(h(prompt_state[10:], response_state[10:]) - a) / b
                                    for h, a, b in zip(heads, ensemble.offset, ensemble.scale)])   # (3, 10)
    worst, sd = reward_mean_sd(WorstCase(ensemble), prompt_state[10:], response_state[10:])
    assert torch.allclose(worst, standardized.min(0).values, atol=1e-6) and torch.equal(sd, torch.zeros(10))
    mean = reward_mean_sd(ensemble, prompt_state[10:], response_state[10:])[0]
    assert torch.all(worst <= mean + 1e-6) and torch.any(worst < mean - 1e-3)  # below the mean where members disagree
    assert torch.equal(WorstCase(ensemble)(prompt_state[10:], response_state[10:]), worst)
