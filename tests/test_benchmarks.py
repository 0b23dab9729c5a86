"""The benchmarks' own correctness: what they time must compute the same thing."""

import importlib.util
from pathlib import Path

import pyro
import torch

from pyro_vrm.config import TrainConfig
from pyro_vrm.train import VRMObjective, make_elbo

BENCHMARKS = Path(__file__).resolve().parents[1] / "experiments" / "benchmarks"


def load(name):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hand_written_torch_loss_equals_the_pyro_loss():
    bench = load("svi_overhead")
    vrm, batch, num_pairs = bench.setup(batch_size=64)
    for kind in ("kl", "rank"):
        objective = VRMObjective(make_elbo(TrainConfig()), 0.1, kind)
        pyro.set_rng_seed(7)
        pyro_loss = objective(vrm.model, vrm.guide, batch, num_pairs=num_pairs,
                              preferences=torch.ones(len(batch.index)))
        pyro.set_rng_seed(7)
        torch_loss = bench.torch_loss(vrm, batch, num_pairs, 0.1, kind)
        assert torch.allclose(pyro_loss, torch_loss, rtol=1e-5)
        pyro_grads = torch.autograd.grad(pyro_loss, list(vrm.parameters()))
        torch_grads = torch.autograd.grad(torch_loss, list(vrm.parameters()))
        assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(pyro_grads, torch_grads))


def test_lora_step_and_frozen_step_time_the_same_loss_while_the_adapters_are_zero():
    bench = load("lora_step")
    torch.set_num_threads(1)
    vrm, text, frozen, target, _ = bench.setup("tiny", num_pairs=4, max_length=48)
    index = torch.tensor([2, 0, 3])
    pyro.set_rng_seed(7)
    lora_loss = bench.vrm_loss(vrm, text, index, target)
    pyro.set_rng_seed(7)
    frozen_loss = bench.vrm_loss(vrm, frozen, index, target)
    assert torch.allclose(lora_loss, frozen_loss, rtol=1e-5)
    lora_b = [p for name, p in text.backbone.model.named_parameters() if "lora_B" in name]
    assert lora_b and all(g.abs().sum() > 0 for g in torch.autograd.grad(lora_loss, lora_b))  # reaches the adapters
