import copy

import datasets
import pytest
import torch
from transformers import AutoModel, AutoTokenizer, CamembertConfig, GraniteConfig, Qwen3Config

from pyro_vrm.backbone import Backbone, resolve_backbone
from pyro_vrm.baseline import RewardHead, bradley_terry_loss
from pyro_vrm.config import ModelConfig, TrainConfig
from pyro_vrm.features import PreferenceFeatures
from pyro_vrm.featurize import cache_key
from pyro_vrm.finetune import (TextPairs, adapter_state_dict, add_lora, default_target_modules, load_adapter,
                               load_adapter_state_dict, save_adapter, trainable_parameters)
from pyro_vrm.simulated_text import TextSimulationConfig, simulate_text
from pyro_vrm.supervision import Standardizer, supervision_target
from pyro_vrm.train import VRMObjective, make_elbo
from pyro_vrm.vrm import VRM

KINDS = ["tiny_causal", "minilm"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    torch.set_num_threads(1)  # on a few shared cores, more threads are many times slower


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_backbone("minilm"))


@pytest.fixture(scope="module")
def base_models(tokenizer):
    """Frozen models that each test copies: add_lora changes the model it is given."""
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                         max_position_embeddings=128)
    return {"tiny_causal": (AutoModel.from_config(config), 40),
            "minilm": (Backbone.from_pretrained("minilm").model, 48)}


@pytest.fixture
def make_backbone(base_models, tokenizer):
    def make(kind: str) -> Backbone:
        model, max_length = base_models[kind]
        return Backbone(copy.deepcopy(model), tokenizer, max_length=max_length, batch_size=3, name=kind)
    return make


@pytest.fixture(scope="module")
def pairs():
    return simulate_text(TextSimulationConfig(num_prompts=4, seed=2))  # 8 pairs, 2 per prompt, 4 aspects


