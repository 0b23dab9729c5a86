import pytest
import torch

from pyro_vrm.backbone import Backbone
from pyro_vrm.featurize import cache_key, data_fingerprint, featurize
from pyro_vrm.simulated_text import TextSimulationConfig, simulate_text


@pytest.fixture(scope="module")
def pairs():
    return simulate_text(TextSimulationConfig(num_prompts=6))


@pytest.fixture(scope="module")
def minilm():
    return Backbone.from_pretrained("minilm", max_length=48)


def test_second_run_loads_from_the_cache_without_a_forward_pass(pairs, minilm, tmp_path):
    first = featurize(pairs, minilm, tmp_path)
    calls = minilm.forward_calls
    second = featurize(pairs, minilm, tmp_path)
    assert not first.from_cache and second.from_cache and first.path == second.path
    assert minilm.forward_calls == calls  # no forward pass for a hit
    for name in ("prompt_state", "chosen_state", "rejected_state", "chosen_scores", "prompt_id"):
        assert torch.equal(getattr(first.features, name), getattr(second.features, name)), name
    assert first.features.chosen_state.shape == (12, 384)
    assert torch.allclose(first.features.chosen_scores, torch.tensor(pairs["scores_chosen"]))
    # pairs of one prompt share its id
    assert first.features.prompt_id.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]


def test_the_key_changes_with_max_length_backbone_and_data(pairs, minilm, tmp_path):
    shorter = Backbone(minilm.model, minilm.tokenizer, max_length=32, name="minilm")
    assert cache_key(shorter, pairs) != cache_key(minilm, pairs)
    other_data = simulate_text(TextSimulationConfig(num_prompts=6, seed=1))
    assert data_fingerprint(other_data) != data_fingerprint(pairs)
    assert cache_key(minilm, other_data) != cache_key(minilm, pairs)
    torch.manual_seed(1)
    reinitialised = Backbone(type(minilm.model)(minilm.model.config), minilm.tokenizer, max_length=48, name="")
    assert cache_key(reinitialised, pairs) != cache_key(minilm, pairs)
    featurize(pairs, minilm, tmp_path)
    calls = shorter.forward_calls
    assert not featurize(pairs, shorter, tmp_path).from_cache and shorter.forward_calls > calls


def test_two_writers_of_one_entry_both_get_its_states(pairs, minilm, tmp_path, monkeypatch):
    # A second process computes the same entry while the first is saving it: each writes a folder of
    # its own, the first rename wins, and neither deletes what the other is writing.
    import datasets

    save = datasets.Dataset.save_to_disk
    calls = []

    def save_then_race(self, path, *args, **kwargs):
        save(self, path, *args, **kwargs)
        calls.append(path)
        if len(calls) == 1:  # the other writer saves and renames between this save and its rename
            calls.append(featurize(pairs, minilm, tmp_path))

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", save_then_race)
    first = featurize(pairs, minilm, tmp_path)
    other = calls[-1]
    assert calls[0] != calls[1]  # two folders
    assert not first.from_cache and not other.from_cache and first.path == other.path
    assert torch.equal(first.features.chosen_state, other.features.chosen_state)
    assert featurize(pairs, minilm, tmp_path).from_cache
    assert [p.name for p in tmp_path.iterdir()] == [first.path.name]  # no folder left behind
    (tmp_path / "plain").mkdir()  # an entry is as readable by others as any folder made here
    assert first.path.stat().st_mode == (tmp_path / "plain").stat().st_mode
