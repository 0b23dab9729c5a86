import torch

from pyro_vrm.evaluate import pearson
from pyro_vrm.simulation import SimulationConfig, simulate, type_concentrations


def test_seeded_and_split_by_prompt(small_data):
    again = simulate(SimulationConfig(num_prompts=200, seed=3))
    assert torch.equal(again.train.chosen_state, small_data.train.chosen_state)
    other = simulate(SimulationConfig(num_prompts=200, seed=4))
    assert not torch.equal(other.train.chosen_state, small_data.train.chosen_state)
    train_prompts = set(small_data.train.prompt_id.tolist())
    test_prompts = set(small_data.test.prompt_id.tolist())
    assert not train_prompts & test_prompts
    assert len(train_prompts) + len(test_prompts) == 200
    assert len(small_data.train) + len(small_data.test) == 400


def test_pairs_of_a_prompt_share_its_weights_and_types_shape_them(small_data):
    truth = small_data.truth["train"]
    w, pid = truth["objective_weights"], small_data.train.prompt_id
    first = {}
    for i, p in enumerate(pid.tolist()):
        if p in first:
            assert torch.equal(w[i], w[first[p]])
        first.setdefault(p, i)
    # types 0..K-1 lean on one objective each: that objective dominates their weights on average
    for t in range(4):
        assert w[truth["prompt_type"] == t].mean(0).argmax().item() == t
    assert torch.allclose(type_concentrations(8, 4).sum(-1), torch.full((8,), 13.0))


def test_winner_is_chosen_and_the_oracle_is_near_the_stated_difficulty():
    data = simulate(SimulationConfig(num_prompts=2500))
    assert 0.76 < data.oracle_accuracy("test") < 0.83  # the docstring states about 0.8
    t = data.truth["train"]
    # the stored rewards are the true decoder's: recompute them from the true latents
    reward, _ = data.decoder(t["objective_weights"], t["chosen_features"])
    assert torch.allclose(reward, t["chosen_reward"], atol=1e-5)


def test_aspect_scores_are_noisy_measurements_of_the_true_scores(small_data):
    t, c = small_data.truth["train"], small_data.config
    _, true_scores = small_data.decoder(t["objective_weights"], t["chosen_features"])
    noise = small_data.train.chosen_scores - true_scores
    assert abs(noise.std().item() - c.aspect_noise * c.reward_scale) < 0.1
    assert pearson(small_data.train.chosen_scores, true_scores) > 0.8


def test_hidden_states_carry_the_latents():
    # a linear read-out of the prompt state recovers w far better than chance
    data = simulate(SimulationConfig(num_prompts=600, seed=1))
    x, w = data.train.prompt_state, data.truth["train"]["objective_weights"]
    x1 = torch.cat([x, torch.ones(len(x), 1)], -1)
    coef = torch.linalg.lstsq(x1, w).solution
    assert pearson(x1 @ coef, w) > 0.8


def test_data_from_the_prior_follow_the_models_own_story():
    from pyro_vrm.model import Priors
    from pyro_vrm.simulation import PriorSimulationConfig, simulate_from_prior

    config = PriorSimulationConfig(num_pairs=4000, held_out=1000, seed=1)
    data = simulate_from_prior(Priors(concentration=2.0), config)
    assert (len(data.train), len(data.test)) == (3000, 1000)
    w = torch.cat([data.truth[s]["objective_weights"] for s in ("train", "test")])
    # Dirichlet(2, 2, 2, 2): mean 1/4, variance 2 * 6 / (8^2 * 9) per weight
    assert torch.allclose(w.mean(0), torch.full((4,), 0.25), atol=0.01)
    assert torch.allclose(w.var(0), torch.full((4,), 12 / 576), rtol=0.1)
    # the winner is chosen, and the aspect scores are standardized by construction
    truth = data.truth["train"]
    assert (truth["chosen_reward"] > truth["rejected_reward"]).float().mean() > 0.55
    scores = torch.cat([data.train.chosen_scores, data.train.rejected_scores])
    assert torch.allclose(scores.mean(0), torch.zeros(4), atol=0.05)
    assert torch.allclose(scores.std(0), torch.ones(4), atol=0.05)
    residual = data.train.chosen_scores - data.decoder(truth["objective_weights"], truth["chosen_features"])[1]
    assert abs(float(residual.std()) - config.aspect_noise) < 0.02
