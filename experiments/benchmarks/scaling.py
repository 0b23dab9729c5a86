"""VRM training on cached features as the data set grows: step throughput and peak memory.

For each data-set size N (default 4,000, 40,000 and 400,000 pairs of random hidden states,
H = 384 as MiniLM's, with K = 4 aspect scores so the supervision term is on), the step that
``fit_vrm`` takes (a minibatch from ``minibatches``, ``VRMLoss`` forward and backward, a
ClippedAdam step), written out here so that it runs on any device, is repeated a fixed number of
times at a fixed batch size. The timed steps come in chunks, and the median chunk gives the step
time (so a burst of load from other jobs hits one chunk, not the figure). Each N runs in a fresh subprocess, so that its peak
memory (``ru_maxrss``, and ``torch.cuda.max_memory_allocated`` on CUDA) is that size's alone.
A step's cost should not depend on N (the plate subsamples; only the data's memory grows).
Prints one JSON line ending with ``"ratio": pairs/s at the largest N / pairs/s at the smallest``
(the aim: about 1.0).

    python experiments/benchmarks/scaling.py [--sizes 4000 40000 400000] [--batch-size 256]
                                             [--steps 300] [--device cpu] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import pyro
import torch
from pyro.optim.clipped_adam import ClippedAdam

from pyro_vrm.config import ModelConfig, TrainConfig
from pyro_vrm.features import PreferenceFeatures
from pyro_vrm.train import VRMLoss, VRMObjective, make_elbo, minibatches, supervision_setup
from pyro_vrm.vrm import VRM
from timing import device_name, synchronizer

NUM_ASPECTS = 4
CHUNKS = 10


def random_features(num_pairs: int, hidden_size: int, device: torch.device, seed: int = 0) -> PreferenceFeatures:
    """N pairs of standard-normal hidden states (N, H) and aspect scores (N, K), on ``device``."""
    g = torch.Generator().manual_seed(seed)
    states = [torch.randn(num_pairs, hidden_size, generator=g).to(device) for _ in range(3)]
    scores = [torch.randn(num_pairs, NUM_ASPECTS, generator=g).to(device) for _ in range(2)]
    return PreferenceFeatures(*states, chosen_scores=scores[0], rejected_scores=scores[1])


def one_size(num_pairs: int, hidden_size: int, batch_size: int, steps: int, device: torch.device) -> dict:
    """Train ``steps`` timed steps (after a tenth as many untimed) on N random pairs; figures of this N."""
    train = random_features(num_pairs, hidden_size, device)
    cfg = TrainConfig(batch_size=batch_size, steps=steps)
    pyro.set_rng_seed(cfg.seed)
    pyro.clear_param_store()
    vrm = VRM(ModelConfig(), hidden_size, NUM_ASPECTS).to(device)
    _, targets = supervision_setup(train, cfg)
    loss = VRMLoss(vrm, VRMObjective(make_elbo(cfg), cfg.lambda_sup, cfg.sup_loss))
    optimizer = ClippedAdam(vrm.parameters(), lr=cfg.lr, lrd=cfg.lr_decay ** (1 / cfg.steps), clip_norm=cfg.clip_norm)
    warmup, chunk = max(1, steps // 10), max(1, steps // CHUNKS)
    batches = minibatches(num_pairs, batch_size, warmup + chunk * CHUNKS, cfg.seed)

    def step():
        loss(train.batch(next(batches).to(device), targets), num_pairs).backward()
        optimizer.step()
        optimizer.zero_grad()

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
    figures = {"pairs": num_pairs, "step_ms": round(1e3 * seconds, 3),
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
    parser.add_argument("--one-size", action="store_true", help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    if args.one_size:
        with pyro.validation_enabled(False):
            figures = one_size(args.sizes[0], args.hidden_size, args.batch_size, args.steps, device)
        print(json.dumps(figures))
        return figures
    common = ["--hidden-size", str(args.hidden_size), "--batch-size", str(args.batch_size),
              "--steps", str(args.steps), "--device", args.device, "--threads", str(args.threads)]
    sizes = []
    for n in sorted(args.sizes):
        child = subprocess.run([sys.executable, __file__, "--one-size", "--sizes", str(n), *common],
                               stdout=subprocess.PIPE, text=True, check=True)
        sizes.append(json.loads(child.stdout.splitlines()[-1]))
    result = {"benchmark": "scaling", "device": device_name(device), "threads": args.threads,
              "validation": False, "hidden_size": args.hidden_size, "batch_size": args.batch_size,
              "steps": args.steps, "sizes": sizes,
              "ratio": round(sizes[-1]["pairs_per_s"] / sizes[0]["pairs_per_s"], 3)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
