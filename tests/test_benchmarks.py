"""The benchmarks' own correctness: what they time must compute what training computes."""

import importlib.util
import json
import sys
from pathlib import Path

import pyro
import pytest
import torch

from pyro_vrm import PRESETS, ModelConfig, RunDir, TrainConfig, fit_vrm, preset
from pyro_vrm.baseline import BradleyTerryLoss  # not public: the RM's loss the benchmarks must match

BENCHMARKS = Path(__file__).resolve().parents[1] / "experiments" / "benchmarks"


def load(name):
    if str(BENCHMARKS) not in sys.path:  # the scripts import their shared timing module
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = sys.modules[name] = importlib.util.module_from_spec(spec)  # dataclasses look it up
    spec.loader.exec_module(module)
    return module


def parameters_moved(module, before: dict) -> set[str]:
    return {name for name, p in module.named_parameters() if not torch.equal(p, before[name])}


def snapshot(module) -> dict:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


@pytest.mark.parametrize("name, sup_loss", [("tempered", "kl"), ("paper", "kl"), ("paper", "rank")])
def test_hand_written_torch_loss_equals_the_pyro_loss(name, sup_loss):
    bench = load("svi_overhead")
    # N / B = 10, so that a term scaled by the plate where it should not be (or not where it
    # should) shows; one batch of 32 of 320 training pairs
    vrm, recipe, batch, num_pairs = bench.setup(32, name, TrainConfig(sup_loss=sup_loss), num_prompts=200)
    assert num_pairs >= 8 * len(batch.index)
    cfg = recipe.train_config
    if name == "tempered":  # beta < 1, aspects observed with a learned sigma_a, no lambda
        assert cfg.kl_weight == PRESETS["tempered"]["kl_weight"] < 1
        assert (cfg.lambda_sup, recipe.model_config.observe_aspects) == (0.0, True)
        assert recipe.aspects is not None and vrm.decoder.aspect_noise is not None
    else:
        assert (cfg.kl_weight, cfg.lambda_sup, recipe.model_config.observe_aspects) == (1.0, 0.1, False)
        assert recipe.aspects is None and batch.target is not None
    loss = recipe.loss(vrm)  # the module the training loop steps
    pyro.set_rng_seed(7)
    pyro_loss = loss(batch, num_pairs)
    pyro.set_rng_seed(7)
    torch_loss = bench.torch_loss(vrm, batch, num_pairs, cfg, recipe.aspects)
    assert torch.allclose(pyro_loss, torch_loss, rtol=1e-5)
    names, params = zip(*vrm.named_parameters())
    pyro_grads = torch.autograd.grad(pyro_loss, params)
    torch_grads = torch.autograd.grad(torch_loss, params)
    for param, a, b in zip(names, pyro_grads, torch_grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7), param
    grads = dict(zip(names, torch_grads))
    if name == "tempered":  # sigma_a is trained, and the aspect likelihood reaches b
        assert grads["decoder.log_aspect_noise"].abs().min() > 0 and grads["decoder.bias"].abs().min() > 1e-4
    else:  # the supervision term reaches q(w)'s network
        assert grads["amortized_guide.weight_encoder.net.0.weight"].abs().sum() > 0


def test_svi_overhead_runs_and_checks_its_two_losses_agree(capsys):
    bench = load("svi_overhead")
    result = bench.main(["--batch-size", "16", "--repeats", "4", "--preset", "paper", "--no-validation"])
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == result
    assert (result["preset"], result["kl_weight"], result["lambda_sup"]) == ("paper", 1.0, 0.1)
    assert "svi_ms" not in result and list(result)[-1] == "ratio"


