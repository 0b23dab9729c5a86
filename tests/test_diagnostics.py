import json
from dataclasses import asdict

import arviz as az
import numpy as np
import pytest
import torch
from torch.nn.functional import logsigmoid

from pyro_vrm.config import ModelConfig, TrainConfig
from pyro_vrm.diagnostics import UnsupportedRun, diagnose, nuts_coverage, psis_khat, to_inference_data
from pyro_vrm.networks import MIN_CONCENTRATION, softplus_inverse
from pyro_vrm.model import Priors
from pyro_vrm.runs import RunDir
from pyro_vrm.simulation import SimulationConfig, simulate
from pyro_vrm.train import fit_vrm
from pyro_vrm.vrm import VRM

SIMULATION = SimulationConfig(num_prompts=200, seed=3)
SMALL = ModelConfig(latent_dim=4, width=32, depth=1)  # the default model: conditional priors
FIXED = ModelConfig(latent_dim=4, width=32, depth=1, conditional_prior=False)  # a guide these tests can set
PNGS = ["weight_forest", "predictive_check", "reliability", "sd_vs_accuracy", "elbo_trace",
        "psis_khat", "nuts_vs_svi"]


@pytest.fixture(scope="module")
def diagnosed(tmp_path_factory):
    """A small VRM run folder laid out as `pyro-vrm train --data simulated` writes it, diagnosed once."""
    path = tmp_path_factory.mktemp("run")
    run = RunDir(path)
    run.write_json("config.json", {"command": "train", "data": "simulated", "model": "vrm",
                                   "simulation": asdict(SIMULATION)})
    fit_vrm(simulate(SIMULATION).train, SMALL, TrainConfig(steps=100, batch_size=64, weight_decay=0.0), run=run,
            progress=False)
    results = diagnose(path, num_samples=100, nuts_pairs=30, max_pairs=60, nuts_warmup=150,
                       nuts_draws=100, nuts_chains=2)
    return path, results


def prior_guide_vrm(feature_scale: float = 1.0) -> VRM:
    """A VRM whose guide is q(w) = Dirichlet(1), q(z) = Normal(0, feature_scale) for every pair:
    the prior itself when feature_scale = 1."""
    torch.manual_seed(0)
    vrm = VRM(FIXED, hidden_size=64, num_objectives=4)
    d = FIXED.latent_dim
    with torch.no_grad():
        vrm.decoder.weight.mul_(4.0)  # rewards that vary, so the likelihood is not flat
        weights, features = vrm.amortized_guide.weight_encoder, vrm.amortized_guide.feature_encoder
        weights.net[-1].weight.zero_()
        weights.net[-1].bias.fill_(softplus_inverse(1.0 - MIN_CONCENTRATION))
        features.net[-1].weight.zero_()
        features.net[-1].bias[:d].zero_()
        features.net[-1].bias[d:].fill_(softplus_inverse(feature_scale - features.min_scale))
    return vrm


def test_inference_data_groups_dims_and_log_likelihood(small_data):
    vrm = prior_guide_vrm()
    idata = to_inference_data(vrm, small_data.test.select(torch.arange(12)), num_samples=50,
                              objective_names=["a", "b", "c", "d"])
    assert {"posterior", "posterior_predictive", "observed_data", "log_likelihood", "prior",
            "prior_predictive", "sample_stats", "constant_data"} <= set(idata.groups())
    post = idata.posterior
    assert dict(post["objective_weights"].sizes) == {"chain": 1, "draw": 50, "pair": 12, "objective": 4}
    assert dict(post["chosen_features"].sizes) == {"chain": 1, "draw": 50, "pair": 12, "feature": 4}
    assert list(post["objective"].values) == ["a", "b", "c", "d"]
    assert post["rejected_reward"].dims == ("chain", "draw", "pair")
    assert idata.prior["rejected_features"].dims == ("chain", "draw", "pair", "feature")
    assert set(np.unique(idata.posterior_predictive["preference"])) <= {0, 1}
    assert np.all(idata.observed_data["preference"].values == 1)
    margin = torch.from_numpy((post["chosen_reward"] - post["rejected_reward"]).values)
    assert np.allclose(idata.log_likelihood["preference"].values, logsigmoid(margin).numpy(), atol=1e-5)
    # with q equal to the prior, the importance ratio p(y, latents) / q(latents) is p(y | latents)
    assert np.allclose(idata.sample_stats["log_importance_ratio"], idata.log_likelihood["preference"], atol=1e-4)