def perturb_adapters(backbone: Backbone, seed: int = 1) -> None:
    """Random adapter weights (peft starts with B = 0, where LoRA changes nothing)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in trainable_parameters(backbone):
            p.copy_(0.1 * torch.randn(p.shape, generator=g))


def base_weights(backbone: Backbone) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in backbone.model.named_parameters() if "lora_" not in name}


@pytest.mark.parametrize("kind", KINDS)
def test_lora_states_with_gradient_equal_encode_in_eval_mode(kind, make_backbone, pairs):
    backbone = add_lora(make_backbone(kind))
    perturb_adapters(backbone)
    table = TextPairs.from_dataset(pairs, backbone)
    index = torch.tensor([5, 0, 3])
    with backbone.evaluating():
        batch = table.batch(index)
    assert batch.prompt_state.requires_grad and batch.chosen_state.requires_grad
    expected = table.features().select(index)  # encode: no gradient, eval mode, length-sorted batches
    for name in ("prompt_state", "chosen_state", "rejected_state"):
        assert torch.allclose(getattr(batch, name), getattr(expected, name), atol=1e-5), name
    assert not torch.allclose(batch.chosen_state, batch.rejected_state)
    assert backbone.model.training  # evaluating() restored the train mode add_lora left


@pytest.mark.parametrize("kind", KINDS)
def test_vrm_steps_move_every_adapter_and_leave_every_base_weight_bit_identical(kind, make_backbone, pairs):
    backbone = add_lora(make_backbone(kind), rank=4)
    before = base_weights(backbone)
    adapters = {id(p): p.detach().clone() for p in trainable_parameters(backbone)}
    table = TextPairs.from_dataset(pairs, backbone)
    standardizer = Standardizer.fit(table.chosen_scores, table.rejected_scores)
    target = supervision_target(standardizer(table.chosen_scores))
    vrm = VRM(ModelConfig(latent_dim=4, width=16), table.hidden_size, table.num_aspects)
    objective = VRMObjective(make_elbo(TrainConfig()), 0.1, "kl")
    optimizer = torch.optim.Adam(list(vrm.parameters()) + trainable_parameters(backbone), lr=1e-2)
    for step in range(3):
        index = torch.arange(4) + 4 * (step % 2)
        loss = objective(vrm.model, vrm.guide, table.batch(index, target), num_pairs=len(table),
                         preferences=torch.ones(len(index)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(not torch.equal(p, adapters[id(p)]) for p in trainable_parameters(backbone))
    after = base_weights(backbone)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert not any(p.requires_grad for name, p in backbone.model.named_parameters() if "lora_" not in name)


def test_bradley_terry_steps_train_the_adapters_with_the_reward_head(make_backbone, pairs):
    backbone = add_lora(make_backbone("tiny_causal"))
    before, adapters = base_weights(backbone), [p.detach().clone() for p in trainable_parameters(backbone)]
    table = TextPairs.from_dataset(pairs, backbone)
    head = RewardHead(table.hidden_size, width=16, depth=1)
    optimizer = torch.optim.Adam(list(head.parameters()) + trainable_parameters(backbone), lr=1e-2)
    for step in range(3):
        batch = table.batch(torch.arange(4) + 4 * (step % 2))
        loss = bradley_terry_loss(head(batch.prompt_state, batch.chosen_state),
                                  head(batch.prompt_state, batch.rejected_state))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(not torch.equal(p, q) for p, q in zip(trainable_parameters(backbone), adapters))
    assert all(torch.equal(p, before[k]) for k, p in base_weights(backbone).items())


def test_bf16_base_weights_train_fp32_adapters_and_give_fp32_states(make_backbone, pairs):
    low = make_backbone("tiny_causal")
    low.model.to(torch.bfloat16)  # as loaded on a GPU
    backbone = add_lora(low)
    assert {p.dtype for p in trainable_parameters(backbone)} == {torch.float32}
    h_x, h_xy = backbone.states(pairs["prompt"][:2], pairs["chosen"][:2])
    assert h_x.dtype == h_xy.dtype == torch.float32
    h_xy.sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in trainable_parameters(backbone))
    assert backbone.model.get_base_model().layers[0].mlp.down_proj.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_checkpointing_recomputes_layers_and_gives_the_same_gradients(kind, make_backbone, pairs):
    backbone = add_lora(make_backbone(kind))
    perturb_adapters(backbone)
    base = backbone.model.get_base_model()
    assert base.is_activation_checkpointing
    layer = next(m for m in base.modules() if type(m).__name__.endswith("Layer"))
    inside = next(m for m in layer.modules() if isinstance(m, torch.nn.Linear))  # a checkpoint reruns its forward
    calls = []
    inside.register_forward_hook(lambda *_: calls.append(1))
    table = TextPairs.from_dataset(pairs, backbone)
    projection = torch.randn(2, backbone.hidden_size, generator=torch.Generator().manual_seed(0))

    def gradients():
        calls.clear()
        torch.manual_seed(3)  # MiniLM's dropout, same masks in both runs
        batch = table.batch(torch.arange(4))
        loss = (batch.prompt_state @ projection[0]).sum() + ((batch.chosen_state - batch.rejected_state) @ projection[1]).sum()
        return torch.autograd.grad(loss, trainable_parameters(backbone)), len(calls)

    checkpointed, calls_checkpointed = gradients()
    base.activation_checkpointing_disable()
    kept, calls_kept = gradients()
    assert (calls_checkpointed, calls_kept) == (2, 1)  # forward, then the recomputation in backward
    assert all(g.abs().sum() > 0 for g in kept)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(checkpointed, kept))


def test_adapter_weights_round_trip_through_a_file(make_backbone, pairs, tmp_path):
    trained = add_lora(make_backbone("tiny_causal"))
    perturb_adapters(trained)
    save_adapter(trained, tmp_path / "adapter.safetensors")
    fresh = add_lora(make_backbone("tiny_causal"))
    prompts, responses = pairs["prompt"][:3], pairs["chosen"][:3]
    with trained.evaluating(), fresh.evaluating():
        assert not torch.allclose(fresh.states(prompts, responses)[1], trained.states(prompts, responses)[1])
        load_adapter(fresh, tmp_path / "adapter.safetensors")
        for ours, theirs in zip(fresh.states(prompts, responses), trained.states(prompts, responses)):
            assert torch.equal(ours, theirs)
    state = adapter_state_dict(trained)
    assert all("lora_" in name and t.device.type == "cpu" for name, t in state.items())
    with pytest.raises(ValueError, match="saved with another rank"):
        load_adapter_state_dict(add_lora(make_backbone("tiny_causal"), rank=4), state)
    with pytest.raises(ValueError, match="missing .* unexpected"):
        load_adapter_state_dict(add_lora(make_backbone("tiny_causal"), target_modules=["k_proj"]), state)
    with pytest.raises(ValueError, match="has no adapters: call add_lora first"):
        load_adapter_state_dict(make_backbone("tiny_causal"), state)
    with pytest.raises(ValueError, match="already has adapters"):
        add_lora(trained)


def test_default_targets_are_peft_s_where_it_knows_the_model_else_every_attention_and_mlp_linear(
        make_backbone, tokenizer):
    def adapted(backbone):
        return sorted({name.split(".")[-1] for name, m in backbone.model.named_modules() if hasattr(m, "lora_A")})

    assert adapted(add_lora(make_backbone("tiny_causal"))) == ["q_proj", "v_proj"]
    assert adapted(add_lora(make_backbone("minilm"))) == ["query", "value"]
    size = dict(vocab_size=tokenizer.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=64)
    granite = AutoModel.from_config(GraniteConfig(num_key_value_heads=2, **size))  # unknown to peft
    assert adapted(add_lora(Backbone(granite, tokenizer, max_length=16))) == \
        ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    camembert = AutoModel.from_config(CamembertConfig(**size))  # an encoder unknown to peft, with a pooler
    targets = default_target_modules(camembert)
    assert targets and not any("pooler" in name for name in targets)
    assert len(targets) == len([m for m in camembert.encoder.modules() if isinstance(m, torch.nn.Linear)])


def test_text_pairs_carry_prompt_ids_and_scores_as_the_feature_table_does(make_backbone, pairs):
    table = TextPairs.from_dataset(pairs, make_backbone("tiny_causal"))
    assert len(table) == 8 and table.hidden_size == 32 and table.num_aspects == 4
    assert table.prompt_id.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert torch.equal(table.rejected_scores, torch.tensor(pairs["scores_rejected"]))
    part = table.select(torch.tensor([6, 1]))
    assert part.prompt_id.tolist() == [3, 0] and part.chosen == [pairs["chosen"][6], pairs["chosen"][1]]
    assert isinstance(part.features(), PreferenceFeatures) and len(part.features()) == 2
    target = torch.arange(32.0).reshape(8, 4)
    assert torch.equal(table.batch(torch.tensor([2, 7]), target).target, target[[2, 7]])
    with pytest.raises(ValueError, match="lacks rejected"):
        TextPairs.from_dataset(datasets.Dataset.from_dict({"prompt": ["a"], "chosen": ["b"]}), table.backbone)
    with pytest.raises(ValueError, match="chosen has 1 rows, expected 2"):
        TextPairs(table.backbone, ["a", "b"], ["c"], ["d", "e"])


def test_features_through_adapters_are_never_taken_from_the_frozen_backbone_s_cache(make_backbone, pairs):
    frozen = make_backbone("tiny_causal")
    frozen_key = cache_key(frozen, pairs)
    lora = add_lora(frozen)
    untrained_key = cache_key(lora, pairs)
    perturb_adapters(lora)
    assert len({frozen_key, untrained_key, cache_key(lora, pairs)}) == 3
    assert cache_key(lora, pairs) == cache_key(lora, pairs)
