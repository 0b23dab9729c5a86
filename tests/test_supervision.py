import pytest
import torch

from pyro_vrm.supervision import SUPERVISION_LOSSES, Standardizer, supervision_loss, supervision_target


def test_standardizer_uses_training_scores_of_both_responses():
    chosen, rejected = torch.tensor([[1.0, 10.0], [3.0, 30.0]]), torch.tensor([[5.0, 20.0], [7.0, 40.0]])
    s = Standardizer.fit(chosen, rejected)
    assert torch.allclose(s.mean, torch.tensor([4.0, 25.0]))
    z = s(torch.cat([chosen, rejected]))
    assert torch.allclose(z.mean(0), torch.zeros(2), atol=1e-6)
    assert torch.allclose(z.std(0), torch.ones(2))


def test_target_is_a_softmax_on_the_simplex_sharpened_by_low_temperature():
    scores = torch.tensor([[1.0, 0.0, -1.0]])
    t1, t_sharp = supervision_target(scores, 1.0), supervision_target(scores, 0.1)
    assert torch.allclose(t1.sum(-1), torch.ones(1))
    assert torch.allclose(t1[0, 0] / t1[0, 1], torch.exp(torch.tensor(1.0)))  # log-odds = score gap / T
    assert t_sharp[0, 0] > t1[0, 0] > t1[0, 1] > t1[0, 2]


@pytest.mark.parametrize("kind", SUPERVISION_LOSSES)
def test_each_loss_prefers_weights_that_match_the_target(kind):
    target = torch.tensor([[0.6, 0.3, 0.1], [0.1, 0.2, 0.7]])
    matching = 20 * target
    reversed_ = 20 * target.flip(-1)
    good, bad = supervision_loss(kind, target, matching), supervision_loss(kind, target, reversed_)
    assert good.shape == (2,)
    assert torch.all(good < bad)
    if kind != "rank":
        assert torch.allclose(good, torch.zeros(2), atol=1e-6)


def test_losses_by_hand():
    target, concentration = torch.tensor([[0.5, 0.5]]), torch.tensor([[3.0, 1.0]])  # m = (0.75, 0.25)
    kl = 0.5 * torch.log(torch.tensor(0.5 / 0.75)) + 0.5 * torch.log(torch.tensor(0.5 / 0.25))
    assert torch.allclose(supervision_loss("kl", target, concentration), kl.reshape(1))
    assert torch.allclose(supervision_loss("mse", target, concentration), torch.tensor([0.0625]))
    assert torch.allclose(supervision_loss("mae", target, concentration), torch.tensor([0.25]))
    # no strictly ordered aspect pair in a flat target: the rank loss is 0
    assert supervision_loss("rank", target, concentration).item() == 0.0
    ordered = torch.tensor([[0.7, 0.3]])
    expected = torch.nn.functional.softplus(-torch.log(torch.tensor(3.0)))
    assert torch.allclose(supervision_loss("rank", ordered, concentration), expected.reshape(1))


def test_unknown_loss_is_named():
    with pytest.raises(ValueError, match="unknown supervision loss 'hinge'"):
        supervision_loss("hinge", torch.ones(1, 2) / 2, torch.ones(1, 2))
