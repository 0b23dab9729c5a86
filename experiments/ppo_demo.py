"""The PPO demonstration with each reward model: a VRM (the recommended preset) and the
Bradley-Terry RM, each fitted on simulated-text through MiniLM, then `pyro-vrm ppo` (the tiny
offline policy, 200 steps of 32 rollouts) against it. For each: the reward and the filler rate of
256 fresh rollouts on held-out prompts, at the start and at the end, the KL to the reference, and
the gold reward of those rollouts (the simulator's true reward of the text, which no reward model
sees).

    python experiments/ppo_demo.py [--models vrm,rm] [--steps 200] [--beta 1.0]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path

from common import LABELS, MODELS, show, write_results
from pyro_vrm.cli import main as pyro_vrm

FIGURES = ("reward", "filler_rate", "gold", "kl", "completion_words")


def run(argv: list[str]) -> dict:
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert pyro_vrm(argv) == 0, argv
    return json.loads(printed.getvalue())


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vrm,rm", help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--steps", type=int, default=None, help="PPO steps (default: pyro-vrm ppo's)")
    parser.add_argument("--beta", type=float, default=None, help="KL penalty (default: pyro-vrm ppo's)")
    parser.add_argument("--reward-steps", type=int, default=None, help="reward model training steps")
    parser.add_argument("--out", type=Path, default=Path("experiments/out/ppo_demo"))
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="further pyro-vrm ppo flags")
    args = parser.parse_args(argv)
    results, rows = {"data": "simulated-text", "models": {}}, []
    for name in args.models.split(","):
        kind, preset = MODELS[name]
        reward = args.out / f"{name}-reward"
        train = ["train", "--data", "simulated-text", "--model", kind, "--preset", preset, "--out", str(reward),
                 "--quiet", *(["--steps", str(args.reward_steps)] if args.reward_steps else [])]
        fitted = run(train)
        ppo = ["ppo", "--reward", str(reward), "--out", str(args.out / f"{name}-ppo"), "--quiet",
               *(["--steps", str(args.steps)] if args.steps else []),
               *(["--beta", str(args.beta)] if args.beta is not None else []), *args.extra]
        summary = run(ppo)
        results["models"][name] = {"reward_model": {k: fitted.get(k) for k in ("test_accuracy", "shifted_accuracy")},
                                   "ppo": summary}
        rows.append([LABELS[name], *(f"{summary[f'{k}_start']:.3g} -> {summary[f'{k}_end']:.3g}" for k in FIGURES),
                     f"{summary['rise_in_se']:.1f}"])
    show(results, ["reward model", "reward", "filler rate", "gold reward", "KL to the reference", "words",
                 "reward rise in start se"], rows)
    args.out.mkdir(parents=True, exist_ok=True)
    write_results(args.out, results)
    return results


if __name__ == "__main__":
    main()
