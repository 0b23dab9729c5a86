"""pyro_vrm/ood.py: the three kinds of out-of-distribution text and the AUROC of an sd on them."""

import pytest
import torch

from pyro_vrm.ood import OOD_KINDS, OTHER_FAMILY_PROMPTS, ood_aurocs, ood_texts
from pyro_vrm.simulated_text import FILLER, family_of, response_quality

PROMPTS = ["Any tips for saving money?", "Is it true that bats are blind?"]


def test_each_kind_of_text_is_what_it_says():
    g = torch.Generator().manual_seed(0)
    prompts, responses = ood_texts("in_distribution", PROMPTS, 8, g)
    assert prompts == PROMPTS * 4 and all(response_quality(r).abs().max() <= 1 for r in responses)
    prompts, responses = ood_texts("filler_only", PROMPTS, 4, g)
    assert prompts == PROMPTS * 2 and responses == [FILLER] * 4
    _, full = ood_texts("in_distribution", PROMPTS, 6, torch.Generator().manual_seed(1))
    _, cut = ood_texts("truncated", PROMPTS, 6, torch.Generator().manual_seed(1))
    for whole, part in zip(full, cut):  # the same draws, cut to their first third of words
        assert whole.startswith(part) and len(part.split()) == max(1, len(whole.split()) // 3)
    prompts, _ = ood_texts("other_family", PROMPTS, 20, g)
    assert set(prompts) <= set(OTHER_FAMILY_PROMPTS)
    for prompt in set(prompts):  # no family of the data set writes such prompts
        with pytest.raises(ValueError, match="matches no simulated-text template"):
            family_of(prompt)
    with pytest.raises(ValueError, match="unknown kind of text 'gibberish'"):
        ood_texts("gibberish", PROMPTS, 1, g)


def test_aurocs_of_an_sd_that_grows_as_text_shortens():
    """sd = -(words): filler-only text (11 words) is shorter than every whole response (4
    sentences) and a third of one nearly always is, so both separate (all but perfectly);
    other-family prompts get responses drawn as the in-distribution ones are, so they do not."""

    def score(prompts, responses):
        words = torch.tensor([float(len(r.split())) for r in responses])
        return torch.zeros_like(words), -words

    result = ood_aurocs(score, PROMPTS, num=200, seed=0)
    assert set(result["auroc"]) == set(OOD_KINDS)
    assert result["auroc"]["filler_only"] == 1.0 and result["auroc"]["truncated"] > 0.99
    assert 0.4 < result["auroc"]["other_family"] < 0.6
    assert result["mean_sd"]["filler_only"] == -len(FILLER.split())
