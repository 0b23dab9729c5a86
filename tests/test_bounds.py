import math

import pyro
import pytest
import torch

from pyro_vrm.bounds import BoundNotCovered, data_kl, full_data_elbo, observed_aspects, pac_bayes, pac_bayes_bound
from pyro_vrm.config import ModelConfig, TrainConfig
from pyro_vrm.model import Priors
from pyro_vrm.objective import make_elbo
from pyro_vrm.posterior import kl_terms
from pyro_vrm.train import supervision_setup
from pyro_vrm.vrm import VRM

# The fixed-prior model, whose guide and KL terms these tests check.
FIXED_PRIOR = {"conditional_prior": False, "preference_scale": False}


def make_vrm(small_data, priors=Priors(), **model):
    torch.manual_seed(0)
    vrm = VRM(ModelConfig(**{"latent_dim": 4, "width": 16, "depth": 1, **FIXED_PRIOR, **model}),
              small_data.train.hidden_size, 4, priors)
    vrm.create_global_parameters()
    with torch.no_grad():
        for p in vrm.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return vrm


def test_pac_bayes_bound_by_hand():
    n, kl, delta = 500, 40.0, 0.05
    by_hand = 0.1 + math.sqrt((kl + math.log(20) + math.log(500) + 2) / 999)
    assert pac_bayes_bound(0.1, kl, n, delta) == pytest.approx(by_hand)
    assert pac_bayes_bound(0.1, 0.0, 10**6) < pac_bayes_bound(0.1, 0.0, 100)


@pytest.mark.parametrize("model", [{"observe_aspects": True}, {"observe_aspects": True, "bayesian_decoder": True}])
def test_full_data_elbo_is_pyros_elbo_with_every_trained_term(small_data, model):
    vrm, features = make_vrm(small_data, **model), small_data.train.select(torch.arange(200))
    standardizer, _ = supervision_setup(small_data.train, TrainConfig())
    aspects = observed_aspects(vrm, features, standardizer)
    ours = full_data_elbo(vrm, features, standardizer, num_particles=1000, chunk_size=64)
    # Pyro's own estimate of the same ELBO, on all 200 pairs at once, aspects observed
    batch = features.batch(torch.arange(200))
    pyro.set_rng_seed(0)
    with torch.no_grad():
        pyros = -make_elbo(TrainConfig(num_particles=1000)).loss(
            vrm.model, vrm.guide, batch, num_pairs=200, preferences=torch.ones(200), aspects=aspects) / 200
    assert ours == pytest.approx(pyros, abs=0.1)  # Monte Carlo: both within about 0.03 of the value
    one_chunk = full_data_elbo(vrm, features, standardizer, num_particles=200, chunk_size=200)
    assert one_chunk == pytest.approx(ours, abs=0.1)  # the global KL counted once, whatever the chunks


@torch.no_grad()
def test_the_global_kl_is_counted_once_whatever_the_chunking(small_data):
    vrm, features = make_vrm(small_data, bayesian_decoder=True), small_data.train
    total, exact = data_kl(vrm, features, chunk_size=50)
    again, _ = data_kl(vrm, features, chunk_size=1000)
    kl = kl_terms(vrm, features.batch(torch.arange(len(features))))
    assert exact and total == pytest.approx(again, rel=1e-5)
    assert total == pytest.approx(float(kl.local.sum() + kl.global_kl), rel=1e-5)
    assert float(kl.global_kl) > 0


def test_the_bound_is_refused_where_the_kl_has_no_closed_form(small_data):
    vrm = make_vrm(small_data, Priors(feature_df=4.0))
    with pytest.raises(BoundNotCovered, match="no closed form"):
        pac_bayes(vrm, small_data.train, gibbs_error=0.3)
    with pytest.raises(BoundNotCovered, match="fitted to the same training pairs"):
        pac_bayes(make_vrm(small_data, conditional_prior=True, observe_aspects=False), small_data.train,
                  gibbs_error=0.3)
    covered = pac_bayes(make_vrm(small_data), small_data.train, gibbs_error=0.3)
    assert covered["pac_bayes_bound"] > 0.3
