import json
import math
from dataclasses import replace

import pyro
import pytest
import torch

import pyro_vrm.loop as loop_module
from pyro_vrm.baseline import fit_temperature
from pyro_vrm.config import ConfigError, ModelConfig, TrainConfig, preset
from pyro_vrm.evaluate import pearson, summarize
from pyro_vrm.loop import NonFiniteLoss, minibatches
from pyro_vrm.model import Priors
from pyro_vrm.objective import VRMObjective, make_elbo
from pyro_vrm.posterior import pair_posterior, reward_posterior
from pyro_vrm.runs import RunDir
from pyro_vrm.simulation import SimulationConfig, simulate
from pyro_vrm.fits import load_fit
from pyro_vrm.features import PreferenceFeatures, validation_folds, validation_split
from pyro_vrm.train import (KL_WEIGHT_GRID, WEIGHT_DECAY_GRID, fit_reward_model, fit_temperature_scaled_reward_model,
                            fit_tuned_reward_model, fit_twin, fit_vrm, select_kl_weight, supervision_setup,
                            validation_log_likelihood)
from pyro_vrm.vrm import VRM, load_vrm

# Most tests here check the fitting machinery on the fixed-prior model of the tempered preset,
# the cheapest to fit; those of the default (the recommended preset) say so.
SMALL, TEMPERED = preset("tempered", ModelConfig(latent_dim=4, width=32, depth=1))


def quick(**kw):
    return replace(TEMPERED, **{"steps": 60, "batch_size": 64, "log_every": 10, **kw})


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
    pyro.set_rng_seed(0)  # the initialisation fit_vrm started from
    fresh = VRM(vrm.config, small_data.train.hidden_size, small_data.train.num_aspects)
    for (name, before), (_, after) in zip(fresh.named_parameters(), vrm.named_parameters()):
        assert not torch.allclose(before, after), f"{name} did not move"
    assert len(pyro.get_param_store()) == 0  # every parameter lives in the module
    metrics = RunDir(tmp_path).read_metrics()
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    assert {"loss", "elbo", "expected_log_lik", "kl_w", "kl_z", "kl_global", "kl_weight", "sup_loss", "accuracy",
            "margin", "mean_reward"} <= set(metrics[0])


def test_same_seed_same_fit_other_seed_other_fit(small_data):
    first, _ = fit_vrm(small_data.train, SMALL, quick(), progress=False)
    a = [p.detach().clone() for p in first.parameters()]
    second, _ = fit_vrm(small_data.train, SMALL, quick(), progress=False)
    assert all(torch.equal(x, y) for x, y in zip(a, second.parameters()))
    third, _ = fit_vrm(small_data.train, SMALL, quick(seed=1), progress=False)
    assert not all(torch.equal(x, y) for x, y in zip(a, third.parameters()))


def test_a_jit_fit_is_the_same_fit(small_data, tmp_path):
    eager, _ = fit_vrm(small_data.train, SMALL, quick(), progress=False)
    run = RunDir(tmp_path / "jit")
    compiled, _ = fit_vrm(small_data.train, SMALL, quick(jit=True), run=run, progress=False)
    for (name, x), y in zip(eager.named_parameters(), compiled.parameters()):
        assert torch.allclose(x, y, rtol=1e-4, atol=1e-5), name  # 60 steps from the same draws
    assert [r["step"] for r in run.read_metrics()] == list(range(10, 61, 10))
    assert run.checkpoint_config()["train"]["jit"] is True


def test_supervision_pulls_the_weights_towards_the_annotations(small_data):
    train = small_data.train
    _, targets = supervision_setup(train, TrainConfig())

    def target_corr(lambda_sup):  # the paper's objective, whose supervision term this is
        model_config, train_config = preset("paper", SMALL, quick(steps=150))
        vrm, _ = fit_vrm(train, model_config, replace(train_config, lambda_sup=lambda_sup), progress=False)
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
    config = replace(SMALL, bayesian_decoder=True, observe_aspects=True)
    vrm, _ = fit_vrm(small_data.train, config, quick(), priors=priors, run=RunDir(tmp_path), progress=False)
    assert vrm.priors == priors
    pyro.set_rng_seed(0)
    fresh = VRM(config, small_data.train.hidden_size, small_data.train.num_aspects, priors)
    fresh.create_global_parameters()
    before, after = fresh.global_guide.state_dict(), vrm.global_guide.state_dict()
    assert before.keys() == after.keys() and len(before) == 6  # loc and scale of A, b and log alpha0
    assert all(not torch.equal(before[k], after[k]) for k in before), "a global latent's guide did not train"
    saved = json.loads((tmp_path / "checkpoint" / "config.json").read_text())
    assert saved["priors_repr"] == repr(priors) and saved["model"]["bayesian_decoder"] is True
    loaded = load_vrm(RunDir(tmp_path))[0]
    assert loaded.priors == priors
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), vrm.state_dict().values()))


