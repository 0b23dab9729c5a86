import pyro.distributions as dist
import pytest
import torch
from torch.distributions import kl_divergence

from pyro_vrm.features import PairBatch
from pyro_vrm.guide import AmortizedGuide, FeatureEncoder, WeightEncoder
from pyro_vrm.networks import MIN_CONCENTRATION, mlp
from pyro_vrm.model import SITES, Priors
from pyro import poutine


def monte_carlo_kl(q, p, n=200_000):
    x = q.sample((n,))
    log_ratio = q.log_prob(x) - p.log_prob(x)
    return log_ratio.mean(0), log_ratio.std(0) / n**0.5


def test_dirichlet_kl_closed_form_matches_monte_carlo():
    q = dist.Dirichlet(torch.tensor([[2.0, 0.5, 3.0, 1.0], [0.7, 0.7, 5.0, 9.0]]))
    p = Priors().objective_weights(torch.ones(4))
    estimate, se = monte_carlo_kl(q, p)
    assert torch.all((kl_divergence(q, p) - estimate).abs() < 5 * se + 1e-3)


@pytest.mark.parametrize("priors", [Priors(), Priors(feature_loc=0.5, feature_scale=2.0),
                                    Priors(feature_scale_tril=((1.0, 0.0, 0.0), (0.5, 1.0, 0.0), (0.0, 0.3, 0.7)))])
def test_gaussian_kl_closed_form_matches_monte_carlo(priors):
    q = dist.Normal(torch.tensor([[0.3, -1.0, 2.0]]), torch.tensor([[0.5, 1.5, 0.2]])).to_event(1)
    p = priors.semantic_features(3, torch.zeros(()))
    estimate, se = monte_carlo_kl(q, p)
    assert torch.all((kl_divergence(q, p) - estimate).abs() < 5 * se + 1e-3)


def test_encoders_start_where_asked_and_stay_positive():
    h = torch.randn(32, 7)
    concentration = WeightEncoder(7, 4, width=16, depth=2, init_concentration=2.0)(h)
    assert concentration.shape == (32, 4) and torch.all(concentration > 0)
    assert torch.allclose(concentration, torch.full_like(concentration, 2.0), atol=0.3)
    loc, scale = FeatureEncoder(7, 3, width=16, depth=1, init_scale=0.5)(h, h)
    assert loc.shape == scale.shape == (32, 3)
    assert torch.allclose(scale, torch.full_like(scale, 0.5), atol=0.2) and torch.all(scale > 0)


def test_guide_samples_shared_sites_with_responses_told_apart():
    guide = AmortizedGuide(hidden_size=7, num_objectives=4, latent_dim=3, width=16, depth=2, init_concentration=1.0,
                           init_scale=1.0)
    g = torch.Generator().manual_seed(0)
    batch = PairBatch(torch.arange(5), *(torch.randn(5, 7, generator=g) for _ in range(3)))
    trace = poutine.trace(guide).get_trace(batch, num_pairs=50)
    q_c, q_r = trace.nodes[SITES["chosen"]]["fn"], trace.nodes[SITES["rejected"]]["fn"]
    assert trace.nodes[SITES["weights"]]["value"].shape == (5, 4)
    assert not torch.allclose(q_c.mean, q_r.mean)  # different responses, different q(z)
    # the same response through the pair's chosen slot or alone gives the same q(z)
    alone = guide.feature_posterior(batch.prompt_state, batch.chosen_state)
    assert torch.allclose(alone.mean, q_c.mean, atol=1e-6)
    assert trace.nodes[SITES["plate"]]["fn"].size == 50


def test_guide_rejects_bad_sizes_and_mlp_has_requested_depth():
    with pytest.raises(ValueError, match="positive sizes"):
        AmortizedGuide(hidden_size=0, num_objectives=4, latent_dim=3, width=8, depth=1, init_concentration=1.0,
                       init_scale=1.0)
    assert sum(isinstance(m, torch.nn.Linear) for m in mlp(4, 8, 3, 2)) == 4


def test_the_smallest_concentration_of_q_w_draws_no_clamped_weight():
    # below about 0.2, float32 Gamma draws underflow the smallest normal number, where torch clamps them
    torch.manual_seed(0)
    draws = dist.Dirichlet(torch.full((500_000, 4), MIN_CONCENTRATION)).rsample()
    assert draws.min() > torch.finfo(torch.float32).tiny
    assert (dist.Dirichlet(torch.full((500_000, 4), 0.01)).rsample() <= torch.finfo(torch.float32).tiny).any()
    encoder = WeightEncoder(7, 4, width=16, depth=1, init_concentration=1.0)
    with torch.no_grad():
        encoder.net[-1].bias.fill_(-50.0)  # as small as softplus allows
    assert torch.allclose(encoder(torch.randn(3, 7)), torch.full((3, 4), MIN_CONCENTRATION), atol=1e-6)


def _conditional_vrm(observe_aspects=True):
    from pyro_vrm.config import ModelConfig
    from pyro_vrm.vrm import VRM
    torch.manual_seed(0)
    vrm = VRM(ModelConfig(latent_dim=3, width=16, depth=1, conditional_prior=True, observe_aspects=observe_aspects),
              hidden_size=6, num_objectives=2)
    with torch.no_grad():  # a prior that depends on the hidden states
        for p in vrm.conditional_prior.parameters():
            p.add_(0.3 * torch.randn_like(p))
    g = torch.Generator().manual_seed(1)
    batch = PairBatch(torch.arange(5), *(torch.randn(5, 6, generator=g) for _ in range(3)))
    return vrm, batch, (torch.randn(5, 2, generator=g), torch.randn(5, 2, generator=g))


def _local_q(vrm, batch, **kwargs):
    trace = poutine.trace(vrm.local_guide).get_trace(batch, **kwargs)
    return {name: site["fn"] for name, site in trace.iter_stochastic_nodes()}


def test_pair_guide_starts_at_the_conditional_prior_and_reads_the_observations():
    vrm, batch, aspects = _conditional_vrm()
    q = _local_q(vrm, batch, aspects=aspects)
    p_w = vrm.conditional_prior.objective_weights(batch.prompt_state)
    p_z = vrm.conditional_prior.semantic_features(batch.prompt_state, batch.rejected_state)
    assert torch.allclose(q[SITES["weights"]].concentration, p_w.concentration)
    assert torch.allclose(q[SITES["rejected"]].base_dist.scale, p_z.base_dist.scale)
    with torch.no_grad():
        for net in (vrm.amortized_guide.weight_net, vrm.amortized_guide.feature_net):
            net[-1].weight.normal_(0, 0.3)
    base = _local_q(vrm, batch, aspects=aspects)
    other_aspects = _local_q(vrm, batch, aspects=(aspects[0] + 1, aspects[1]))
    other_label = _local_q(vrm, batch, aspects=aspects, preferences=torch.zeros(5))
    for q_other in (other_aspects, other_label):
        assert not torch.allclose(base[SITES["chosen"]].base_dist.loc, q_other[SITES["chosen"]].base_dist.loc)
    # a label y = 0 is the swapped pair: each response's view is the other's
    swapped = batch._replace(chosen_state=batch.rejected_state, rejected_state=batch.chosen_state)
    mirror = _local_q(vrm, swapped, aspects=aspects[::-1], preferences=torch.zeros(5))
    assert torch.allclose(mirror[SITES["chosen"]].base_dist.loc, base[SITES["rejected"]].base_dist.loc, atol=1e-6)
    with pytest.raises(ValueError, match="aspect scores"):
        _local_q(vrm, batch)
