import math

import pytest
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from pyro_vrm.config import ModelConfig
from pyro_vrm.features import PairBatch
from pyro_vrm.model import SITES, LinearDecoder, MLPDecoder, Priors, make_decoder, model
from pyro_vrm.vrm import VRM


def make_batch(n=6, hidden=5, index=None):
    g = torch.Generator().manual_seed(1)
    states = [torch.randn(n, hidden, generator=g) for _ in range(3)]
    return PairBatch(torch.arange(n) if index is None else index, *states)


def latent_sites(trace):
    """Latent sample sites, without plate subsampling and AutoNormal's auxiliary sites."""
    return {name for name in trace.stochastic_nodes if not site_is_subsample(trace.nodes[name])
            and not trace.nodes[name]["infer"].get("is_auxiliary")}


def test_priors_print_compare_and_validate():
    assert repr(Priors()) == ("Priors(objective_weights: Dirichlet(1.0), features: Normal(0.0, 1.0), "
                              "aspects: Normal(s(z), HalfNormal(1.0)))")
    assert "aspects: Normal(s(z), 0.5), decoder: Normal(0, 2.0))" in repr(Priors(aspect_noise=0.5, decoder_scale=2.0))
    assert Priors(concentration=0.3) == Priors(concentration=0.3) != Priors()
    assert "StudentT" in repr(Priors(feature_df=3.0))
    for bad in ({"concentration": -1.0}, {"feature_scale": 0.0}, {"feature_df": -2.0},
                {"concentration": (1.0, 0.0)}):
        with pytest.raises(ValueError, match="Priors"):
            Priors(**bad)
    with pytest.raises(ValueError, match="3 values for 4 objectives"):
        Priors(concentration=(1.0, 1.0, 1.0)).concentration_vector(4, torch.zeros(()))


def test_model_samples_the_documented_sites_and_shapes():
    decoder = LinearDecoder(latent_dim=3, num_objectives=4)
    trace = poutine.trace(model).get_trace(make_batch(), decoder, Priors())
    assert trace.nodes[SITES["weights"]]["value"].shape == (6, 4)
    assert torch.allclose(trace.nodes[SITES["weights"]]["value"].sum(-1), torch.ones(6))
    assert trace.nodes[SITES["chosen"]]["value"].shape == (6, 3)
    assert trace.nodes[SITES["preference"]]["value"].shape == (6,)
    assert latent_sites(trace) == {SITES["weights"], SITES["chosen"], SITES["rejected"], SITES["preference"]}


@pytest.mark.parametrize("config", [ModelConfig(latent_dim=3, width=8, conditional_prior=False),
                                    ModelConfig(latent_dim=3, width=8, conditional_prior=False, decoder="mlp"),
                                    ModelConfig(latent_dim=3, width=8, conditional_prior=False, bayesian_decoder=True),
                                    ModelConfig(latent_dim=3, width=8, conditional_prior=True)])
def test_guide_covers_exactly_the_models_latent_sites(config):
    vrm = VRM(config, hidden_size=5, num_objectives=4)
    batch, y = make_batch(), torch.ones(6)
    guide_trace = poutine.trace(vrm.guide).get_trace(batch, num_pairs=6, preferences=y)
    model_trace = poutine.trace(poutine.replay(vrm.model, guide_trace)).get_trace(batch, num_pairs=6, preferences=y)
    model_latents = latent_sites(model_trace) - {SITES["preference"]}  # y is observed here
    assert latent_sites(guide_trace) == model_latents
    if config.bayesian_decoder:
        assert {"decoder_weight", "decoder_bias"} <= model_latents


def test_hyperprior_adds_a_global_concentration_covered_by_the_guide():
    priors = Priors(concentration_hyperprior=(0.0, 1.0))
    vrm = VRM(ModelConfig(latent_dim=3, width=8, conditional_prior=False), hidden_size=5, num_objectives=4, priors=priors)
    guide_trace = poutine.trace(vrm.guide).get_trace(make_batch(), num_pairs=6, preferences=torch.ones(6))
    assert "log_concentration" in latent_sites(guide_trace)
    assert guide_trace.nodes["log_concentration"]["value"].shape == (4,)


def test_plate_scales_log_likelihood_by_data_size_over_batch_size():
    decoder = LinearDecoder(latent_dim=3, num_objectives=4)
    batch, y = make_batch(n=4, index=torch.tensor([0, 5, 9, 2])), torch.ones(4)
    conditioned = poutine.condition(model, data={SITES["weights"]: torch.full((4, 4), 0.25),
                                                 SITES["chosen"]: torch.randn(4, 3),
                                                 SITES["rejected"]: torch.randn(4, 3)})
    small = poutine.trace(conditioned).get_trace(batch, decoder, Priors(), num_pairs=4, preferences=y)
    large = poutine.trace(conditioned).get_trace(batch, decoder, Priors(), num_pairs=40, preferences=y)
    assert torch.allclose(large.log_prob_sum(), 10 * small.log_prob_sum())


def test_prior_predictive_is_a_coin_flip_by_exchangeability():
    # z_c and z_r are iid under the prior, so P(y = 1) = 1/2 whatever the decoder.
    decoder = LinearDecoder(latent_dim=3, num_objectives=4)
    with torch.no_grad():
        decoder.weight.mul_(5.0)
        y = model(make_batch(n=20000, hidden=1), decoder, Priors())
    assert abs(y.mean().item() - 0.5) < 0.015


@pytest.mark.parametrize("priors", [Priors(feature_df=4.0),
                                    Priors(feature_scale_tril=tuple(map(tuple, (0.5 * torch.eye(3)).tolist()))),
                                    Priors(concentration=(0.3, 0.3, 0.3, 0.3))])
