import math

import pytest
import torch
from torch.distributions import kl_divergence

from pyro_vrm.config import ModelConfig
from pyro_vrm.features import PairBatch
from pyro_vrm.model import Priors
from pyro_vrm.posterior import expected_log_likelihood, kl_terms, pair_posterior, reward_posterior
from pyro_vrm.vrm import VRM

# The fixed-prior model, whose guide and KL terms these tests check.
FIXED_PRIOR = {"conditional_prior": False, "preference_scale": False}


def make_vrm(priors=Priors(), **kw):
    torch.manual_seed(0)
    vrm = VRM(ModelConfig(**{**FIXED_PRIOR, "latent_dim": 3, "width": 16, **kw}), hidden_size=6, num_objectives=4,
              priors=priors)
    vrm.create_global_parameters()
    with torch.no_grad():  # move the guide away from its flat start so the moments are not trivial
        for p in vrm.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return vrm


def make_batch(n=8):
    g = torch.Generator().manual_seed(2)
    return PairBatch(torch.arange(n), *(torch.randn(n, 6, generator=g) for _ in range(3)))


def guide_draws(vrm, batch, num_samples):
    """(S, B) rewards of chosen and rejected responses, drawn directly from the guide's
    distributions and the decoder, independently of Predictive."""
    guide = vrm.amortized_guide
    w = guide.weight_posterior(batch.prompt_state).sample((num_samples,))
    z_c = guide.feature_posterior(batch.prompt_state, batch.chosen_state).sample((num_samples,))
    z_r = guide.feature_posterior(batch.prompt_state, batch.rejected_state).sample((num_samples,))
    return vrm.decoder(w, z_c)[0], vrm.decoder(w, z_r)[0]


@pytest.mark.parametrize("config", [{}, {"observe_aspects": True, "preference_scale": True}],
                         ids=["plain", "preference scale"])
def test_exact_reward_moments_match_monte_carlo(config):
    vrm, batch = make_vrm(**config), make_batch()
    assert (vrm.decoder.preference_scale != 1.0) == bool(config)  # perturbed from its start at 1
    mean, sd = reward_posterior(vrm, batch.prompt_state, batch.chosen_state)
    with torch.no_grad():
        draws = guide_draws(vrm, batch, 40_000)[0]
    se = draws.std(0) / math.sqrt(len(draws))
    assert torch.all((draws.mean(0) - mean).abs() < 5 * se)
    assert torch.allclose(draws.std(0), sd, rtol=0.03)


def test_monte_carlo_moments_of_the_mlp_decoder_match_direct_draws():
    vrm, batch = make_vrm(decoder="mlp"), make_batch()
    mean, sd = reward_posterior(vrm, batch.prompt_state, batch.chosen_state, num_samples=20_000)
    with torch.no_grad():
        draws = guide_draws(vrm, batch, 20_000)[0]
    se = draws.std(0) * math.sqrt(2 / len(draws))  # two independent estimates
    assert torch.all((draws.mean(0) - mean).abs() < 5 * se)
    assert torch.allclose(draws.std(0), sd, rtol=0.05)
    assert sd.std() > 0  # a response-dependent sd, not one constant


def test_pair_posterior_is_the_expectation_over_the_guide_of_a_shared_w():
    vrm, batch = make_vrm(), make_batch()
    out = pair_posterior(vrm, batch, num_samples=20_000)
    with torch.no_grad():
        r_c, r_r = guide_draws(vrm, batch, 20_000)  # the same w for both responses of a draw
    margin = r_c - r_r
    expected_prob, expected_error = torch.sigmoid(margin).mean(0), (margin < 0).float().mean(0)
    assert torch.allclose(out["prob_chosen"], expected_prob, atol=0.015)
    assert torch.allclose(out["gibbs_error"], expected_error, atol=0.02)
    assert torch.allclose(out["margin_sd"], margin.std(0), rtol=0.05)
    # the margin's sd is not the sum of the two rewards' sds: they share w
    assert torch.all(out["margin_sd"] < out["sd_chosen"] + out["sd_rejected"])


def test_kl_terms_are_zero_at_the_prior_and_match_monte_carlo_elsewhere():
    vrm, batch = make_vrm(), make_batch()
    kl = kl_terms(vrm, batch)
    assert kl.exact and float(kl.global_kl) == 0.0
    q_w = vrm.amortized_guide.weight_posterior(batch.prompt_state)
    w = q_w.sample((100_000,))
    mc = (q_w.log_prob(w) - Priors().objective_weights(torch.ones(4)).log_prob(w)).mean(0)
    assert torch.allclose(kl.weights, mc, atol=0.03)
    flat = VRM(ModelConfig(latent_dim=3, width=16, **FIXED_PRIOR), hidden_size=6, num_objectives=4)
    with torch.no_grad():
        for encoder in (flat.amortized_guide.weight_encoder, flat.amortized_guide.feature_encoder):
            encoder.net[-1].weight.zero_()
        flat.amortized_guide.feature_encoder.net[-1].bias[:3].zero_()
    assert torch.allclose(kl_terms(flat, batch).local, torch.zeros(8), atol=1e-5)


