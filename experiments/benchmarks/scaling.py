"""VRM training on cached features as the data set grows: step throughput and peak memory.

For each data-set size N (default 4,000, 40,000 and 400,000 pairs of random hidden states,
H = 384 as MiniLM's, with K = 4 aspect scores), the step that ``fit_vrm`` takes (a minibatch
from ``minibatches``, ``VRMLoss`` forward and backward, a ClippedAdam step), written out here so
that it runs on any device, is repeated a fixed number of times at a fixed batch size. The
objective is ``--preset``'s: ``tempered`` (fixed priors, KL weight 0.01, the aspect scores
observed with a learned sigma_a, no supervision term), ``paper`` (KL weight 1, lambda 0.1 on the
aspect target, no aspect likelihood) or ``recommended`` (training's default: conditional priors).
The timed steps come in chunks, and the median chunk gives the step time (so a burst of load from other jobs
hits one chunk, not the figure). Each N runs in a fresh subprocess (its ``pid`` is in its figures), so that its peak
memory (``ru_maxrss``, and ``torch.cuda.max_memory_allocated`` on CUDA) is that size's alone.
A step's cost should not depend on N (the plate subsamples; only the data's memory grows).
Prints one JSON line ending with ``"ratio": pairs/s at the largest N / pairs/s at the smallest``
(the aim: about 1.0).

    python experiments/benchmarks/scaling.py [--sizes 4000 40000 400000] [--batch-size 256]
                                             [--steps 300] [--device cpu] [--threads 1]
                                             [--preset tempered|paper|recommended]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import pyro
import torch
from pyro.optim.clipped_adam import ClippedAdam

from pyro_vrm import VRM, ModelConfig, PreferenceFeatures, TrainConfig, minibatches
from timing import device_name, synchronizer
from training import OBJECTIVE_KEYS, Recipe, add_preset_argument, objective_fields, recipe

NUM_ASPECTS = 4
CHUNKS = 10


def random_features(num_pairs: int, hidden_size: int, device: torch.device, seed: int = 0) -> PreferenceFeatures:
    """N pairs of standard-normal hidden states (N, H) and aspect scores (N, K), on ``device``."""
    g = torch.Generator().manual_seed(seed)
    states = [torch.randn(num_pairs, hidden_size, generator=g).to(device) for _ in range(3)]
    scores = [torch.randn(num_pairs, NUM_ASPECTS, generator=g).to(device) for _ in range(2)]
    return PreferenceFeatures(*states, chosen_scores=scores[0], rejected_scores=scores[1])


def training_step(train: PreferenceFeatures, train_config: TrainConfig, device: torch.device,
                  preset_name: str = "tempered", model_config: ModelConfig = ModelConfig(),
                  num_steps: int | None = None) -> tuple[Callable[[], torch.Tensor], VRM, Recipe]:
    """(a step of ``fit_vrm`` on ``train`` returning its loss, the VRM it trains, its recipe): the VRM
    seeded and built as ``fit_vrm`` builds it under the preset, minibatches from
    ``minibatches`` (``num_steps`` of them, default ``train_config.steps``) and ClippedAdam
    with the loop's settings."""
    r = recipe(train, preset_name, model_config, train_config)
    cfg, num_pairs = r.train_config, len(train)
    pyro.set_rng_seed(cfg.seed)
    vrm = VRM(r.model_config, train.hidden_size, r.model_config.num_objectives).to(device)
    loss = r.loss(vrm)
    optimizer = ClippedAdam(vrm.parameters(), lr=cfg.lr, lrd=cfg.lr_decay ** (1 / cfg.steps), clip_norm=cfg.clip_norm,
                            weight_decay=cfg.weight_decay)
    batches = minibatches(num_pairs, cfg.batch_size, num_steps or cfg.steps, cfg.seed)
    targets = None if r.targets is None else r.targets.to(device)

    def step() -> torch.Tensor:
        value = loss(train.batch(next(batches).to(device), targets), num_pairs)
        value.backward()
        optimizer.step()
        optimizer.zero_grad()
        return value.detach()
    return step, vrm, r


def one_size(num_pairs: int, hidden_size: int, batch_size: int, steps: int, device: torch.device,
             preset_name: str = "tempered") -> dict:
    """Train ``steps`` timed steps (after a tenth as many untimed) on N random pairs; figures of this N."""
    train = random_features(num_pairs, hidden_size, device)
    warmup, chunk = max(1, steps // 10), max(1, steps // CHUNKS)
    step, _, r = training_step(train, TrainConfig(batch_size=batch_size, steps=steps), device, preset_name,
                               num_steps=warmup + chunk * CHUNKS)
    sync = synchronizer(device)
    for _ in range(warmup):
        step()
    per_step = []
    for _ in range(CHUNKS):
        sync()
        start = time.perf_counter()
        for _ in range(chunk):
            step()
        sync()
        per_step.append((time.perf_counter() - start) / chunk)
    seconds = statistics.median(per_step)
    features = sum(t.numel() * t.element_size() for t in (train.prompt_state, train.chosen_state,
                                                          train.rejected_state, train.chosen_scores,
                                                          train.rejected_scores))
    figures = {"pairs": num_pairs, "pid": os.getpid(), **objective_fields(r), "step_ms": round(1e3 * seconds, 3),
               "pairs_per_s": round(min(batch_size, num_pairs) / seconds, 1),
               "features_mib": round(features / 2**20, 3),
               "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}  # KiB on Linux
    if device.type == "cuda":
        figures["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return figures


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4_000, 40_000, 400_000])
    parser.add_argument("--hidden-size", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=TrainConfig().batch_size)
    parser.add_argument("--steps", type=int, default=300, help="timed steps per size")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads: the heads' matmuls are small, and on a shared machine a second "
                             "OpenMP thread spins against other jobs (steps 10-100x slower)")
    add_preset_argument(parser)
    parser.add_argument("--one-size", action="store_true", help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    if args.one_size:
        with pyro.validation_enabled(False):
            figures = one_size(args.sizes[0], args.hidden_size, args.batch_size, args.steps, device, args.preset)
        print(json.dumps(figures))
        return figures
    common = ["--hidden-size", str(args.hidden_size), "--batch-size", str(args.batch_size),
              "--steps", str(args.steps), "--device", args.device, "--threads", str(args.threads),
              "--preset", args.preset]
    sizes = []
    for n in sorted(args.sizes):
        child = subprocess.run([sys.executable, __file__, "--one-size", "--sizes", str(n), *common],
                               stdout=subprocess.PIPE, text=True, check=True)
        sizes.append(json.loads(child.stdout.splitlines()[-1]))
    objective = {key: sizes[0][key] for key in OBJECTIVE_KEYS}  # the same in every child
    if any({key: figures.pop(key) for key in OBJECTIVE_KEYS} != objective for figures in sizes):
        raise RuntimeError(f"the sizes trained different objectives: {sizes}")
    result = {"benchmark": "scaling", "preset": args.preset, **objective, "device": device_name(device),
              "threads": args.threads, "validation": False, "hidden_size": args.hidden_size,
              "batch_size": args.batch_size, "steps": args.steps, "sizes": sizes,
              "ratio": round(sizes[-1]["pairs_per_s"] / sizes[0]["pairs_per_s"], 3)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
