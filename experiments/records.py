"""What every experiment and benchmark writes: ``results.json`` with a record of the run that
made it (the command, the date, the commit, the machine), which ``experiments/report.py`` renders.
Light on purpose: the benchmarks import it without the experiments' plotting and data stack.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import torch


def cpu_name() -> str:
    """The processor's model name (from /proc/cpuinfo on Linux), else the architecture."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


# The packages whose versions a figure can depend on; constraints.txt pins the versions of a fresh install.
KEY_PACKAGES = ("pyro-ppl", "numpy", "scipy", "transformers", "datasets", "pyarrow", "accelerate", "peft", "arviz")


def package_versions() -> dict[str, str]:
    """The installed version of each of :data:`KEY_PACKAGES` (torch is recorded on its own)."""
    versions = {}
    for name in KEY_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def checkout_commit() -> str:
    """``git describe --always --dirty`` of the checkout, or "unknown" outside one."""
    return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                          cwd=Path(__file__).parent).stdout.strip() or "unknown"


# A run's results come from the code its process started with: a long run's checkout may have
# moved on by the time it writes them.
COMMIT_AT_START = checkout_commit()


def run_record() -> dict:
    """What a results page says of a run: the command, the date, the commit the process started
    from, the machine and the versions of torch and the key packages."""
    commit = COMMIT_AT_START
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    machine = f"{cpu_name()}, {os.cpu_count()} cores, GPU: {gpu}"
    return {"command": " ".join(["python", *(Path(a).as_posix() for a in sys.argv[:1]), *sys.argv[1:]]),
            "date": datetime.date.today().isoformat(), "commit": commit, "machine": machine,
            "torch": torch.__version__, "packages": package_versions(), "threads": torch.get_num_threads(),
            "defaults": default_vrm()}


def default_vrm() -> dict:
    """What ``VRM`` (the package default) is in this run's tables: a record without it was made
    when the default was the tempered preset (fixed priors, KL weight 0.01)."""
    from pyro_vrm.config import ModelConfig, TrainConfig

    return {"conditional_prior": ModelConfig().conditional_prior, "kl_weight": TrainConfig().kl_weight}


def write_results(out: Path, results: dict, name: str = "results.json") -> None:
    """``name`` in ``out``, with the :func:`run_record` of this run under ``"run"``."""
    record = {"run": run_record(), **results}
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(json.dumps(record, indent=2, default=str) + "\n")


def table(header: list[str], rows: list[list]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def show(results: dict, header: list[str], rows: list[list], key: str = "table") -> None:
    """Print a Markdown table and keep it in ``results[key]``, so that the report shows what the
    script printed."""
    rows = [[str(c) for c in row] for row in rows]
    print(table(header, rows))
    results[key] = {"header": header, "rows": rows}


def standard_error(values: list[float]) -> float | None:
    """The standard error of the mean of ``values``; None for fewer than two."""
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None


def paired_difference(values: list[float], against: list[float], lower_is_better: bool) -> dict:
    """Per-seed differences values - against: their mean, its se, and "better", "worse" or
    "within noise", better or worse only beyond 2 se."""
    diffs = [a - b for a, b in zip(values, against, strict=True)]
    mean, se = statistics.mean(diffs), standard_error(diffs)
    if se is None or not abs(mean) > 2 * se:
        verdict = "within noise"
    else:
        verdict = "better" if (mean < 0) == lower_is_better else "worse"
    return {"difference": mean, "se": se, "verdict": verdict}


def cell(mean: float, se: float | None, digits: int = 3, sign: bool = False) -> str:
    """A table cell: '1.234 ± 0.056', or '1.234' without an se; ``sign``: '+1.234 ± 0.056'."""
    value = f"{mean:+.{digits}f}" if sign else f"{mean:.{digits}f}"
    return value if se is None else f"{value} ± {se:.{digits}f}"
