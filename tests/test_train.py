import json

import pyro
import pytest
import torch

import pyro_vrm.loop as loop_module
from pyro_vrm.config import ModelConfig, TrainConfig
from pyro_vrm.evaluate import pearson
from pyro_vrm.model import Priors
from pyro_vrm.runs import RunDir
from pyro_vrm.posterior import reward_posterior
from pyro_vrm.train import (NonFiniteLoss, VRMObjective, fit_vrm, load_vrm, make_elbo, minibatches,
                            supervision_setup)
from pyro_vrm.vrm import VRM

SMALL = ModelConfig(latent_dim=4, width=32, depth=1)


def quick(**kw):
    return TrainConfig(**{"steps": 60, "batch_size": 64, "log_every": 10, **kw})


def test_full_data_loss_is_the_average_of_minibatch_losses(small_data):
    train = small_data.train
    pyro.set_rng_seed(0)
    vrm = VRM(SMALL, train.hidden_size, train.num_aspects)
    _, targets = supervision_setup(train, TrainConfig())
    objective = VRMObjective(make_elbo(TrainConfig(num_particles=200)), 0.1, "kl")
    n = len(train)

    def loss(index):
        return objective(vrm.model, vrm.guide, train.batch(index, targets), num_pairs=n,
                         preferences=torch.ones(len(index))).item()

    with torch.no_grad():
        full = loss(torch.arange(n))
        parts = [loss(index) for index in torch.arange(n).chunk(8)]
        repeats = torch.tensor([loss(torch.arange(n)) for _ in range(5)])
    mc_se = repeats.std().item() * 2 + 1e-4  # Monte Carlo error of one estimate, with margin
    assert sum(parts) / len(parts) == pytest.approx(full, abs=3 * mc_se)


def test_minibatches_visit_every_pair_each_epoch():
    batches = list(minibatches(10, 3, steps=6, seed=0))
    assert all(len(b) == 3 for b in batches)
    assert len(set(torch.cat(batches[:3]).tolist())) == 9  # no repeats inside an epoch


def test_every_parameter_moves_and_the_loss_falls(small_data, tmp_path):
    vrm, _ = fit_vrm(small_data.train, SMALL, quick(steps=100), run=RunDir(tmp_path), progress=False)
    store = pyro.get_param_store()
    fresh = VRM(SMALL, small_data.train.hidden_size, small_data.train.num_aspects)
    pyro.set_rng_seed(0)
    fresh = VRM(SMALL, small_data.train.hidden_size, small_data.train.num_aspects)
    for (name, before), (_, after) in zip(fresh.named_parameters(), vrm.named_parameters()):
        assert not torch.allclose(before, after), f"{name} did not move"
    assert len(list(store.keys())) == len(list(vrm.parameters()))
    metrics = RunDir(tmp_path).read_metrics()
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    assert {"loss", "elbo", "expected_log_lik", "kl_w", "kl_z", "sup_loss", "accuracy",
            "margin", "mean_reward"} <= set(metrics[0])


def test_same_seed_same_fit_other_seed_other_fit(small_data):
    first, _ = fit_vrm(small_data.train, SMALL, quick(), progress=False)
    a = [p.detach().clone() for p in first.parameters()]
    second, _ = fit_vrm(small_data.train, SMALL, quick(), progress=False)
    assert all(torch.equal(x, y) for x, y in zip(a, second.parameters()))
    third, _ = fit_vrm(small_data.train, SMALL, quick(seed=1), progress=False)
    assert not all(torch.equal(x, y) for x, y in zip(a, third.parameters()))


def test_supervision_pulls_the_weights_towards_the_annotations(small_data):
    train = small_data.train
    _, targets = supervision_setup(train, TrainConfig())

    def target_corr(lambda_sup):
        vrm, _ = fit_vrm(train, SMALL, quick(steps=150, lambda_sup=lambda_sup), progress=False)
        with torch.no_grad():
            mean = vrm.amortized_guide.weight_posterior(train.prompt_state).mean
        return pearson(mean, targets)

    assert target_corr(1.0) > target_corr(0.0) + 0.2


