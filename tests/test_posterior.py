import math

import pytest
import torch

from pyro_vrm.config import ModelConfig
from pyro_vrm.features import PairBatch
from pyro_vrm.posterior import (_reward_samples, kl_per_pair, pac_bayes_bound, pair_posterior,
                                pairwise_accuracy, reward_posterior)
from pyro_vrm.vrm import VRM


def make_vrm(**kw):
    vrm = VRM(ModelConfig(latent_dim=3, width=16, **kw), hidden_size=6, num_objectives=4)
    with torch.no_grad():  # move the guide away from its flat start so the moments are not trivial
        for p in vrm.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return vrm


def make_batch(n=8):
    g = torch.Generator().manual_seed(2)
    return PairBatch(torch.arange(n), *(torch.randn(n, 6, generator=g) for _ in range(3)))


def test_exact_reward_moments_match_monte_carlo():
    vrm, batch = make_vrm(), make_batch()
    mean, sd = reward_posterior(vrm, batch.prompt_state, batch.chosen_state)
    draws = _reward_samples(vrm, batch, num_samples=40_000)[0]  # (S, B) chosen rewards
    se = draws.std(0) / math.sqrt(len(draws))
    assert torch.all((draws.mean(0) - mean).abs() < 5 * se)
    assert torch.allclose(draws.std(0), sd, rtol=0.03)


def test_monte_carlo_path_for_the_mlp_decoder():
    vrm, batch = make_vrm(decoder="mlp"), make_batch()
    mean, sd = reward_posterior(vrm, batch.prompt_state, batch.chosen_state, num_samples=4000)
    assert mean.shape == sd.shape == (8,) and torch.all(sd > 0)


def test_pair_posterior_probabilities_and_gibbs_error():
    vrm, batch = make_vrm(), make_batch()
    out = pair_posterior(vrm, batch, num_samples=20_000)
    assert torch.all((out["prob_chosen"] > 0) & (out["prob_chosen"] < 1))
    # a pair whose chosen mean reward is higher is predicted to win more often than not
    higher = out["mean_chosen"] > out["mean_rejected"]
    assert torch.all((out["prob_chosen"] > 0.5) == higher)
    assert torch.all((out["gibbs_error"] < 0.5) == higher)


def test_kl_per_pair_is_zero_at_the_prior_and_positive_elsewhere():
    vrm, batch = make_vrm(), make_batch()
    assert torch.all(kl_per_pair(vrm, batch) > 0)
    flat = VRM(ModelConfig(latent_dim=3, width=16), hidden_size=6, num_objectives=4)
    with torch.no_grad():
        for encoder in (flat.amortized_guide.weight_encoder, flat.amortized_guide.feature_encoder):
            encoder.net[-1].weight.zero_()
        flat.amortized_guide.feature_encoder.net[-1].bias[:3].zero_()
    assert torch.allclose(kl_per_pair(flat, batch), torch.zeros(8), atol=1e-2)


def test_pac_bayes_bound_by_hand():
    n, kl, delta = 500, 40.0, 0.05
    by_hand = 0.1 + math.sqrt((kl + math.log(20) + math.log(500) + 2) / 999)
    assert pac_bayes_bound(0.1, kl, n, delta) == pytest.approx(by_hand)
    assert pac_bayes_bound(0.1, 0.0, 10**6) < pac_bayes_bound(0.1, 0.0, 100)


def test_pairwise_accuracy_counts_ties_half():
    assert pairwise_accuracy(torch.tensor([1.0, 0.0, 2.0, 1.0]), torch.tensor([0.0, 1.0, 2.0, 0.5])) == 0.625
