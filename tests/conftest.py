import pyro
import pytest
import torch

from pyro_vrm.simulate import SimulationConfig, simulate


@pytest.fixture(autouse=True)
def fresh_pyro():
    """Every test starts from an empty param store, a fixed seed and Pyro's validation on."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    with pyro.validation_enabled(True):
        yield


@pytest.fixture(scope="session")
def small_data():
    """A small simulated data set (200 prompts, 400 pairs), shared read-only by the tests."""
    torch.set_num_threads(1)
    return simulate(SimulationConfig(num_prompts=200, seed=3))