def test_two_fits_in_one_process_keep_their_own_posteriors(small_data):
    config = replace(SMALL, bayesian_decoder=True)
    batch = small_data.test.batch(torch.arange(50))._replace(index=torch.arange(50))
    first, _ = fit_vrm(small_data.train, config, quick(), progress=False)
    state = {k: v.clone() for k, v in first.state_dict().items()}
    pyro.set_rng_seed(1)
    before = pair_posterior(first, batch, num_samples=2000)
    second, _ = fit_vrm(small_data.train, config, quick(seed=1, lr=0.01), progress=False)
    assert all(torch.equal(v, first.state_dict()[k]) for k, v in state.items()), "the second fit changed the first"
    assert not torch.equal(first.global_guide.locs.decoder_weight, second.global_guide.locs.decoder_weight)
    pyro.set_rng_seed(1)
    after = pair_posterior(first, batch, num_samples=2000)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_observed_aspects_pull_the_decoded_features_towards_the_annotations(small_data):
    train = small_data.train
    standardizer, _ = supervision_setup(train, TrainConfig())
    observed = standardizer(train.chosen_scores)

    def decoded(observe):
        vrm, _ = fit_vrm(train, replace(SMALL, observe_aspects=observe),
                         quick(steps=150), progress=False)
        with torch.no_grad():
            loc = vrm.amortized_guide.feature_posterior(train.prompt_state, train.chosen_state).base_dist.loc
            return loc @ vrm.decoder.weight.T + vrm.decoder.bias  # s(E_q[z]) (N, K)

    # a ~ N(s(z), sigma_a): s(E_q[z]) moves to the annotations, output k to aspect k
    with_aspects, without = decoded(True), decoded(False)
    corr = torch.corrcoef(torch.cat([with_aspects, observed], 1).T)[:4, 4:]
    assert torch.equal(corr.abs().argmax(1), torch.arange(4)) and corr.diag().min() > 0.6
    assert ((with_aspects - observed) ** 2).mean() < 0.6 < 0.8 < ((without - observed) ** 2).mean()


def test_checkpoint_round_trip_gives_the_same_parameters_and_rewards(small_data, tmp_path):
    vrm, standardizer = fit_vrm(small_data.train, SMALL, quick(), run=RunDir(tmp_path), progress=False)
    test = small_data.test
    before = reward_posterior(vrm, test.prompt_state, test.chosen_state)
    pyro.set_rng_seed(123)  # a different initialisation, overwritten by the checkpoint
    loaded, loaded_standardizer = load_vrm(RunDir(tmp_path))
    assert vrm.state_dict().keys() == loaded.state_dict().keys()
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in vrm.state_dict().items())
    after = reward_posterior(loaded, test.prompt_state, test.chosen_state)
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert torch.equal(loaded_standardizer.mean, standardizer.mean)
    assert "param_store" not in RunDir(tmp_path).checkpoint_state()


def test_the_paper_preset_fits_the_papers_objective(small_data):
    model_config, train_config = preset("paper", SMALL, quick())
    vrm, _ = fit_vrm(small_data.train, model_config, train_config, progress=False)
    assert vrm.config.observe_aspects is False and train_config.kl_weight == 1.0 and train_config.lambda_sup == 0.1
    tempered, _ = fit_vrm(small_data.train, SMALL, quick(), progress=False)
    assert tempered.config.observe_aspects is True  # the data carry aspect scores


def test_the_twin_fits_the_same_structure_by_maximum_likelihood(small_data, tmp_path):
    twin, standardizer = fit_twin(small_data.train, SMALL, quick(steps=300), run=RunDir(tmp_path), progress=False)
    test = small_data.test
    with torch.no_grad():
        r_c, r_r = twin(test.prompt_state, test.chosen_state), twin(test.prompt_state, test.rejected_state)
        w = twin.weights(test.prompt_state)
    assert float((r_c > r_r).float().mean()) > 0.65
    assert pearson(w, small_data.truth["test"]["objective_weights"]) > 0.3  # the aspects identify w
    metrics = RunDir(tmp_path).read_metrics()
    assert metrics[-1]["aspect_nll"] < metrics[0]["aspect_nll"] and standardizer is not None
    assert RunDir(tmp_path).checkpoint_config()["kind"] == "twin"


