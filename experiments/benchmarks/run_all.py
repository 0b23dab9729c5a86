"""Run the standard benchmark commands, each in its own process, and write what each printed to
``experiments/out/benchmarks/results.json`` for ``experiments/report.py``.

    python experiments/benchmarks/run_all.py              # the CPU set (one thread), about 15 minutes on 2 cores
    python experiments/benchmarks/run_all.py --set gpu    # the GPU set, where CUDA is available
    python experiments/benchmarks/run_all.py --only svi_overhead

Each benchmark prints one JSON line (its last line) holding its measurement and its ratio against
a baseline timed in the same run; nothing here times anything itself.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from records import write_results  # noqa: E402

# (benchmark, arguments): the commands whose figures the benchmarks page shows
SETS = {
    "cpu": [
        ("svi_overhead", []),
        ("svi_overhead", ["--preset", "paper"]),
        ("svi_overhead", ["--no-jit"]),
        ("svi_overhead", ["--no-jit", "--no-validation"]),
        ("svi_overhead", ["--no-jit", "--preset", "paper"]),
        ("step_vs_rm", []),
        ("step_vs_rm", ["--hidden-size", "2560"]),
        ("step_vs_rm", ["--mode", "lora", "--backbone", "tiny", "--repeats", "40"]),
        ("scaling", []),
        ("featurize_throughput", []),
        ("lora_step", ["--backbone", "tiny", "--threads", "1"]),
    ],
    "gpu": [
        ("step_vs_rm", []),
        ("step_vs_rm", ["--hidden-size", "2560"]),
        ("step_vs_rm", ["--mode", "lora"]),
        ("scaling", []),
        ("featurize_throughput", ["--shape", "qwen3-0.6b"]),
        ("featurize_throughput", ["--shape", "qwen3-4b"]),
        ("lora_step", ["--backbone", "minilm"]),
    ],
}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=tuple(SETS), default="cpu")
    parser.add_argument("--only", default=None, help="run only this benchmark's commands")
    parser.add_argument("--out", type=Path, default=Path("experiments/out/benchmarks"))
    args = parser.parse_args(argv)
    env = {**os.environ, "OMP_NUM_THREADS": "1"} if args.set == "cpu" else dict(os.environ)
    entries = []
    for name, flags in SETS[args.set]:
        if args.only and name != args.only:
            continue
        command = [sys.executable, str(HERE / f"{name}.py"), *flags]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        shown = ("OMP_NUM_THREADS=1 " if args.set == "cpu" else "") + " ".join(
            ["python", f"experiments/benchmarks/{name}.py", *flags])
        entries.append({"benchmark": name, "command": shown, "result": result})
        print(json.dumps(entries[-1]), flush=True)
    if args.set == "cpu":
        torch.set_num_threads(1)  # the run's record names the threads the benchmarks ran with
    results = {"set": args.set, "entries": entries}
    write_results(args.out, results, name=f"results-{args.set}.json")
    return results


if __name__ == "__main__":
    main()