def test_swapped_priors_enter_the_model(priors):
    decoder = LinearDecoder(latent_dim=3, num_objectives=4)
    trace = poutine.trace(model).get_trace(make_batch(), decoder, priors)
    fn = trace.nodes[SITES["chosen"]]["fn"]
    z = trace.nodes[SITES["chosen"]]["value"]
    expected = priors.semantic_features(3, torch.zeros(()))
    assert torch.allclose(fn.log_prob(z), expected.log_prob(z))


def test_decoders_shapes_and_errors():
    w, z = torch.full((2, 5, 4), 0.25), torch.randn(2, 5, 3)
    reward, scores = LinearDecoder(3, 4)(w, z)
    assert reward.shape == (2, 5) and scores.shape == (2, 5, 4)
    assert torch.allclose(reward, scores.mean(-1))
    reward, scores = MLPDecoder(3, 4)(w[0], z)  # w broadcasts against both responses
    assert reward.shape == (2, 5) and scores is None
    with pytest.raises(ValueError, match="linear only"):
        make_decoder("mlp", 3, 4, bayesian=True)
    assert make_decoder("linear", 3, 4, bayesian=True).bayesian
    with pytest.raises(ValueError, match="unknown decoder"):
        make_decoder("cubic", 3, 4)


def test_observed_aspects_need_per_objective_scores_and_a_sigma():
    aspects = (torch.zeros(6, 4), torch.zeros(6, 4))
    trace = poutine.trace(model).get_trace(make_batch(), LinearDecoder(3, 4), Priors(aspect_noise=0.5), aspects=aspects)
    assert trace.nodes["chosen_aspects"]["is_observed"] and "aspect_noise_prior" not in trace.nodes
    assert trace.nodes["chosen_aspects"]["fn"].base_dist.scale.eq(0.5).all()
    with pytest.raises(ValueError, match="--decoder linear"):
        model(make_batch(), MLPDecoder(3, 4), Priors(aspect_noise=0.5), aspects=aspects)
    with pytest.raises(ValueError, match="no sigma_a to learn"):
        model(make_batch(), LinearDecoder(3, 4), Priors(), aspects=aspects)


def test_a_learned_aspect_noise_is_the_decoders_with_its_prior_once():
    decoder = LinearDecoder(3, 4, learn_aspect_noise=True)
    with torch.no_grad():
        decoder.log_aspect_noise.copy_(torch.tensor([0.0, 0.5, -0.5, 1.0]))
    aspects = (torch.zeros(6, 4), torch.zeros(6, 4))
    trace = poutine.trace(model).get_trace(make_batch(), decoder, Priors(aspect_noise_scale=2.0), aspects=aspects)
    assert torch.allclose(trace.nodes["rejected_aspects"]["fn"].base_dist.scale[0], decoder.aspect_noise)
    prior = trace.nodes["aspect_noise_prior"]
    assert not prior["cond_indep_stack"]  # outside the pairs plate: counted once, not per pair
    expected = torch.distributions.HalfNormal(2.0).log_prob(decoder.aspect_noise).sum()
    assert torch.allclose(prior["fn"].log_prob(prior["value"]), expected)


def test_a_preference_scale_sharpens_the_preference_and_leaves_the_aspects_in_their_units():
    torch.manual_seed(0)
    plain, scaled = LinearDecoder(3, 4), LinearDecoder(3, 4, learn_preference_scale=True)
    scaled.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():
        scaled.log_preference_scale.fill_(math.log(2.5))
    aspects = (torch.zeros(6, 4), torch.zeros(6, 4))
    traces = [poutine.trace(poutine.seed(model, rng_seed=1)).get_trace(make_batch(), decoder, Priors(aspect_noise=0.5),
                                                                         aspects=aspects) for decoder in (plain, scaled)]
    logits = [t.nodes[SITES["preference"]]["fn"].logits for t in traces]
    assert torch.allclose(logits[1], 2.5 * logits[0])
    assert torch.allclose(traces[1].nodes["chosen_aspects"]["fn"].base_dist.loc,
                          traces[0].nodes["chosen_aspects"]["fn"].base_dist.loc)
    # only where aspects fix the scale of s(z): elsewhere A's own scale carries it
    with_aspects = VRM(ModelConfig(observe_aspects=True, preference_scale=True), 5, 4)
    without = VRM(ModelConfig(observe_aspects=False, preference_scale=True), 5, 4)
    assert hasattr(with_aspects.decoder, "log_preference_scale") and without.decoder.preference_scale == 1.0


def test_a_conditional_prior_starts_at_the_priors_and_puts_the_hidden_states_in_the_story():
    priors = Priors(concentration=2.0, feature_loc=0.5, feature_scale=0.7)
    vrm = VRM(ModelConfig(latent_dim=3, width=8, conditional_prior=True), hidden_size=5, num_objectives=4,
              priors=priors)
    batch = make_batch()
    trace = poutine.trace(vrm.model).get_trace(batch)
    p_w, p_z = trace.nodes[SITES["weights"]]["fn"], trace.nodes[SITES["chosen"]]["fn"].base_dist
    assert torch.allclose(p_w.concentration, torch.full((6, 4), 2.0), atol=0.2)
    assert torch.allclose(p_z.loc, torch.full((6, 3), 0.5), atol=0.2)
    assert torch.allclose(p_z.scale, torch.full((6, 3), 0.7), atol=0.1)
    moved = batch._replace(chosen_state=batch.chosen_state + 3.0)
    assert not torch.allclose(poutine.trace(vrm.model).get_trace(moved).nodes[SITES["chosen"]]["fn"].base_dist.loc,
                              p_z.loc)
    with pytest.raises(ValueError, match="conditional prior"):
        VRM(ModelConfig(latent_dim=3, width=8, conditional_prior=True), 5, 4, Priors(concentration=0.2))
