"""The feature cache: hidden states of a preference data set, computed once, stored with
``datasets`` (Arrow on disk, fp16) and reused across SVI runs.

The cache key covers everything the states depend on: the backbone (name, config, pooling,
chat template), the data (a hash of every prompt and response), and the maximum length. A
second call with the same key loads from disk and runs no forward pass; changing any part of the
key computes afresh.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch

from .backbone import Backbone
from .features import PreferenceFeatures

__all__ = ["default_cache_dir", "data_fingerprint", "cache_key", "featurize", "Featurized", "pair_labels"]

STATE_COLUMNS = ("prompt_state", "chosen_state", "rejected_state")


def default_cache_dir() -> Path:
    """``$PYRO_VRM_CACHE/features``, by default ``~/.cache/pyro_vrm/features``."""
    return Path(os.environ.get("PYRO_VRM_CACHE", Path.home() / ".cache" / "pyro_vrm")) / "features"


def data_fingerprint(pairs: datasets.Dataset) -> str:
    """A hash of every (prompt, chosen, rejected) triple, in order."""
    h = hashlib.sha256()
    for batch in pairs.select_columns(["prompt", "chosen", "rejected"]).iter(batch_size=4096):
        for triple in zip(batch["prompt"], batch["chosen"], batch["rejected"]):
            h.update(json.dumps(triple).encode())
    return h.hexdigest()


def cache_key(backbone: Backbone, pairs: datasets.Dataset) -> str:
    parts = {"backbone": backbone.identity(), "data": data_fingerprint(pairs),
             "max_length": backbone.max_length, "pooling": backbone.pooling, "format": 1}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


@dataclass
class Featurized:
    features: PreferenceFeatures
    path: Path          # the cache entry
    from_cache: bool    # True when loaded, False when computed
    num_tokens: int     # tokens through the backbone when computed (0 when loaded)


def featurize(pairs: datasets.Dataset, backbone: Backbone, cache_dir: Path | None = None) -> Featurized:
    """Hidden states of ``pairs`` (columns prompt, chosen, rejected [, scores_*]) from the cache,
    or computed by ``backbone`` and stored there."""
    path = Path(cache_dir or default_cache_dir()) / cache_key(backbone, pairs)
    if (path / "dataset_info.json").exists():
        states = datasets.load_from_disk(str(path)).with_format("torch")[:]
        return Featurized(_features(pairs, {c: states[c].float() for c in STATE_COLUMNS}), path, True, 0)
    encoded = backbone.encode_pairs(pairs["prompt"], pairs["chosen"], pairs["rejected"])
    states = {c: getattr(encoded, c) for c in STATE_COLUMNS}
    table = datasets.Dataset.from_dict(
        {c: s.half().numpy() for c, s in states.items()},
        features=datasets.Features({c: datasets.Sequence(datasets.Value("float16")) for c in STATE_COLUMNS}))
    _store(table, path)
    # What training sees is what a cache hit will give: the fp16-rounded states.
    rounded = {c: s.half().float() for c, s in states.items()}
    return Featurized(_features(pairs, rounded), path, False, encoded.num_tokens)


def _store(table: datasets.Dataset, path: Path) -> None:
    """Save ``table`` as the cache entry ``path``: written to a folder of this call's own, then
    renamed onto ``path`` (atomic: a half-written entry is never taken for a hit). Processes that
    compute the same entry at once each write their own folder; the first rename wins and the
    others, holding the same states, discard theirs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp's folder is private; an entry is shared as any folder made here
    try:
        table.save_to_disk(str(tmp))
        if path.exists() and not (path / "dataset_info.json").exists():
            shutil.rmtree(path, ignore_errors=True)  # an entry left incomplete by an older layout
        try:
            os.replace(tmp, path)
        except OSError:
            if not (path / "dataset_info.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _features(pairs: datasets.Dataset, states: dict[str, torch.Tensor]) -> PreferenceFeatures:
    return PreferenceFeatures(**states, **pair_labels(pairs))


def pair_labels(pairs: datasets.Dataset) -> dict[str, torch.Tensor]:
    """What a table of pairs carries besides states: ``prompt_id`` (N,), pairs of one prompt text
    sharing an id numbered in order of appearance, and ``chosen_scores``, ``rejected_scores`` (N, K)
    where ``pairs`` has aspect scores.

    Examples:
        >>> table = datasets.Dataset.from_dict({"prompt": ["a", "b", "a"]})
        >>> pair_labels(table)["prompt_id"].tolist()
        [0, 1, 0]
    """
    prompt_index = {p: i for i, p in enumerate(dict.fromkeys(pairs["prompt"]))}
    labels = {"prompt_id": torch.tensor([prompt_index[p] for p in pairs["prompt"]])}
    if "scores_chosen" in pairs.column_names:
        labels["chosen_scores"] = torch.tensor(pairs["scores_chosen"], dtype=torch.float32)
        labels["rejected_scores"] = torch.tensor(pairs["scores_rejected"], dtype=torch.float32)
    return labels
