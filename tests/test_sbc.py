import numpy as np
import torch

from pyro_vrm.config import ModelConfig
from pyro_vrm.guide import _softplus_inverse
from pyro_vrm.model import Priors
from pyro_vrm.sbc import simulation_based_calibration
from pyro_vrm.simulation import PriorSimulationConfig, simulate_from_prior
from pyro_vrm.vrm import VRM


def test_sbc_passes_a_posterior_at_the_prior_and_fails_an_overconfident_one():
    """An untrained guide's q(w) is Dirichlet(1), the prior: its w ranks are uniform and it contracts
    nothing. A q(w) pinned at (1/4, ..., 1/4) is far too narrow: its ranks pile at both ends."""
    data = simulate_from_prior(Priors(), PriorSimulationConfig(num_pairs=1100, held_out=1000, hidden_size=16))
    vrm = VRM(ModelConfig(latent_dim=16, width=16, depth=1, observe_aspects=False), 16, 4)
    torch.manual_seed(0)
    at_prior = simulation_based_calibration(vrm, data)
    assert at_prior["w_rank_pvalue"] > 0.01
    assert abs(at_prior["w_contraction"]) < 0.05
    assert at_prior["ranks"]["objective_weights"].shape == (1000, 4)
    with torch.no_grad():
        vrm.amortized_guide.weight_encoder.net[-1].bias.fill_(_softplus_inverse(50.0))
    narrow = simulation_based_calibration(vrm, data)
    assert narrow["w_rank_pvalue"] < 1e-6
    assert narrow["w_contraction"] > 0.9
    extreme = np.isin(narrow["ranks"]["objective_weights"], [0, narrow["num_draws"]]).mean()
    assert extreme > 0.3  # a calibrated q puts 2 / (L + 1) = 0.02 there
