import pytest
import torch
from torch.nn.functional import logsigmoid

from pyro_vrm.baseline import BradleyTerryLoss, RewardHead, bradley_terry_loss, fit_temperature
from pyro_vrm.config import ModelConfig, TrainConfig
from pyro_vrm.evaluate import summarize
from pyro_vrm.features import PairBatch
from pyro_vrm.guide import AmortizedGuide
from pyro_vrm.runs import RunDir
from pyro_vrm.train import fit_reward_model


def test_bradley_terry_loss_by_hand():
    r_c, r_r = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0])
    expected = (torch.log1p(torch.exp(torch.tensor(-2.0))) + torch.log1p(torch.exp(torch.tensor(1.0)))) / 2
    assert torch.allclose(bradley_terry_loss(r_c, r_r), expected)
    assert torch.allclose(bradley_terry_loss(r_c, r_r), -logsigmoid(r_c - r_r).mean())


def test_head_has_the_capacity_of_a_guide_network():
    config = ModelConfig(width=32, depth=2)
    head = RewardHead(hidden_size=10, width=config.width, depth=config.depth)
    guide = AmortizedGuide(10, 4, 3, config.width, config.depth, config.init_concentration, config.init_scale)
    hidden = [m.weight.shape for m in head.net if isinstance(m, torch.nn.Linear)][:-1]
    guide_hidden = [m.weight.shape for m in guide.feature_encoder.net if isinstance(m, torch.nn.Linear)][:-1]
    assert hidden == guide_hidden


def test_the_loss_module_scores_both_responses_with_the_prompt():
    head = RewardHead(hidden_size=3, width=8, depth=1)
    g = torch.Generator().manual_seed(0)
    batch = PairBatch(torch.arange(5), *(torch.randn(5, 3, generator=g) for _ in range(3)))
    loss = BradleyTerryLoss(head)(batch, num_pairs=50)
    by_hand = -logsigmoid(head(batch.prompt_state, batch.chosen_state) - head(batch.prompt_state, batch.rejected_state))
    assert torch.allclose(loss, by_hand.mean())


def test_reward_model_learns_the_simulated_preferences(small_data, tmp_path):
    config = TrainConfig(steps=150, batch_size=64, log_every=50)
    head = fit_reward_model(small_data.train, ModelConfig(width=32, depth=1), config,
                            run=RunDir(tmp_path), progress=False)
    summary = summarize(head, small_data.train, small_data.test, truth=small_data.truth)
    assert summary["model"] == "rm" and "kl_per_pair" not in summary
    assert summary["train_accuracy"] > 0.75 and summary["test_accuracy"] > 0.6
    assert summary["test_accuracy"] <= summary["oracle_accuracy"] + 0.05
    assert RunDir(tmp_path).checkpoint_config()["kind"] == "rm"
    assert [m["step"] for m in RunDir(tmp_path).read_metrics()] == [50, 100, 150]


def test_fit_temperature_recovers_the_temperature_that_drew_the_outcomes():
    g = torch.Generator().manual_seed(0)
    margins = 3 * torch.randn(20000, generator=g)
    true_temperature = 2.5
    chosen_won = torch.rand(20000, generator=g) < torch.sigmoid(margins / true_temperature)
    oriented = torch.where(chosen_won, margins, -margins)  # r_chosen - r_rejected, as data records it
    assert fit_temperature(oriented) == pytest.approx(true_temperature, rel=0.05)
    # margins that carry no signal: T runs to the bound, P(chosen wins) to 1/2
    assert fit_temperature(torch.tensor([1.0, -1.0, 2.0, -2.0]), bounds=(0.01, 100.0)) == pytest.approx(100.0, rel=1e-3)
    with pytest.raises(ValueError, match="at least one"):
        fit_temperature(torch.empty(0))


def test_a_temperature_divides_the_rewards_and_must_be_positive():
    head = RewardHead(hidden_size=3, width=8, depth=1)
    states = torch.randn(4, 3), torch.randn(4, 3)
    plain = head(*states)
    head.temperature = 4.0
    assert torch.allclose(head(*states), plain / 4)
    with pytest.raises(ValueError, match="temperature .* must be positive"):
        RewardHead(hidden_size=3, width=8, depth=1, temperature=0.0)
