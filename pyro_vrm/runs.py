"""The run folder: config.json, metrics.jsonl, checkpoint/ and summary.json.

Every file is written to a temporary name and renamed, so a crash never leaves a half-written
checkpoint or summary behind.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pyro
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

    def start_metrics(self) -> None:
        (self.path / "metrics.jsonl").write_text("")

    def log_metrics(self, record: dict) -> None:
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record, default=_jsonable) + "\n")

    def read_metrics(self) -> list[dict]:
        with open(self.path / "metrics.jsonl") as f:
            return [json.loads(line) for line in f if line.strip()]

    def save_checkpoint(self, config: dict, module: torch.nn.Module, extra: dict | None = None) -> None:
        """The Pyro param store, the module's state dict, ``extra`` tensors and the config, each
        file written atomically."""
        self.checkpoint_dir.mkdir(exist_ok=True)
        state = {"param_store": pyro.get_param_store().get_state(), "module": module.state_dict(),
                 "extra": extra or {}}
        atomic_write(self.checkpoint_dir / "params.pt", lambda p: torch.save(state, p))
        text = json.dumps(config, indent=2, default=_jsonable)
        atomic_write(self.checkpoint_dir / "config.json", lambda p: p.write_text(text + "\n"))

    def checkpoint_config(self) -> dict:
        return json.loads((self.checkpoint_dir / "config.json").read_text())

    def load_checkpoint(self, module: torch.nn.Module) -> dict:
        """Load the checkpoint's parameters into ``module`` and return its ``extra`` tensors.

        The module's own parameters are authoritative, so the param store is emptied: Pyro
        re-registers them on the next model or guide run, and no stale copy can shadow them.
        """
        state = torch.load(self.checkpoint_dir / "params.pt", weights_only=False)
        module.load_state_dict(state["module"])
        pyro.clear_param_store()
        return state["extra"]


def _jsonable(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
