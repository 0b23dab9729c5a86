import torch
from torch.nn.functional import logsigmoid

from pyro_vrm.baseline import RewardHead, bradley_terry_loss, fit_reward_model
from pyro_vrm.config import ModelConfig, TrainConfig
from pyro_vrm.evaluate import summarize_reward_model
from pyro_vrm.guide import AmortizedGuide
from pyro_vrm.runs import RunDir


def test_bradley_terry_loss_by_hand():
    r_c, r_r = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0])
    expected = (torch.log1p(torch.exp(torch.tensor(-2.0))) + torch.log1p(torch.exp(torch.tensor(1.0)))) / 2
    assert torch.allclose(bradley_terry_loss(r_c, r_r), expected)
    assert torch.allclose(bradley_terry_loss(r_c, r_r), -logsigmoid(r_c - r_r).mean())


def test_head_has_the_capacity_of_a_guide_network():
    head = RewardHead(hidden_size=10, width=32, depth=2)
    guide = AmortizedGuide(hidden_size=10, num_objectives=4, latent_dim=3, width=32, depth=2)
    hidden = [m.weight.shape for m in head.net if isinstance(m, torch.nn.Linear)][:-1]
    guide_hidden = [m.weight.shape for m in guide.feature_encoder.net if isinstance(m, torch.nn.Linear)][:-1]
    assert hidden == guide_hidden


def test_reward_model_learns_the_simulated_preferences(small_data, tmp_path):
    config = TrainConfig(steps=150, batch_size=64, log_every=50)
    head = fit_reward_model(small_data.train, ModelConfig(width=32, depth=1), config,
                            run=RunDir(tmp_path), progress=False)
    summary = summarize_reward_model(head, small_data.train, small_data.test, small_data.truth)
    assert summary["train_accuracy"] > 0.75 and summary["test_accuracy"] > 0.6
    assert summary["gap_to_oracle"] == summary["oracle_accuracy"] - summary["test_accuracy"]
    assert (tmp_path / "checkpoint" / "params.pt").exists()
    assert [m["step"] for m in RunDir(tmp_path).read_metrics()] == [50, 100, 150]