@pytest.mark.parametrize("overrides", [{"elbo": "trace", "num_particles": 3}, {"sup_loss": "rank"},
                                       {"sup_loss": "mae"}])
def test_variants_train(small_data, tmp_path, overrides):
    fit_vrm(small_data.train, SMALL, quick(**overrides), run=RunDir(tmp_path), progress=False)
    metrics = RunDir(tmp_path).read_metrics()
    assert metrics[-1]["loss"] < metrics[0]["loss"]


def test_non_default_priors_and_model_flags_train_end_to_end(small_data, tmp_path):
    priors = Priors(concentration=0.3, feature_df=5.0, concentration_hyperprior=(0.0, 1.0))
    config = ModelConfig(latent_dim=4, width=32, depth=1, bayesian_decoder=True, observe_aspects=True)
    vrm, _ = fit_vrm(small_data.train, config, quick(), priors=priors, run=RunDir(tmp_path), progress=False)
    assert vrm.priors == priors
    store = pyro.get_param_store().get_state()
    pyro.clear_param_store()  # else the fresh AutoNormal would read the fitted values from the store
    fresh = VRM(config, small_data.train.hidden_size, small_data.train.num_aspects, priors)
    fresh.create_global_parameters()
    pyro.get_param_store().set_state(store)
    before, after = fresh.guide.global_guide.state_dict(), vrm.guide.global_guide.state_dict()
    assert before.keys() == after.keys() and len(before) == 6  # loc and scale of A, b and log alpha0
    assert all(not torch.equal(before[k], after[k]) for k in before), "a global latent's guide did not train"
    saved = json.loads((tmp_path / "checkpoint" / "config.json").read_text())
    assert saved["priors_repr"] == repr(priors) and saved["model"]["bayesian_decoder"] is True
    assert "log_concentration" in str(sorted(pyro.get_param_store().keys()))
    assert load_vrm(RunDir(tmp_path))[0].priors == priors


def test_checkpoint_reloads_to_the_same_predictions(small_data, tmp_path):
    vrm, standardizer = fit_vrm(small_data.train, SMALL, quick(), run=RunDir(tmp_path), progress=False)
    test = small_data.test
    before = reward_posterior(vrm, test.prompt_state, test.chosen_state)
    pyro.set_rng_seed(123)  # a different initialisation, overwritten by the checkpoint
    loaded, loaded_standardizer = load_vrm(RunDir(tmp_path))
    after = reward_posterior(loaded, test.prompt_state, test.chosen_state)
    assert all(torch.allclose(a, b) for a, b in zip(before, after))
    assert torch.equal(loaded_standardizer.mean, standardizer.mean)
    assert RunDir(tmp_path).checkpoint_config()["train"]["steps"] == 60
    assert len(pyro.get_param_store()) == 0  # no stale copies left to shadow the module


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(small_data, tmp_path, monkeypatch):
    clean = minibatches

    def poisoned(num_pairs, batch_size, steps, seed):
        for step, index in enumerate(clean(num_pairs - 1, batch_size, steps, seed), 1):
            yield index if step < 7 else torch.tensor([-1])  # step 7 reads the poisoned last row

    train = small_data.train.select(torch.arange(len(small_data.train)))
    train.prompt_state[-1] = float("nan")
    monkeypatch.setattr(loop_module, "minibatches", poisoned)
    with pytest.raises(NonFiniteLoss, match=r"at step 7; the last good checkpoint \(step 5\)"):
        fit_vrm(train, SMALL, quick(checkpoint_every=5), run=RunDir(tmp_path), progress=False)
    assert (tmp_path / "checkpoint" / "params.pt").exists()
    assert not list(tmp_path.glob("checkpoint/.*.tmp"))