@pytest.mark.parametrize("name", ["tempered", "paper"])
def test_the_benchmarks_build_the_vrm_that_fit_vrm_builds(name):
    training = load("training")
    assert name in training.PRESET_NAMES
    train = load("scaling").random_features(40, 8, torch.device("cpu"))  # with aspect scores
    model_config = ModelConfig(width=8, depth=1)
    recipe = training.recipe(train, name, model_config)
    vrm, standardizer = fit_vrm(train, *preset(name, model_config, TrainConfig(steps=1)), progress=False)
    assert vrm.config == recipe.model_config  # observe_aspects and K resolved alike
    assert recipe.train_config == preset(name)[1]
    assert torch.equal(recipe.standardizer.mean, standardizer.mean)


@pytest.mark.parametrize("name", ["tempered", "paper"])
def test_scaling_times_the_step_of_fit_vrm(tmp_path, name):
    bench = load("scaling")
    train = bench.random_features(60, 8, torch.device("cpu"))
    cfg, model_config = TrainConfig(batch_size=16, steps=3, log_every=1), ModelConfig(width=8, depth=1)
    step, vrm, _ = bench.training_step(train, cfg, torch.device("cpu"), name, model_config)
    before = snapshot(vrm)
    losses = [float(step()) for _ in range(cfg.steps)]
    # every parameter trains; with aspects observed, sigma_a and the decoder's bias too (which
    # cancels in r_chosen - r_rejected without them)
    unmoved = set(before) - parameters_moved(vrm, before)
    assert unmoved == (set() if name == "tempered" else {"decoder.bias"})
    assert ("decoder.log_aspect_noise" in before) == (name == "tempered")
    # the same losses and the same parameters as fit_vrm's first steps
    fitted, _ = fit_vrm(train, *preset(name, model_config, cfg), run=RunDir(tmp_path), progress=False)
    logged = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert losses == pytest.approx(logged, rel=1e-6)
    for (param, ours), (_, theirs) in zip(vrm.named_parameters(), fitted.named_parameters()):
        assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-7), param


def test_scaling_runs_each_size_in_its_own_process(capsys):
    bench = load("scaling")
    sizes = [60, 240]
    result = bench.main(["--sizes", *map(str, sizes[::-1]), "--hidden-size", "8", "--batch-size", "16",
                         "--steps", "10", "--device", "cpu", "--threads", "1"])
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == result
    assert (result["kl_weight"], result["lambda_sup"], result["observe_aspects"]) == (0.01, 0, True)  # tempered
    figures = result["sizes"]
    assert [f["pairs"] for f in figures] == sizes
    pids = {f["pid"] for f in figures}
    assert len(pids) == len(sizes) and bench.os.getpid() not in pids
    assert all(f["peak_rss_mib"] > 0 and f["step_ms"] > 0 for f in figures)


def test_step_vs_rm_times_the_vrm_objective_and_the_bradley_terry_loss():
    bench = load("step_vs_rm")
    batch, num_pairs, recipe = bench.simulated_batch(24, 32, torch.device("cpu"), "tempered",
                                                     ModelConfig(width=16, depth=1))
    assert recipe.aspects is not None and recipe.train_config.kl_weight == PRESETS["tempered"]["kl_weight"]
    steps = bench.frozen_steps(batch, num_pairs, recipe)
    vrm, head = steps.vrm_model, steps.reward_head
    before = {f"vrm.{n}": p for n, p in snapshot(vrm).items()} | {f"rm.{n}": p for n, p in snapshot(head).items()}

    @torch.no_grad()
    def vrm_loss(seed):
        pyro.set_rng_seed(seed)
        loss = recipe.loss(vrm)(batch, num_pairs)
        pyro.set_rng_seed(seed)  # the step that follows draws the same samples
        return loss

    with torch.no_grad():
        rm_loss = BradleyTerryLoss(head)(batch, num_pairs)
    assert torch.equal(steps.rm(), rm_loss)
    expected = vrm_loss(seed=3)
    assert torch.equal(steps.vrm(), expected)
    expected = vrm_loss(seed=4)
    assert torch.allclose(steps.vrm_by_hand(), expected, rtol=1e-5)
    moved = {f"vrm.{n}" for n in parameters_moved(vrm, {n[4:]: p for n, p in before.items() if n.startswith("vrm.")})}
    moved |= {f"rm.{n}" for n in parameters_moved(head, {n[3:]: p for n, p in before.items() if n.startswith("rm.")})}
    # The RM's output bias cancels in r_chosen - r_rejected; VRM's decoder bias does not, once the
    # aspect scores are observed.
    assert set(before) - moved <= {"rm.net.2.bias"}
    assert "vrm.decoder.log_aspect_noise" in moved and len(before) > 10


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