def test_the_tuned_rm_refits_the_decay_and_steps_that_validation_prefers(small_data):
    grid = (0.0, 1.0)
    config = quick(steps=80, validate_every=20)  # scored at steps 20, 40, 60, 80, whatever log_every is
    head, table = fit_tuned_reward_model(small_data.train, SMALL, config, grid=grid)
    assert [row["weight_decay"] for row in table] == list(grid)
    assert all(row["steps"] in (20, 40, 60, 80) for row in table)
    best = max(table, key=lambda row: (row["validation_log_lik"], row["validation_accuracy"]))
    refit = fit_reward_model(small_data.train, SMALL, replace(
        config, steps=best["steps"], weight_decay=best["weight_decay"],
        lr_decay=config.lr_decay ** (best["steps"] / 80)))
    assert all(torch.equal(a, b) for a, b in zip(head.parameters(), refit.parameters()))
    # a decay of 1 shrinks every weight towards 0: the rewards flatten and validation sees it
    assert table[1]["validation_log_lik"] < table[0]["validation_log_lik"]


def test_k_validation_folds_hold_out_every_prompt_once_and_average_their_scores(small_data):
    train = small_data.train
    folds = validation_folds(train, 3, 0.2, seed=0)
    held_prompts = [held.prompt_id.unique() for _, held in folds]
    assert sorted(torch.cat(held_prompts).tolist()) == train.prompt_id.unique().tolist()  # each prompt once
    assert max(map(len, held_prompts)) - min(map(len, held_prompts)) <= 1
    assert all(len(part) + len(held) == len(train) for part, held in folds)
    one = validation_folds(train, 1, 0.2, seed=0)[0]
    assert all(torch.equal(a.prompt_id, b.prompt_id) for a, b in zip(one, validation_split(train, 0.2, seed=0)))
    with pytest.raises(ConfigError, match="--validation-folds 1000 exceeds the"):
        validation_folds(train, 1000, 0.2, seed=0)
    # a row's score is the mean over the folds of each fold's fit scored at that step
    config = quick(steps=60, validate_every=20, validation_folds=2)
    _, table = fit_tuned_reward_model(train, SMALL, config, grid=(0.0,))
    row = table[0]
    scores = [validation_log_likelihood(fit_reward_model(part, SMALL, replace(
        config, steps=row["steps"], weight_decay=0.0, lr_decay=config.lr_decay ** (row["steps"] / 60)),
        progress=False), held)[0] for part, held in validation_folds(train, 2, 0.2, seed=0)]
    assert row["validation_log_lik"] == pytest.approx(sum(scores) / 2, abs=1e-6)
    # the RM's temperature is fitted to the margins of every fold's held-out pairs, pooled
    few, config = train.select(torch.arange(150)), quick(steps=300, lr=1e-2, validation_folds=3)
    head, selection = fit_temperature_scaled_reward_model(few, SMALL, config, progress=False)
    margins = []
    for part, held in validation_folds(few, 3, 0.2, seed=0):
        fold = fit_reward_model(part, SMALL, config, progress=False)
        with torch.no_grad():
            margins.append(fold(held.prompt_state, held.chosen_state) - fold(held.prompt_state, held.rejected_state))
    assert head.temperature == selection["temperature"] == pytest.approx(fit_temperature(torch.cat(margins)), rel=1e-4)
    assert selection["temperature"] != pytest.approx(fit_temperature(margins[-1]), rel=1e-3)  # not one fold's


def test_two_auto_settings_are_chosen_one_after_the_other_not_one_inside_the_other(small_data, monkeypatch):
    import pyro_vrm.train as train_module
    fits, fit = [], train_module.fit_vrm

    def counted(train, model_config, train_config, *args, **kwargs):
        fits.append((train_config.kl_weight, train_config.weight_decay))
        return fit(train, model_config, train_config, *args, **kwargs)

    monkeypatch.setattr(train_module, "fit_vrm", counted)
    conditional = replace(SMALL, conditional_prior=True)
    vrm, _ = counted(small_data.train, conditional, quick(steps=20, kl_weight="auto", weight_decay="auto"),
                     progress=False)
    # beta chosen with no decay, then the decay at the chosen beta, then the fit: 1 + 5 + 5 fits
    chosen_beta = max(vrm.selections["kl_weight_selection"], key=lambda r: (r["validation_log_lik"], r["kl_weight"]))
    assert fits[1:6] == [(beta, 0.0) for beta in KL_WEIGHT_GRID]
    assert fits[6:] == [(chosen_beta["kl_weight"], decay) for decay in WEIGHT_DECAY_GRID]
    assert len(fits) == 11 and set(vrm.selections) == {"kl_weight_selection", "weight_decay_selection"}


