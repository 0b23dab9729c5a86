"""The benchmarks' own correctness: what they time must compute the same thing."""

import importlib.util
import json
import sys
from pathlib import Path

import pyro
import pytest
import torch

from pyro_vrm.baseline import bradley_terry_loss
from pyro_vrm.config import ModelConfig, TrainConfig
from pyro_vrm.train import VRMObjective, make_elbo

BENCHMARKS = Path(__file__).resolve().parents[1] / "experiments" / "benchmarks"


def load(name):
    if str(BENCHMARKS) not in sys.path:  # the scripts import their shared timing module
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = sys.modules[name] = importlib.util.module_from_spec(spec)  # dataclasses look it up
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


def test_step_vs_rm_times_the_vrm_objective_and_the_bradley_terry_loss():
    bench = load("step_vs_rm")
    batch, num_pairs = bench.simulated_batch(hidden_size=24, batch_size=32, device=torch.device("cpu"))
    cfg = TrainConfig(sup_loss="mse")
    steps = bench.frozen_steps(batch, num_pairs, ModelConfig(width=16, depth=1), cfg)
    vrm, head = steps.vrm_model, steps.reward_head
    params = {f"vrm.{n}": p for n, p in vrm.named_parameters()} | {f"rm.{n}": p for n, p in head.named_parameters()}
    before = {name: p.detach().clone() for name, p in params.items()}

    @torch.no_grad()
    def vrm_loss(seed):
        pyro.set_rng_seed(seed)
        loss = VRMObjective(make_elbo(cfg), cfg.lambda_sup, "mse")(
            vrm.model, vrm.guide, batch, num_pairs=num_pairs, preferences=torch.ones(len(batch.index)))
        pyro.set_rng_seed(seed)  # the step that follows draws the same samples
        return loss

    with torch.no_grad():
        rm_loss = bradley_terry_loss(head(batch.prompt_state, batch.chosen_state),
                                     head(batch.prompt_state, batch.rejected_state))
    assert torch.equal(steps.rm(), rm_loss)
    expected = vrm_loss(seed=3)
    assert torch.equal(steps.vrm(), expected)
    expected = vrm_loss(seed=4)
    assert torch.allclose(steps.vrm_by_hand(), expected, rtol=1e-5)
    unmoved = {name for name, p in params.items() if torch.equal(p, before[name])}
    # Output biases cancel in r_chosen - r_rejected (a zero or rounding-level gradient).
    assert unmoved <= {"rm.net.2.bias", "vrm.decoder.bias"}
    assert len(params) > 10


def test_scaling_reports_each_size_from_its_own_process_and_their_quotient(capsys):
    bench = load("scaling")
    hidden, sizes = 8, [60, 240]
    result = bench.main(["--sizes", *map(str, sizes[::-1]), "--hidden-size", str(hidden), "--batch-size", "16",
                         "--steps", "10", "--device", "cpu", "--threads", "1"])
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == result
    figures = result["sizes"]
    assert [f["pairs"] for f in figures] == sizes
    for f in figures:  # each child held N pairs of 3 states (H,) and 2 score vectors (K,), float32
        assert f["features_mib"] == round(f["pairs"] * (3 * hidden + 2 * bench.NUM_ASPECTS) * 4 / 2**20, 3)
        assert f["peak_rss_mib"] > 0 and f["step_ms"] > 0
        assert f["pairs_per_s"] == pytest.approx(16 / (f["step_ms"] / 1e3), rel=1e-3)
    assert result["ratio"] == round(figures[-1]["pairs_per_s"] / figures[0]["pairs_per_s"], 3)


def test_featurize_flops_per_token_match_a_hand_count():
    bench = load("featurize_throughput")
    tiny = bench.qwen3_config("tiny")  # hidden 32, 2 layers, 4 heads (2 kv) of 8, MLP 64
    per_layer = 32 * 32 + 32 * 16 + 32 * 16 + 32 * 32 + 3 * 32 * 64 + 2 * 32 + 2 * 8  # q k v o, MLP, norms
    assert bench.non_embedding_parameters(tiny) == 2 * per_layer + 32
    assert bench.flops_per_token(tiny, context=10) == 2 * (2 * per_layer + 32) + 2 * 2 * 2 * 10 * (4 * 8)
    model = bench.qwen3_backbone("tiny", max_length=16, batch_size=2, device="cpu").model
    embedding = model.get_input_embeddings().weight.numel()
    assert bench.non_embedding_parameters(model.config) == sum(p.numel() for p in model.parameters()) - embedding
    # The model cards' non-embedding counts: 0.44B and 3.6B.
    assert round(bench.non_embedding_parameters(bench.qwen3_config("qwen3-0.6b")) / 1e9, 2) == 0.44
    assert round(bench.non_embedding_parameters(bench.qwen3_config("qwen3-4b")) / 1e9, 1) == 3.6


def test_featurize_mfu_charges_the_model_flops_of_the_sequences_fed(capsys):
    bench = load("featurize_throughput")
    result = bench.main(["--shape", "tiny", "--pairs", "4", "--max-length", "24", "--device", "cpu"])
    config = bench.qwen3_config("tiny")
    assert bench.flops_per_token(config, 1) < result["model_flops_per_token"] <= bench.flops_per_token(config, 24)
    ours_s = result["tokens"] / result["pyro_vrm_tokens_per_s"]
    mfu = result["model_flops_per_token"] * result["tokens"] / ours_s / (result["peak_tflops"] * 1e12)
    assert result["pyro_vrm_mfu"] == pytest.approx(mfu, rel=0.03)  # up to the JSON's rounding
    assert list(result)[-1] == "ratio"


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


def test_step_vs_rm_lora_mode_trains_each_model_through_its_own_adapters():
    bench = load("step_vs_rm")
    torch.set_num_threads(1)
    steps = bench.lora_steps("tiny", batch_size=4, max_length=32, device=torch.device("cpu"),
                             model_config=ModelConfig(width=16, depth=1))
    vrm, head = steps.vrm_model, steps.reward_head
    before = {"vrm": [p.detach().clone() for p in vrm.parameters()],
              "rm": [p.detach().clone() for p in head.parameters()]}

    def moved(name, module):
        return sum(not torch.equal(a, b) for a, b in zip(before[name], module.parameters()))

    assert torch.isfinite(steps.vrm()) and moved("vrm", vrm) > 5 and moved("rm", head) == 0
    assert torch.isfinite(steps.rm()) and moved("rm", head) > 2
    # Each step also ran its own backbone backward: its adapters left zero (peft starts B at 0).
    for backbone in steps.backbones:
        lora_b = [p for name, p in backbone.model.named_parameters() if "lora_B" in name]
        assert lora_b and all(p.abs().sum() > 0 for p in lora_b)
