import pytest
import torch

from pyro_vrm.policy import TinyPolicyConfig, tiny_policy, warm_start, word_tokenizer

PROMPTS = ["Any tips for sleeping better?", "Is it true that bats are blind?"]
RESPONSES = ["Start with the single most useful step.", "Honestly, this is a common myth."]


def test_word_tokenizer_round_trips_text_and_marks_unknown_words():
    tok = word_tokenizer(PROMPTS + RESPONSES)
    ids = tok(RESPONSES, add_special_tokens=False).input_ids
    assert tok.batch_decode(ids) == RESPONSES
    assert tok.convert_ids_to_tokens(tok("bats are purple").input_ids)[-2] == "<unk>"
    assert tok.padding_side == "left" and tok("bats").input_ids[-1] == tok.sep_token_id


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second thread only waits on a shared machine
    yield
    torch.set_num_threads(threads)


def test_warm_start_teaches_the_responses(one_thread):
    config = TinyPolicyConfig(policy_layers=1, policy_width=32, warm_start_steps=60, warm_start_batch_size=4)
    model, tok = tiny_policy(PROMPTS + RESPONSES, config)
    losses = warm_start(model, tok, PROMPTS, RESPONSES, config)
    assert losses[-1] < 0.1 * losses[0]
    query = tok(PROMPTS[:1], return_tensors="pt")
    out = model.generate(**query, do_sample=False, max_new_tokens=12, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id)
    assert tok.decode(out[0, query.input_ids.shape[1]:], skip_special_tokens=True) == RESPONSES[0]


def test_warm_start_needs_paired_texts():
    model, tok = tiny_policy(PROMPTS + RESPONSES, TinyPolicyConfig(policy_layers=1, policy_width=16))
    with pytest.raises(ValueError, match="as many prompts as responses"):
        warm_start(model, tok, PROMPTS, RESPONSES[:1])