def test_validation_patience_ends_a_validation_fit_that_stopped_improving(small_data):
    from pyro_vrm.train import _scored_at_logged_steps
    script = iter([0.1, 0.3, 0.2, 0.25, 0.3, 0.9, 1.0])  # validation log-likelihoods, best at the 2nd
    config = quick(steps=70, log_every=10, validation_patience=3)
    scored = _scored_at_logged_steps(
        lambda monitor: fit_reward_model(small_data.train, SMALL, config, progress=False, monitor=monitor),
        lambda head: (next(script), 0.5), config)
    # three scores after the best without beating it (a tie does not), then no more steps
    assert [(s[0], step) for s, step in scored] == [(0.1, 10), (0.3, 20), (0.2, 30), (0.25, 40), (0.3, 50)]
    unlimited = replace(config, validation_patience=0)
    script = iter([0.1, 0.3, 0.2, 0.25, 0.3, 0.9, 1.0])
    assert len(_scored_at_logged_steps(
        lambda monitor: fit_reward_model(small_data.train, SMALL, unlimited, progress=False, monitor=monitor),
        lambda head: (next(script), 0.5), unlimited)) == 7


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


def test_the_temperature_scaled_rm_keeps_the_ranking_and_calibrates_an_overfit_head(small_data, tmp_path):
    config = quick(steps=300, lr=1e-2)  # long enough on few pairs to be overconfident
    train = small_data.train.select(torch.arange(150))
    head, selection = fit_temperature_scaled_reward_model(train, SMALL, config, run=RunDir(tmp_path), progress=False)
    plain = fit_reward_model(train, SMALL, config, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(head.parameters(), plain.parameters()))  # the same fit
    assert head.temperature == selection["temperature"] > 1  # overconfident: T spreads P(chosen wins) out
    assert selection["validation_log_lik_scaled"] >= selection["validation_log_lik"]
    test = small_data.test
    states = test.prompt_state, test.chosen_state, test.rejected_state
    with torch.no_grad():
        margin_plain = plain(states[0], states[1]) - plain(states[0], states[2])
        margin = head(states[0], states[1]) - head(states[0], states[2])
    assert torch.allclose(margin, margin_plain / head.temperature)
    log_loss = lambda m: float(-torch.nn.functional.logsigmoid(m).mean())  # noqa: E731
    assert log_loss(margin) < log_loss(margin_plain)
    saved = load_fit(RunDir(tmp_path))
    assert RunDir(tmp_path).checkpoint_config()["temperature"] == head.temperature
    with torch.no_grad():
        assert torch.allclose(saved.model(states[0], states[1]), head(states[0], states[1]))


def test_kl_weight_auto_refits_the_beta_that_validation_prefers_and_records_the_table(small_data, tmp_path):
    # preferences that carry no signal: a small beta fits the noise, the held-out pairs punish it
    train = small_data.train
    g = torch.Generator().manual_seed(0)
    swap = (torch.rand(len(train), generator=g) < 0.5).unsqueeze(-1)
    noise = PreferenceFeatures(train.prompt_state, torch.where(swap, train.rejected_state, train.chosen_state),
                               torch.where(swap, train.chosen_state, train.rejected_state), train.prompt_id)
    config = quick(steps=100, lr=1e-2)
    table = select_kl_weight(noise, SMALL, config, grid=(0.001, 1.0))
    assert [row["kl_weight"] for row in table] == [0.001, 1.0]
    assert table[1]["validation_log_lik"] > table[0]["validation_log_lik"]
    assert table[0]["validation_log_lik"] < math.log(0.5) < table[1]["validation_log_lik"] + 0.01
    vrm, _ = fit_vrm(noise, SMALL, replace(config, kl_weight="auto"), run=RunDir(tmp_path), progress=False)
    saved = RunDir(tmp_path).checkpoint_config()
    chosen = max(saved["kl_weight_selection"], key=lambda row: row["validation_log_lik"])["kl_weight"]
    assert saved["train"]["kl_weight"] == chosen and len(saved["kl_weight_selection"]) == len(KL_WEIGHT_GRID)
    assert saved["train"]["steps"] == max(saved["kl_weight_selection"], key=lambda row: row["validation_log_lik"])["steps"]
    direct, _ = fit_vrm(noise, SMALL, TrainConfig(**saved["train"]), progress=False)
    assert all(torch.equal(a, b) for a, b in zip(vrm.parameters(), direct.parameters()))