def test_featurize_charges_the_model_flops_of_the_sequences_fed(capsys):
    bench = load("featurize_throughput")
    result = bench.main(["--shape", "tiny", "--pairs", "4", "--max-length", "24", "--device", "cpu"])
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == result
    config = bench.qwen3_config("tiny")
    # between every sequence of one token and every one at the maximum length
    assert bench.flops_per_token(config, 1) < result["model_flops_per_token"] <= bench.flops_per_token(config, 24)
    assert 0 < result["pyro_vrm_mfu"] and 0 < result["naive_mfu"] and list(result)[-1] == "ratio"


def test_featurize_times_a_cold_then_a_warm_cache(tmp_path, monkeypatch):
    bench = load("featurize_throughput")
    backbone = bench.qwen3_backbone("tiny", max_length=16, batch_size=2, device="cpu")
    table = bench.datasets.Dataset.from_dict({"prompt": ["a b", "c"], "chosen": ["d", "e f"], "rejected": ["g", "h"]})
    assert bench.timed_features(table, backbone, tmp_path, expect_cached=False) > 0
    assert bench.timed_features(table, backbone, tmp_path, expect_cached=True) > 0
    with pytest.raises(RuntimeError, match="cold cache"):  # a cache already filled is not a cold run
        bench.timed_features(table, backbone, tmp_path, expect_cached=False)


def test_lora_step_and_frozen_step_time_the_same_loss_while_the_adapters_are_zero():
    bench = load("lora_step")
    torch.set_num_threads(1)
    vrm, text, frozen, recipe, _ = bench.setup("tiny", num_pairs=4, max_length=48)
    loss = recipe.loss(vrm)
    index, device = torch.tensor([2, 0, 3]), torch.device("cpu")
    pyro.set_rng_seed(7)
    lora_loss = loss(bench.batch_of(text, index, recipe, device), len(text))
    pyro.set_rng_seed(7)
    frozen_loss = loss(bench.batch_of(frozen, index, recipe, device), len(frozen))
    assert torch.allclose(lora_loss, frozen_loss, rtol=1e-5)
    lora_b = [p for name, p in text.backbone.model.named_parameters() if "lora_B" in name]
    assert lora_b and all(g.abs().sum() > 0 for g in torch.autograd.grad(lora_loss, lora_b))  # reaches the adapters


def test_step_vs_rm_lora_mode_trains_each_model_through_its_own_adapters():
    bench = load("step_vs_rm")
    torch.set_num_threads(1)
    steps = bench.lora_steps("tiny", batch_size=4, max_length=32, device=torch.device("cpu"),
                             model_config=ModelConfig(width=16, depth=1))
    vrm, head = steps.vrm_model, steps.reward_head
    before = {"vrm": snapshot(vrm), "rm": snapshot(head)}
    assert torch.isfinite(steps.vrm()) and len(parameters_moved(vrm, before["vrm"])) > 5
    assert not parameters_moved(head, before["rm"])
    assert torch.isfinite(steps.rm()) and len(parameters_moved(head, before["rm"])) > 2
    # Each step also ran its own backbone backward: its adapters left zero (peft starts B at 0).
    for backbone in steps.backbones:
        lora_b = [p for name, p in backbone.model.named_parameters() if "lora_B" in name]
        assert lora_b and all(p.abs().sum() > 0 for p in lora_b)
