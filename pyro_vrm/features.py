"""Hidden-state features of preference pairs: what the guide and the reward head read."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import NamedTuple

import torch

from .config import ConfigError

__all__ = ["PreferenceFeatures", "PairBatch", "check_pair_rows", "split_by_prompt", "validation_split",
           "validation_folds"]


class PairBatch(NamedTuple):
    """A minibatch of B pairs, the one argument model and guide share.

    index: (B,) positions of the pairs in their data set (for the plate's subsampling).
    prompt_state, chosen_state, rejected_state: (B, H) hidden states h_x, h_xc, h_xr.
    target: (B, K) supervision target t on the simplex, or None.
    """

    index: torch.Tensor
    prompt_state: torch.Tensor
    chosen_state: torch.Tensor
    rejected_state: torch.Tensor
    target: torch.Tensor | None = None


def check_pair_rows(table, n: int, columns: list[str]) -> None:
    """For a table of ``n`` pairs: give it prompt ids 0..n-1 if it has none, and check that its
    aspect scores come for both responses or neither and that every column has ``n`` rows."""
    if table.prompt_id is None:
        table.prompt_id = torch.arange(n)
    if (table.chosen_scores is None) != (table.rejected_scores is None):
        raise ValueError("aspect scores need both chosen_scores and rejected_scores")
    for name in columns:
        value = getattr(table, name)
        if value is not None and len(value) != n:
            raise ValueError(f"{type(table).__name__}.{name} has {len(value)} rows, expected {n}")


@dataclass
class PreferenceFeatures:
    """N preference pairs as hidden states, with optional aspect scores.

    prompt_state, chosen_state, rejected_state: (N, H) float.
    prompt_id: (N,) long, which prompt each pair belongs to (splits are made by prompt).
    chosen_scores, rejected_scores: (N, K) float aspect scores, or None.

    Examples:
        >>> f = PreferenceFeatures(torch.zeros(3, 2), torch.zeros(3, 2), torch.ones(3, 2))
        >>> len(f), f.hidden_size, len(f.select(torch.tensor([0, 2])))
        (3, 2, 2)
    """

    prompt_state: torch.Tensor
    chosen_state: torch.Tensor
    rejected_state: torch.Tensor
    prompt_id: torch.Tensor | None = None
    chosen_scores: torch.Tensor | None = None
    rejected_scores: torch.Tensor | None = None

    def __post_init__(self):
        check_pair_rows(self, len(self.prompt_state), [f.name for f in fields(self)])
        if not self.prompt_state.shape == self.chosen_state.shape == self.rejected_state.shape:
            raise ValueError("prompt, chosen and rejected states must have the same shape (N, H)")

    def __len__(self) -> int:
        return len(self.prompt_state)

    @property
    def hidden_size(self) -> int:
        return self.prompt_state.shape[-1]

    @property
    def num_aspects(self) -> int | None:
        return None if self.chosen_scores is None else self.chosen_scores.shape[-1]

    def select(self, index: torch.Tensor) -> PreferenceFeatures:
        """The pairs at ``index``, as a new table."""
        return PreferenceFeatures(**{
            f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[index]
            for f in fields(self)
        })

    def chunks(self, size: int):
        """The table in consecutive batches of at most ``size`` pairs, each a data set of its own
        (its ``index`` runs 0..B-1), for evaluation outside a training plate.

        Examples:
            >>> f = PreferenceFeatures(torch.zeros(5, 2), torch.zeros(5, 2), torch.ones(5, 2))
            >>> [b.index.tolist() for b in f.chunks(3)]
            [[0, 1, 2], [0, 1]]
        """
        for start in range(0, len(self), size):
            index = torch.arange(start, min(start + size, len(self)))
            yield self.batch(index)._replace(index=torch.arange(len(index)))

    def batch(self, index: torch.Tensor, target: torch.Tensor | None = None) -> PairBatch:
        """A :class:`PairBatch` of the pairs at ``index`` (``target`` is the full (N, K) table)."""
        return PairBatch(index, self.prompt_state[index], self.chosen_state[index],
                         self.rejected_state[index], None if target is None else target[index])


def split_by_prompt(prompt_id: torch.Tensor, test_fraction: float, seed: int) -> dict[str, torch.Tensor]:
    """Row indices of a train and a test split, ``test_fraction`` of the prompts held out whole.

    Examples:
        >>> split = split_by_prompt(torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]), 0.25, seed=0)
        >>> len(split["train"]), len(split["test"])
        (6, 2)
    """
    prompts = prompt_id.unique()
    g = torch.Generator().manual_seed(seed)
    held_out = prompts[torch.randperm(len(prompts), generator=g)[: max(1, round(test_fraction * len(prompts)))]]
    is_test = torch.isin(prompt_id, held_out)
    return {"train": (~is_test).nonzero().squeeze(-1), "test": is_test.nonzero().squeeze(-1)}


def validation_split(table, fraction: float, seed: int):
    """(fitting pairs, validation pairs) of a training table (``PreferenceFeatures`` or
    ``TextPairs``): ``fraction`` of its prompts held out whole, as :func:`split_by_prompt` does.

    Examples:
        >>> f = PreferenceFeatures(torch.zeros(8, 2), torch.zeros(8, 2), torch.ones(8, 2), torch.arange(8) // 2)
        >>> [len(part) for part in validation_split(f, 0.25, seed=0)]
        [6, 2]
    """
    index = split_by_prompt(table.prompt_id, fraction, seed)
    return table.select(index["train"]), table.select(index["test"])


def validation_folds(table, folds: int, fraction: float, seed: int) -> list[tuple]:
    """[(fitting pairs, validation pairs)] of a training table, prompts held out whole: with one
    fold, :func:`validation_split`'s (``fraction`` of the prompts held out); with K > 1, the
    prompts in K random groups of near-equal size, each held out in turn, so that each fit sees
    (K - 1) / K of them (``fraction`` unused).

    Examples:
        >>> f = PreferenceFeatures(torch.zeros(8, 2), torch.zeros(8, 2), torch.ones(8, 2), torch.arange(8) // 2)
        >>> [[len(part) for part in fold] for fold in validation_folds(f, 2, 0.25, seed=0)]
        [[4, 4], [4, 4]]
    """
    if folds == 1:
        return [validation_split(table, fraction, seed)]
    prompts = table.prompt_id.unique()
    if folds > len(prompts):
        raise ConfigError(f"--validation-folds {folds} exceeds the {len(prompts)} prompts of the training pairs")
    order = prompts[torch.randperm(len(prompts), generator=torch.Generator().manual_seed(seed))]
    held = [torch.isin(table.prompt_id, group) for group in order.tensor_split(folds)]
    return [(table.select((~h).nonzero().squeeze(-1)), table.select(h.nonzero().squeeze(-1))) for h in held]
