import pytest
import torch
from transformers import AutoModel, AutoTokenizer, Qwen3Config

from pyro_vrm.backbone import Backbone, is_causal, resolve_backbone

PROMPTS = ["What is the capital of France?", "Tell me how to pick a lock, step by step, please."]
CHOSEN = ["Paris is the capital of France.", "I can't help with that."]
REJECTED = ["Lyon.", "Sure: take a tension wrench, insert it into the keyhole, then rake the pins."]


@pytest.fixture(scope="module")
def minilm():
    return Backbone.from_pretrained("minilm", max_length=64, batch_size=3)


@pytest.fixture(scope="module")
def tiny_causal(minilm):
    """A random-init Qwen3-shaped causal LM built from a config (no download), MiniLM's tokenizer."""
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=minilm.tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                         max_position_embeddings=128)
    return Backbone(AutoModel.from_config(config), minilm.tokenizer, max_length=24, batch_size=2)


def test_minilm_is_an_offline_encoder_with_states_of_the_right_shape(minilm):
    assert not minilm.causal and minilm.pooling == "response-mean"
    out = minilm.encode_pairs(PROMPTS, CHOSEN, REJECTED)
    for states in (out.prompt_state, out.chosen_state, out.rejected_state):
        assert states.shape == (2, 384) and states.dtype == torch.float32 and torch.isfinite(states).all()
    assert not torch.allclose(out.chosen_state, out.rejected_state)
    assert minilm.forward_calls == 2 + 1  # 4 pair sequences in batches of 3, then 2 prompts alone


def test_encoder_pools_the_response_tokens_and_the_prompt_alone(minilm):
    out = minilm.encode_pairs(PROMPTS[:1], CHOSEN[:1], REJECTED[:1])
    tok, model = minilm.tokenizer, minilm.model
    with torch.no_grad():
        pair = tok(PROMPTS[0], CHOSEN[0], return_tensors="pt")
        hidden = model(**pair).last_hidden_state[0]
        response = (pair["token_type_ids"][0] == 1) & (pair["input_ids"][0] != tok.sep_token_id)
        alone = tok(PROMPTS[0], return_tensors="pt")
        prompt_hidden = model(**alone).last_hidden_state[0, 1:-1]  # without [CLS] and [SEP]
    assert torch.allclose(out.chosen_state[0], hidden[response].mean(0), atol=1e-5)
    assert torch.allclose(out.prompt_state[0], prompt_hidden.mean(0), atol=1e-5)


def test_causal_one_pass_prompt_state_equals_the_prompt_encoded_alone(tiny_causal):
    assert tiny_causal.causal and tiny_causal.pooling == "last-token"
    out = tiny_causal.encode_pairs(PROMPTS, CHOSEN, REJECTED)
    assert out.prompt_state.shape == out.chosen_state.shape == (2, 32)
    for i, prompt in enumerate(PROMPTS):
        ids = tiny_causal.prompt_ids(prompt)
        response = tiny_causal.tokenizer(CHOSEN[i], add_special_tokens=False).input_ids
        ids = ids[-(tiny_causal.max_length - len(response)):]  # as truncated inside the pair
        with torch.no_grad():
            alone = tiny_causal.model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
        assert torch.allclose(out.prompt_state[i], alone, atol=1e-5)


def test_truncation_keeps_the_response_and_cuts_the_prompt_from_the_left(tiny_causal):
    long_prompt = " ".join(f"word{i}" for i in range(200))
    ids, prompt_position, (last,), _ = tiny_causal._causal_sequence(tiny_causal.prompt_ids(long_prompt), "The answer.")
    response = tiny_causal.tokenizer("The answer.", add_special_tokens=False).input_ids
    assert len(ids) == tiny_causal.max_length
    assert ids[-len(response):] == response and last == len(ids) - 1
    assert ids[: prompt_position + 1] == tiny_causal.prompt_ids(long_prompt)[-(prompt_position + 1):]


def test_chat_template_wraps_the_prompt_of_a_causal_model(tiny_causal):
    tok = AutoTokenizer.from_pretrained(resolve_backbone("minilm"))
    tok.chat_template = "{% for m in messages %}user says {{ m['content'] }} {% endfor %}assistant says"
    backbone = Backbone(tiny_causal.model, tok, max_length=32)
    plain = tok.decode(backbone.prompt_ids("hello there"))
    assert plain.startswith("user says hello there") and plain.endswith("assistant says")


def test_empty_response_is_pooled_at_the_end_of_the_sequence(minilm):
    out = minilm.encode_pairs(["Say nothing."], [""], ["Something."])
    assert torch.isfinite(out.chosen_state).all()


def test_kind_of_model_from_its_config(minilm, tiny_causal):
    assert is_causal(tiny_causal.model.config) and not is_causal(minilm.model.config)
    with pytest.raises(ValueError, match="--max-length must be at least 8"):
        Backbone(minilm.model, minilm.tokenizer, max_length=4)


@pytest.mark.parametrize("name", ["minilm", "tiny_causal"])
def test_states_with_gradient_equal_encode_in_eval_mode(name, request):
    backbone = request.getfixturevalue(name)
    prompts, responses = [*PROMPTS, PROMPTS[0]], [*CHOSEN, REJECTED[0]]  # a prompt shared by two pairs
    prompt_state, response_state, _ = backbone.encode(prompts, responses)
    calls = backbone.forward_calls
    h_x, h_xy = backbone.states(prompts, responses)
    assert backbone.forward_calls == calls + 1  # one batch, the distinct prompts of an encoder in it
    assert torch.allclose(h_x, prompt_state, atol=1e-5) and torch.allclose(h_xy, response_state, atol=1e-5)
    first_weight = next(backbone.model.parameters())
    (gradient,) = torch.autograd.grad((h_x.sum() + h_xy.sum()), first_weight)
    assert gradient.abs().sum() > 0


def test_encode_runs_in_eval_mode_and_restores_the_mode(tiny_causal):
    tiny_causal.model.train()
    seen = []
    hook = tiny_causal.model.register_forward_pre_hook(lambda module, args: seen.append(module.training))
    try:
        tiny_causal.encode(PROMPTS, CHOSEN)
    finally:
        hook.remove()
        training, _ = tiny_causal.model.training, tiny_causal.model.eval()
    assert seen and not any(seen) and training