def test_weight_decay_auto_chooses_on_validation_and_decays_only_a_conditional_priors_networks(small_data, tmp_path):
    from pyro_vrm.loop import _parameter_groups
    from pyro_vrm.objective import VRMLoss
    from pyro_vrm.train import select_on_validation
    conditional = replace(SMALL, conditional_prior=True)
    config = quick(kl_weight=1.0)
    table = select_on_validation(small_data.train, conditional, config, Priors(), "weight_decay", (0.0, 0.1))
    assert [row["weight_decay"] for row in table] == [0.0, 0.1]
    assert all(math.log(0.05) < row["validation_log_lik"] < 0 for row in table)
    vrm, _ = fit_vrm(small_data.train, conditional, replace(config, weight_decay="auto"), run=RunDir(tmp_path),
                     progress=False)
    saved = RunDir(tmp_path).checkpoint_config()
    chosen = max(saved["weight_decay_selection"], key=lambda row: (row["validation_log_lik"], row["weight_decay"]))
    assert saved["train"]["weight_decay"] == chosen["weight_decay"]
    assert len(vrm.selections["weight_decay_selection"]) == len(WEIGHT_DECAY_GRID)
    groups = _parameter_groups(VRMLoss(vrm, VRMObjective(make_elbo(config), 0.0, "kl")), 0.1)
    decayed = next(group["params"] for group in groups if group["weight_decay"] == 0.1)
    assert {id(p) for p in decayed} == {id(p) for p in vrm.conditional_prior.parameters()}
    fixed = VRM(SMALL, small_data.train.hidden_size, 4)
    assert [len(g["params"]) for g in _parameter_groups(fixed, 0.1)] == [len(list(fixed.parameters()))]
    # the RM has no prior networks to decay: it reads auto as 0 (the tuned RM chooses its own)
    rm_auto = fit_reward_model(small_data.train, SMALL, replace(config, weight_decay="auto"), progress=False)
    rm_none = fit_reward_model(small_data.train, SMALL, replace(config, weight_decay=0.0), progress=False)
    assert all(torch.equal(a, b) for a, b in zip(rm_auto.parameters(), rm_none.parameters()))


def test_the_default_fit_is_the_recommended_preset(small_data, tmp_path):
    config = TrainConfig(steps=30, batch_size=64, log_every=10, validate_every=10)
    vrm, _ = fit_vrm(small_data.train, ModelConfig(latent_dim=4, width=16, depth=1), config, run=RunDir(tmp_path),
                     progress=False)
    saved = RunDir(tmp_path).checkpoint_config()
    assert vrm.conditional_prior is not None and saved["train"]["kl_weight"] == 1.0
    assert [row["weight_decay"] for row in saved["weight_decay_selection"]] == list(WEIGHT_DECAY_GRID)
    assert saved["train"]["weight_decay"] in WEIGHT_DECAY_GRID
    assert hasattr(vrm.decoder, "log_preference_scale")  # the data carry aspect scores


def test_the_preference_scale_carries_how_sharp_the_preferences_are_beyond_the_aspects():
    # The simulator's standardized aspects look alike at any reward scale; only the preferences
    # sharpen with it, and tau is what can follow them.
    conditional = replace(SMALL, conditional_prior=True, preference_scale=True)
    tau = {}
    for reward_scale in (0.5, 4.0):
        data = simulate(SimulationConfig(num_prompts=200, seed=3, reward_scale=reward_scale))
        vrm, standardizer = fit_vrm(data.train, conditional, quick(steps=300, kl_weight=1.0, lr=1e-2), progress=False)
        tau[reward_scale] = vrm.decoder.preference_scale.item()
    assert tau[4.0] > 1.5 * tau[0.5], tau
    assert summarize(vrm, data.train, data.test, standardizer)["preference_scale"] == tau[4.0]  # the run's summary