def test_psis_khat_is_small_for_the_prior_and_large_for_a_too_narrow_guide(small_data):
    pairs = small_data.test.select(torch.arange(20))
    # q = prior: the ratios are the likelihood, bounded by 1, so the weights have no tail
    khat_prior = psis_khat(to_inference_data(prior_guide_vrm(1.0), pairs, num_samples=400))
    # q(z) with sd 0.3 against a posterior of sd about 1: tail index k = 1 - 0.3^2 per dimension
    khat_narrow = psis_khat(to_inference_data(prior_guide_vrm(0.3), pairs, num_samples=400))
    assert np.all(khat_prior < 0.5)
    assert np.mean(khat_narrow > 0.7) >= 0.9


def test_global_latents_are_fixed_at_the_guide_medians(small_data):
    priors = Priors(concentration_hyperprior=(0.0, 0.5))
    config = ModelConfig(latent_dim=4, width=16, depth=1, bayesian_decoder=True, conditional_prior=False)
    vrm, _ = fit_vrm(small_data.train, config, TrainConfig(steps=5, batch_size=32), priors=priors, progress=False)
    idata = to_inference_data(vrm, small_data.test.select(torch.arange(6)), num_samples=20)
    assert set(idata.posterior.data_vars) == {"objective_weights", "chosen_features", "rejected_features",
                                              "chosen_reward", "rejected_reward"}
    assert np.all(np.isfinite(idata.sample_stats["log_importance_ratio"]))


def test_diagnose_writes_netcdf_pngs_and_json(diagnosed):
    path, results = diagnosed
    assert json.loads((path / "diagnostics.json").read_text()) == results
    assert {"nuts_coverage_w", "psis_khat_share_above_0_7", "nuts_max_rhat", "nuts_min_ess"} <= set(results)
    for name in PNGS:
        assert (path / f"diagnostics_{name}.png").stat().st_size > 1000, name
    idata = az.from_netcdf(path / "diagnostics.nc")
    assert dict(idata.posterior["objective_weights"].sizes) == {"chain": 1, "draw": 100, "pair": 60, "objective": 4}
    assert idata.log_likelihood["preference"].shape == (1, 100, 60)
    nuts = az.from_netcdf(path / "diagnostics_nuts.nc")
    assert dict(nuts.posterior["chosen_features"].sizes) == {"chain": 2, "draw": 100, "pair": 30, "feature": 4}
    # short chains (100 draws each): loose bounds, which unmixed chains still fail
    assert results["nuts_max_rhat"] < 1.2 and results["nuts_min_ess"] > 20


def test_svi_weight_means_fall_inside_the_nuts_intervals(diagnosed):
    path, results = diagnosed
    assert results["nuts_coverage_w"] >= 0.8
    # the check has power: weights piled on one objective fall outside NUTS' intervals
    nuts = az.from_netcdf(path / "diagnostics_nuts.nc")
    wrong = np.tile([0.994, 0.002, 0.002, 0.002], (results["nuts_pairs"], 1))
    assert nuts_coverage(nuts, wrong) < 0.2


def test_diagnose_refuses_runs_on_other_data(tmp_path):
    RunDir(tmp_path).write_json("config.json", {"data": "prefs.jsonl", "model": "vrm"})
    with pytest.raises(UnsupportedRun, match="--data simulated only"):
        diagnose(tmp_path)

