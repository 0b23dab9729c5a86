"""pyro_vrm/last_layer.py: the NUTS posterior of a reward head's last layer on a linear-logistic
data set whose true weights are known.

A head of depth 0 is one nn.Linear on [h_x, h_xy], so its frozen features phi are the states
themselves and the last layer is a Bayesian logistic regression of preferences on response states.
The prompts' states are all zero (a prompt's shift of the reward is not identified by its pairs,
and would add its prior sd to every reward). The responses vary in their first two coordinates
only: the third is a direction the training pairs never move in, which only the prior constrains.
"""

import pyro
import pytest
import torch

from pyro_vrm.baseline import RewardHead
from pyro_vrm.features import PreferenceFeatures
from pyro_vrm.last_layer import BayesianLastLayer, laplace_fit

H = 3
TRUE_W = torch.tensor([2.0, -1.0, 0.0])   # on the response state; the prompt's cancels in a margin


def responses(n: int, g: torch.Generator) -> torch.Tensor:
    """(n, H) response states that vary in the first two coordinates only."""
    return torch.cat([torch.randn(n, 2, generator=g), torch.zeros(n, 1)], -1)


def pairs(n: int, seed: int) -> PreferenceFeatures:
    """n pairs whose winner is drawn by Bradley-Terry with reward TRUE_W . h_xy."""
    g = torch.Generator().manual_seed(seed)
    a, b = responses(n, g), responses(n, g)
    a_wins = torch.rand(n, generator=g) < torch.sigmoid((a - b) @ TRUE_W)
    chosen, rejected = torch.where(a_wins[:, None], a, b), torch.where(a_wins[:, None], b, a)
    return PreferenceFeatures(torch.zeros(n, H), chosen, rejected)


def linear_head() -> RewardHead:
    torch.manual_seed(0)
    return RewardHead(H, width=8, depth=0)


@pytest.fixture(scope="module")
def fitted():
    """A last layer sampled by two chains on 400 pairs, tau chosen on 200 others."""
    torch.set_num_threads(1)  # NUTS takes many tiny steps: a second thread only waits on a shared machine
    layer = BayesianLastLayer(linear_head(), pairs(400, seed=0), pairs(200, seed=1))
    return layer, layer.fit(num_samples=200, warmup=150, seed=0, chains=2)


def test_the_laplace_fit_is_the_posterior_mode_and_its_curvature():
    table = pairs(300, seed=2)
    d = table.chosen_state - table.rejected_state + 0.1 * torch.randn(300, H)   # every direction seen
    w, covariance = laplace_fit(d, prior_scale=0.7)

    def log_posterior(v):
        return torch.nn.functional.logsigmoid(d.double() @ v).sum() - v.dot(v) / (2 * 0.7**2)

    v = w.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(log_posterior(v), v)
    assert grad.abs().max() < 1e-6
    hessian = torch.autograd.functional.hessian(log_posterior, w)
    assert torch.allclose(covariance, torch.linalg.inv(-hessian), rtol=1e-6, atol=1e-9)


def test_the_chains_mix_and_the_posterior_recovers_the_true_weights(fitted):
    layer, report = fitted
    assert report["r_hat_max"] < 1.05 and report["n_eff_min"] > 50
    assert sum(report["divergences"]) == 0 and report["chains"] == 2 and len(layer.draws) == 400
    scores = report["validation_log_lik"]                      # tau is the best on validation pairs
    assert float(max(scores, key=scores.get)) == report["prior_scale"]
    response_w = layer.draws[:, H:H + 2].mean(0).float()        # phi = [h_x, h_xy]: the response's first two
    assert torch.nn.functional.cosine_similarity(response_w, TRUE_W[:2], dim=0) > 0.98


def test_the_reward_sd_is_larger_off_the_training_features(fitted):
    layer, _ = fitted
    train = pairs(400, seed=0)
    _, sd_train = layer.mean_sd(train.prompt_state, train.chosen_state)
    far = train.chosen_state + torch.tensor([0.0, 0.0, 3.0])    # moved along the unseen direction
    _, sd_far = layer.mean_sd(train.prompt_state, far)
    assert sd_train.shape == sd_far.shape == (400,)
    assert sd_far.min() > 3 * sd_train.max()
    from pyro_vrm.ensemble import reward_mean_sd  # what best-of-n, PPO and the reward model read
    assert torch.equal(reward_mean_sd(layer, train.prompt_state, far)[1], sd_far)


def test_the_posterior_predictive_is_as_accurate_as_the_true_weights_on_fresh_pairs(fitted):
    layer, _ = fitted
    test = pairs(2000, seed=3)
    prob = layer.prob_chosen(test.prompt_state, test.chosen_state, test.rejected_state)
    oracle = ((test.chosen_state - test.rejected_state) @ TRUE_W > 0).float().mean()
    assert prob.shape == (2000,) and ((prob > 0) & (prob < 1)).all()
    assert (prob > 0.5).float().mean() > oracle - 0.03
    mean, _ = layer.mean_sd(test.prompt_state, test.chosen_state)
    assert torch.allclose(layer(test.prompt_state, test.chosen_state), mean)


def test_the_posterior_sd_shrinks_as_pairs_grow():
    sds = []
    for n in (100, 1600):
        layer = BayesianLastLayer(linear_head(), pairs(n, seed=4), pairs(50, seed=5), prior_scales=(3.0,))
        layer.fit(num_samples=200, warmup=100, seed=0, chains=1)
        sds.append(layer.draws[:, H:H + 2].std(0))
    assert (sds[1] < sds[0] / 2).all()   # 16 times the pairs: about a quarter of the sd


def test_the_fit_uses_no_global_parameters_and_leaves_the_head_alone():
    head = linear_head()
    before = {k: v.clone() for k, v in head.state_dict().items()}
    layer = BayesianLastLayer(head, pairs(50, seed=6), pairs(20, seed=7), prior_scales=(1.0,))
    with pytest.raises(RuntimeError, match="call fit"):
        layer.mean_sd(torch.zeros(2, H), torch.zeros(2, H))
    layer.fit(num_samples=20, warmup=20, chains=1)
    assert len(pyro.get_param_store()) == 0
    assert all(torch.equal(before[k], v) for k, v in head.state_dict().items())


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="prior_scales"):
        BayesianLastLayer(linear_head(), pairs(10, seed=0), pairs(10, seed=1), prior_scales=(0.0,))
    with pytest.raises(ValueError, match="num_samples"):
        BayesianLastLayer(linear_head(), pairs(10, seed=0), pairs(10, seed=1)).fit(num_samples=1)
