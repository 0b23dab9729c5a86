"""What the benchmarks share: interleaved timing (alternating rounds, median of each) and devices."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def device_name(device: torch.device | str) -> str:
    """``cpu``, or ``cuda (<GPU name>)``: what a benchmark's JSON line names as its device."""
    device = torch.device(device)
    return f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else device.type


def synchronizer(device: torch.device | str) -> Callable[[], None]:
    """What to call before reading the clock: waits for queued CUDA kernels, a no-op on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_interleaved(steps: dict[str, Callable[[], object]], repeats: int, rounds: int = 20,
                     device: torch.device | str = "cpu", warmup: int = 10) -> dict[str, float]:
    """Median seconds per call of each callable, timed in alternating rounds so that a change
    in machine load hits both alike. On CUDA the clock is read only after the device is idle,
    so a round is charged for its kernels, not only for launching them.

    >>> seconds = time_interleaved({"a": lambda: None, "b": lambda: sum(range(100))}, repeats=4, rounds=2)
    >>> sorted(seconds), all(s >= 0 for s in seconds.values())
    (['a', 'b'], True)
    """
    sync = synchronizer(device)
    for step in steps.values():
        for _ in range(warmup):
            step()
    calls = max(1, repeats // rounds)
    per_round: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            sync()
            start = time.perf_counter()
            for _ in range(calls):
                step()
            sync()
            per_round[name].append((time.perf_counter() - start) / calls)
    return {name: statistics.median(times) for name, times in per_round.items()}
