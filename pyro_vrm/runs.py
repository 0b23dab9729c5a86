"""The run folder: config.json, metrics.jsonl, checkpoint/ and summary.json.

Every file is written to a temporary name and renamed, so a crash never leaves a half-written
checkpoint or summary behind.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

__all__ = ["RunDir", "new_run_dir", "atomic_write"]


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)``, then rename the temporary file onto ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def new_run_dir(root: str | Path = "runs", prefix: str = "run") -> Path:
    """A fresh folder ``root/prefix-YYYYmmdd-HHMMSS[-n]``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        path = Path(root) / (f"{prefix}-{stamp}" + (f"-{n}" if n else ""))
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a new run folder under {root}")


class RunDir:
    """Reads and writes one run folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.checkpoint_dir = self.path / "checkpoint"

    def write_json(self, name: str, obj: dict) -> None:
        text = json.dumps(obj, indent=2, sort_keys=False, default=_jsonable)
        atomic_write(self.path / name, lambda p: p.write_text(text + "\n"))

    def read_json(self, name: str) -> dict:
        return json.loads((self.path / name).read_text())

    def start_metrics(self, keep_until: int | None = None) -> None:
        """Start ``metrics.jsonl`` afresh, or, resuming from the checkpoint of step ``keep_until``,
        keep its records up to that step and drop those a stopped run logged after it."""
        path = self.path / "metrics.jsonl"
        kept = [r for r in self.read_metrics(complete_only=True) if r["step"] <= keep_until] \
            if keep_until is not None and path.exists() else []
        text = "".join(json.dumps(r, default=_jsonable) + "\n" for r in kept)
        atomic_write(path, lambda p: p.write_text(text))

    def log_metrics(self, record: dict) -> None:
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record, default=_jsonable) + "\n")

    def read_metrics(self, complete_only: bool = False) -> list[dict]:
        """The records of ``metrics.jsonl``; ``complete_only`` skips a last line that a killed
        run left half-written."""
        lines = (self.path / "metrics.jsonl").read_text().splitlines(keepends=True)
        if complete_only and lines and not lines[-1].endswith("\n"):
            lines.pop()
        return [json.loads(line) for line in lines if line.strip()]

    def save_checkpoint(self, config: dict, module: torch.nn.Module, extra: dict | None = None,
                        **training_state) -> None:
        """The module's state dict, ``extra`` tensors, what a resumed run needs
        (``training_state``: step, optimizer state, RNG states) and the config, each file
        written atomically."""
        self.checkpoint_dir.mkdir(exist_ok=True)
        state = {"module": module.state_dict(), "extra": extra or {}, **training_state}
        atomic_write(self.checkpoint_dir / "params.pt", lambda p: torch.save(state, p))
        text = json.dumps(config, indent=2, default=_jsonable)
        atomic_write(self.checkpoint_dir / "config.json", lambda p: p.write_text(text + "\n"))

    def has_checkpoint(self) -> bool:
        return (self.checkpoint_dir / "params.pt").exists() and (self.checkpoint_dir / "config.json").exists()

    def checkpoint_config(self) -> dict:
        return json.loads((self.checkpoint_dir / "config.json").read_text())

    def checkpoint_differs(self, config: dict) -> list[str]:
        """The top-level keys on which ``config`` and the checkpoint's config disagree."""
        saved, given = self.checkpoint_config(), json.loads(json.dumps(config, default=_jsonable))
        return sorted(k for k in saved.keys() | given.keys() if saved.get(k) != given.get(k))

    def checkpoint_state(self) -> dict:
        """Everything ``params.pt`` holds, as saved."""
        return torch.load(self.checkpoint_dir / "params.pt", weights_only=False)

    def load_checkpoint(self, module: torch.nn.Module) -> dict:
        """Load the checkpoint's parameters into ``module`` and return the rest of its state
        (``extra`` tensors; ``step``, ``optimizer`` and ``rng`` where training wrote them)."""
        state = self.checkpoint_state()
        module.load_state_dict(state.pop("module"))
        return state


def _jsonable(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
