import numpy as np
import torch

from pyro_vrm.config import ModelConfig
from pyro_vrm.networks import softplus_inverse
from pyro_vrm.model import Priors
from pyro_vrm.sbc import simulation_based_calibration
from pyro_vrm.simulation import PriorSimulationConfig, simulate_from_prior
from pyro_vrm.vrm import VRM


def test_sbc_passes_a_posterior_at_the_prior_and_fails_an_overconfident_one():
    """An untrained guide's q(w) is Dirichlet(1), the prior: its w ranks are uniform and it contracts
    nothing. A q(w) pinned at (1/4, ..., 1/4) is far too narrow: its ranks pile at both ends."""
    data = simulate_from_prior(Priors(), PriorSimulationConfig(num_pairs=1100, held_out=1000, hidden_size=16))
    vrm = VRM(ModelConfig(latent_dim=16, width=16, depth=1, observe_aspects=False, conditional_prior=False), 16, 4)
    torch.manual_seed(0)
    at_prior = simulation_based_calibration(vrm, data)
    assert at_prior["w_rank_pvalue"] > 0.01
    assert abs(at_prior["w_contraction"]) < 0.05
    assert at_prior["ranks"]["objective_weights"].shape == (1000, 4)
    with torch.no_grad():
        vrm.amortized_guide.weight_encoder.net[-1].bias.fill_(softplus_inverse(50.0))
    narrow = simulation_based_calibration(vrm, data)
    assert narrow["w_rank_pvalue"] < 1e-6
    assert narrow["w_contraction"] > 0.9
    extreme = np.isin(narrow["ranks"]["objective_weights"], [0, narrow["num_draws"]]).mean()
    assert extreme > 0.3  # a calibrated q puts 2 / (L + 1) = 0.02 there


def test_a_conditional_prior_fit_passes_sbc_on_data_drawn_from_itself_and_an_untrained_one_does_not():
    """Pairs drawn from a fitted conditional-prior VRM (chosen = the winner) are the replicates that
    SBC of its local posterior needs. Fitted, the guide's ranks are uniform and it contracts; untrained,
    its q is the prior, which ignores that the chosen response won: the margin ranks pile up high."""
    from pyro_vrm.config import TrainConfig
    from pyro_vrm.sbc import simulate_from_fit
    from pyro_vrm.train import fit_vrm
    torch.set_num_threads(1)  # small networks: a second thread only waits on a shared machine
    data = simulate_from_prior(Priors(), PriorSimulationConfig(num_pairs=3000, held_out=1000, hidden_size=16))
    config = ModelConfig(latent_dim=8, width=32, depth=1, conditional_prior=True, observe_aspects=True)
    # one fit each, at a fixed weight decay: what is tested is the fit's SBC, not the decay's choice
    untrained, standardizer = fit_vrm(data.train, config, TrainConfig(steps=1, lr=1e-9, weight_decay=0.0),
                                      progress=False)
    fitted, standardizer = fit_vrm(data.train, config, TrainConfig(steps=800, log_every=800, weight_decay=0.0),
                                   progress=False)
    results = {}
    for name, vrm in (("untrained", untrained), ("fitted", fitted)):
        own = simulate_from_fit(vrm, data.test, standardizer, seed=1)
        assert len(own.test) == 1000 and own.test.chosen_scores.shape == (1000, 4)
        torch.manual_seed(0)
        results[name] = simulation_based_calibration(vrm, own, standardizer)
    assert results["untrained"]["margin_rank_pvalue"] < 1e-6
    assert results["untrained"]["margin_zscore_mean"] < -0.1  # truths above q's draws
    for quantity in ("w", "margin", "loglik"):
        assert results["fitted"][f"{quantity}_rank_pvalue"] > 1e-3, quantity
    assert results["fitted"]["margin_contraction"] > 0.3
    assert abs(results["fitted"]["margin_zscore_sd"] - 1) < 0.15