@torch.no_grad()
def test_global_latents_kl_is_counted_once_and_in_closed_form():
    vrm, batch = make_vrm(bayesian_decoder=True), make_batch()
    kl = kl_terms(vrm, batch)
    guide = vrm.global_guide
    by_hand = sum(kl_divergence(torch.distributions.Normal(getattr(guide.locs, name), getattr(guide.scales, name)),
                                torch.distributions.Normal(0.0, 1.0)).sum() for name in ("decoder_weight", "decoder_bias"))
    assert kl.exact and float(kl.global_kl) == pytest.approx(float(by_hand), rel=1e-5)
    assert float(kl.total(1000)) == pytest.approx(float(kl.local.mean() * 1000 + by_hand), rel=1e-5)


@torch.no_grad()
def test_a_hyperprior_makes_the_weights_kl_a_monte_carlo_estimate():
    vrm, batch = make_vrm(Priors(concentration_hyperprior=(0.0, 0.5))), make_batch()
    kl = kl_terms(vrm, batch, num_samples=4000)
    assert not kl.exact and torch.all(torch.isfinite(kl.weights)) and float(kl.global_kl) > 0
    # at a point mass q(log alpha0) = delta(0), the expectation is the plain Dirichlet KL at alpha0 = 1
    sharp = make_vrm(Priors(concentration_hyperprior=(0.0, 0.5)))
    params = dict(sharp.named_parameters())
    params["global_guide.locs.log_concentration_unconstrained"].zero_()
    params["global_guide.scales.log_concentration_unconstrained"].fill_(math.log(1e-6))
    q_w = sharp.amortized_guide.weight_posterior(batch.prompt_state)
    plain = kl_divergence(q_w, Priors().objective_weights(torch.ones(4)))
    assert torch.allclose(kl_terms(sharp, batch).weights, plain, atol=1e-4)


def test_expected_log_likelihood_adds_the_aspect_likelihood():
    vrm, batch = make_vrm(observe_aspects=True), make_batch()
    with torch.no_grad():
        vrm.decoder.log_aspect_noise.zero_()  # a learned sigma_a, at 1
    aspects = (torch.zeros(8, 4), torch.zeros(8, 4))
    torch.manual_seed(1)
    without = expected_log_likelihood(vrm, batch, num_particles=400)
    torch.manual_seed(1)
    with_aspects = expected_log_likelihood(vrm, batch, aspects, num_particles=400)
    # E_q log N(0 | s(z), 1) summed over 2 responses x 4 aspects, by direct draws
    with torch.no_grad():
        guide = vrm.amortized_guide
        aspect_terms = 0.0
        for state in (batch.chosen_state, batch.rejected_state):
            z = guide.feature_posterior(batch.prompt_state, state).sample((4000,))
            scores = z @ vrm.decoder.weight.T + vrm.decoder.bias
            aspect_terms = aspect_terms + torch.distributions.Normal(scores, 1.0).log_prob(torch.zeros(())).sum(-1).mean(0)
    assert torch.all(without <= 0) and torch.all(without > -20)
    assert torch.allclose(with_aspects - without, aspect_terms, rtol=0.05, atol=0.2)


def test_under_a_conditional_prior_a_new_responses_reward_is_the_priors_and_its_kl_is_zero_at_the_start():
    vrm = VRM(ModelConfig(latent_dim=3, width=16, conditional_prior=True, observe_aspects=False), hidden_size=6,
              num_objectives=4)
    batch = make_batch()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in vrm.conditional_prior.parameters():
            p.add_(0.3 * torch.randn_like(p))
        mean, sd = reward_posterior(vrm, batch.prompt_state, batch.chosen_state)
        prior = vrm.conditional_prior
        w = prior.objective_weights(batch.prompt_state).sample((40_000,))
        z = prior.semantic_features(batch.prompt_state, batch.chosen_state).sample((40_000,))
        draws = vrm.decoder(w, z)[0]
    assert torch.all((draws.mean(0) - mean).abs() < 5 * draws.std(0) / math.sqrt(len(draws)))
    assert torch.allclose(draws.std(0), sd, rtol=0.03)
    kl = kl_terms(vrm, batch)  # an untrained guide is the prior
    assert torch.allclose(kl.local, torch.zeros(len(batch.index)), atol=1e-5)
