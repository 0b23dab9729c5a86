import torch
from torch.distributions import Normal
from torch.nn.functional import logsigmoid

from pyro_vrm.features import PairBatch
from pyro_vrm.model import Priors
from pyro_vrm.twin import DeterministicTwin, TwinLoss


def make():
    torch.manual_seed(0)
    twin = DeterministicTwin(hidden_size=5, num_objectives=3, latent_dim=2, width=8, depth=1, init_concentration=2.0)
    g = torch.Generator().manual_seed(1)
    batch = PairBatch(torch.tensor([4, 0, 2]), *(torch.randn(3, 5, generator=g) for _ in range(3)))
    return twin, batch


def test_the_reward_is_the_weights_dot_the_decoded_scores():
    twin, batch = make()
    w = twin.weights(batch.prompt_state)
    assert torch.allclose(w.sum(-1), torch.ones(3)) and torch.all(w > 0)
    mu = twin.feature_net(torch.cat([batch.prompt_state, batch.chosen_state], -1))
    scores = mu @ twin.decoder.weight.T + twin.decoder.bias
    assert torch.allclose(twin(batch.prompt_state, batch.chosen_state), (w * scores).sum(-1))


def test_the_loss_is_the_negative_log_likelihood_of_preferences_and_aspects():
    twin, batch = make()
    aspects = (torch.randn(6, 3), torch.randn(6, 3))
    loss = TwinLoss(twin, Priors(aspect_noise=0.7), aspects=aspects)(batch, num_pairs=6)
    r_c, r_r = twin(batch.prompt_state, batch.chosen_state), twin(batch.prompt_state, batch.rejected_state)
    s_c, s_r = twin.scores(batch.prompt_state, batch.chosen_state), twin.scores(batch.prompt_state, batch.rejected_state)
    noise = Normal(0.0, 0.7)
    by_hand = (-logsigmoid(r_c - r_r) - noise.log_prob(aspects[0][batch.index] - s_c).sum(-1)
               - noise.log_prob(aspects[1][batch.index] - s_r).sum(-1)).mean()
    assert torch.allclose(loss, by_hand)
    plain = TwinLoss(twin, Priors(aspect_noise=0.7))(batch, num_pairs=6)
    assert torch.allclose(plain, -logsigmoid(r_c - r_r).mean())


def test_a_preference_scale_scales_the_rewards_and_the_preference_term_but_not_the_aspects(small_data, tmp_path):
    from pyro_vrm.config import ModelConfig, TrainConfig
    from pyro_vrm.fits import load_fit
    from pyro_vrm.runs import RunDir
    from pyro_vrm.train import fit_twin

    twin, batch = make()
    torch.manual_seed(0)
    scaled = DeterministicTwin(hidden_size=5, num_objectives=3, latent_dim=2, width=8, depth=1, init_concentration=2.0,
                               learn_preference_scale=True)
    with torch.no_grad():
        scaled.decoder.log_preference_scale.fill_(torch.tensor(3.0).log())
    states = batch.prompt_state, batch.chosen_state
    assert torch.allclose(scaled(*states), 3.0 * twin(*states))
    assert torch.allclose(scaled.scores(*states), twin.scores(*states))
    # fitted with observed aspects, as VRM's default: tau is a parameter of the fit, saved and loaded
    config = ModelConfig(latent_dim=4, width=16, depth=1, preference_scale=True)
    fitted, _ = fit_twin(small_data.train, config, TrainConfig(steps=40, batch_size=64, log_every=20),
                         run=RunDir(tmp_path), progress=False)
    assert fitted.decoder.preference_scale != 1.0
    loaded = load_fit(RunDir(tmp_path)).model
    assert torch.equal(loaded.decoder.log_preference_scale, fitted.decoder.log_preference_scale)
