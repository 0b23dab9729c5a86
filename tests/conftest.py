import os
import warnings

import pyro
import pytest
import torch
from transformers import AutoModel, AutoTokenizer, Qwen3Config

from pyro_vrm.backbone import resolve_backbone
from pyro_vrm.simulation import SimulationConfig, simulate


def pytest_configure(config):
    """ArviZ 0.23 writes a once-a-day stamp file on its first import of the day, and two processes
    importing it at once race on that file (one fails with FileNotFoundError). The controller imports
    it before pytest-xdist starts the workers, so they find today's stamp and only read it.

    Each xdist worker, and every process a test starts, computes on one thread: the workers already
    share the cores, and torch's default of a thread per core in each of them oversubscribes them."""
    if hasattr(config, "workerinput"):
        os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the processes tests start
        torch.set_num_threads(1)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            import arviz  # noqa: F401


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


@pytest.fixture(scope="session")
def tiny_causal_lm(tmp_path_factory):
    """A random-init two-layer Qwen3 with MiniLM's tokenizer, saved as a local model folder."""
    folder = tmp_path_factory.mktemp("tiny-qwen3")
    tokenizer = AutoTokenizer.from_pretrained(resolve_backbone("minilm"))
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=128)
    AutoModel.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
