"""One VRM training step against one Bradley-Terry reward-model step on the same batch.

``--mode frozen``: both read the same batch of frozen backbone features
(B pairs of hidden states (B, H), with K = 4 aspect scores); both heads have the same MLP width
and depth and the same optimizer (ClippedAdam, the training loop's). The VRM step is the
loop's: ``VRMLoss`` under ``--preset`` (``tempered``: fixed priors, closed-form KLs
weighted by 0.01, the aspect scores observed with a learned sigma_a, no supervision term;
``paper``: KL weight 1, lambda 0.1, no aspect likelihood), backward, and an optimizer step over
``vrm.parameters()``; the RM step is ``RewardHead`` on chosen and rejected, the Bradley-Terry
loss -logsigmoid(r_chosen - r_rejected) averaged over pairs (as ``fit_reward_model``), backward
and a step. Pyro's validation is off. Steps alternate in rounds (median of each); on CUDA
the clock is read after a synchronize. Also timed, not in the ratio: ``vrm_by_hand``, the same
VRM step with the loss written in plain torch (svi_overhead.py's, checked equal to Pyro's there),
which splits the gap into Pyro's overhead and VRM's extra work. Prints one JSON line ending with
``"ratio": VRM / RM``.

``--mode lora``: end to end, each model with its own copy of the backbone carrying LoRA adapters
(``pyro_vrm.add_lora``, gradient checkpointing on), on the same minibatches of text
(HH-RLHF pairs from ../shared/data when present, else simulated-text): the step runs the
backbone forward and backward for the batch's states (``TextPairs.batch``), then the same head
and loss as above, and steps the head and the adapters. (The HH-RLHF pairs carry no aspect
scores, so there the tempered objective observes none, as ``fit_vrm`` would.)

The aim: VRM <= 1.05x RM on a GPU.

    python experiments/benchmarks/step_vs_rm.py [--mode frozen] [--hidden-size 384] [--batch-size 256]
                                                [--repeats 200] [--device cuda] [--threads 1]
                                                [--preset tempered|paper]
    python experiments/benchmarks/step_vs_rm.py --mode lora [--backbone minilm] [--batch-size 8]
                                                [--max-length 128] [--repeats 20]

``--hidden-size`` 384 is MiniLM's, 2560 Qwen3-4B's.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import torch
from pyro.optim.clipped_adam import ClippedAdam
from torch.nn.functional import logsigmoid

from pyro_vrm import VRM, ModelConfig, PairBatch, RewardHead, SimulationConfig, TrainConfig, simulate
from svi_overhead import torch_loss
from timing import device_name, time_interleaved
from training import Recipe, add_preset_argument, objective_fields, recipe


@dataclass
class Steps:
    """The two timed steps, each returning its (detached) loss, and what they update.
    ``vrm_by_hand``, where given, is the VRM step with the loss written in plain torch (timed too,
    to tell Pyro's share of the gap from the extra work VRM does)."""

    vrm: Callable[[], torch.Tensor]
    rm: Callable[[], torch.Tensor]
    vrm_model: VRM
    reward_head: RewardHead
    vrm_by_hand: Callable[[], torch.Tensor] | None = None
    backbones: tuple | None = None  # lora mode: the VRM's and the RM's LoRA backbones
    recipe: Recipe | None = None  # the VRM's objective, as fit_vrm builds it for the training table


def bradley_terry(head: RewardHead, batch: PairBatch) -> torch.Tensor:
    """The RM's training loss on ``batch``: mean over pairs of -logsigmoid(r_chosen - r_rejected)."""
    r_chosen, r_rejected = head(batch.prompt_state, batch.chosen_state), head(batch.prompt_state, batch.rejected_state)
    return -logsigmoid(r_chosen - r_rejected).mean()


def simulated_batch(hidden_size: int, batch_size: int, device: torch.device, preset_name: str = "tempered",
                    model_config: ModelConfig = ModelConfig(), seed: int = 0) -> tuple[PairBatch, int, Recipe]:
    """(batch of ``batch_size`` simulated pairs with supervision targets, on ``device``; N; the
    recipe of ``preset_name`` for the training table, whose aspect tables stay on the CPU as in
    ``fit_vrm``)."""
    train = simulate(SimulationConfig(num_prompts=max(batch_size, 2), hidden_size=hidden_size, seed=seed)).train
    r = recipe(train, preset_name, model_config)
    batch = train.batch(torch.arange(min(batch_size, len(train))), r.targets)
    return PairBatch(*(t.to(device) for t in batch)), len(train), r


def frozen_steps(batch: PairBatch, num_pairs: int, r: Recipe, seed: int = 0) -> Steps:
    """A VRM step and a Bradley-Terry step on the frozen features of ``batch``."""
    cfg, model_config, device = r.train_config, r.model_config, batch.prompt_state.device
    hidden_size = batch.prompt_state.shape[-1]
    pyro.set_rng_seed(seed)
    vrm = VRM(model_config, hidden_size, model_config.num_objectives).to(device)
    head = RewardHead(hidden_size, model_config.width, model_config.depth).to(device)
    loss = r.loss(vrm)
    vrm_optim = ClippedAdam(vrm.parameters(), lr=cfg.lr, clip_norm=cfg.clip_norm)
    rm_optim = ClippedAdam(head.parameters(), lr=cfg.lr, clip_norm=cfg.clip_norm)

    def stepper(loss_fn, optim):
        def step() -> torch.Tensor:
            value = loss_fn()
            optim.zero_grad()
            value.backward()
            optim.step()
            return value.detach()
        return step

    return Steps(stepper(lambda: loss(batch, num_pairs), vrm_optim),
                 stepper(lambda: bradley_terry(head, batch), rm_optim), vrm, head,
                 stepper(lambda: torch_loss(vrm, batch, num_pairs, cfg, r.aspects), vrm_optim), recipe=r)


def lora_steps(backbone: str, batch_size: int, max_length: int, device: torch.device,
               preset_name: str = "tempered", model_config: ModelConfig = ModelConfig(), seed: int = 0) -> Steps:
    """A VRM step and a Bradley-Terry step end to end, each through its own LoRA backbone, on the
    same cycle of minibatches of ``batch_size`` text pairs."""
    from lora_step import backbone_named, load_pairs

    from pyro_vrm import TextPairs, add_lora, trainable_parameters

    pairs, _ = load_pairs(4 * batch_size)
    tables = [TextPairs.from_dataset(pairs, add_lora(backbone_named(backbone, max_length, str(device))))
              for _ in range(2)]
    r = recipe(tables[0], preset_name, model_config)
    cfg, model_config, hidden_size = r.train_config, r.model_config, tables[0].hidden_size
    pyro.set_rng_seed(seed)
    vrm = VRM(model_config, hidden_size, model_config.num_objectives).to(device)
    head = RewardHead(hidden_size, model_config.width, model_config.depth).to(device)
    vrm_loss = r.loss(vrm)
    batches = torch.arange(len(pairs)).split(batch_size)

    def stepper(loss_fn, module, table):
        parameters = [*module.parameters(), *trainable_parameters(table.backbone)]
        optimizer = ClippedAdam(parameters, lr=cfg.lr, clip_norm=cfg.clip_norm)
        count = [0]

        def step() -> torch.Tensor:
            index = batches[count[0] % len(batches)]
            count[0] += 1
            batch = table.batch(index, r.targets)
            batch = PairBatch(index.to(device), *(None if t is None else t.to(device) for t in batch[1:]))
            loss = loss_fn(batch, len(table))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            return loss.detach()
        return step

    return Steps(stepper(vrm_loss, vrm, tables[0]),
                 stepper(lambda batch, n: bradley_terry(head, batch), head, tables[1]), vrm, head,
                 backbones=tuple(t.backbone for t in tables), recipe=r)


MODES = ("frozen", "lora")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=MODES, default="frozen",
                        help="frozen: heads on cached backbone features; lora: end to end through LoRA adapters")
    parser.add_argument("--hidden-size", type=int, default=384, help="H (frozen): 384 is MiniLM's, 2560 Qwen3-4B's")
    parser.add_argument("--backbone", default="minilm", help="lora: minilm or tiny (a random-init 2-layer Qwen3)")
    parser.add_argument("--max-length", type=int, default=128, help="lora: tokens per prompt+response")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"pairs per step (default: {TrainConfig().batch_size} frozen, 8 lora)")
    parser.add_argument("--repeats", type=int, default=200)
    add_preset_argument(parser, ("tempered", "paper"))  # those the hand-written loss covers
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads: the heads' matmuls are small, and on a shared machine a second "
                             "OpenMP thread spins against other jobs (steps 10-100x slower)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model_config = ModelConfig()
    if args.batch_size is None:
        args.batch_size = TrainConfig().batch_size if args.mode == "frozen" else 8

    with pyro.validation_enabled(False):
        if args.mode == "frozen":
            batch, num_pairs, r = simulated_batch(args.hidden_size, args.batch_size, device, args.preset, model_config)
            steps, batch_size, hidden_size = frozen_steps(batch, num_pairs, r), len(batch.index), args.hidden_size
        else:
            steps = lora_steps(args.backbone, args.batch_size, args.max_length, device, args.preset, model_config)
            batch_size, hidden_size, r = args.batch_size, steps.vrm_model.hidden_size, steps.recipe
        timed = {"vrm": steps.vrm, "rm": steps.rm}
        if steps.vrm_by_hand is not None:
            timed["vrm_by_hand"] = steps.vrm_by_hand
        seconds = time_interleaved(timed, args.repeats, device=device)
    vrm_s, rm_s = seconds["vrm"], seconds["rm"]
    by_hand = {"vrm_by_hand_ms": round(1e3 * seconds["vrm_by_hand"], 3)} if "vrm_by_hand" in seconds else {}
    lora = {"backbone": args.backbone, "max_length": args.max_length} if args.mode == "lora" else {}
    result = {"benchmark": "step_vs_rm", "mode": args.mode, **lora, "preset": args.preset, **objective_fields(r),
              "device": device_name(device),
              "threads": torch.get_num_threads(), "validation": False, "hidden_size": hidden_size,
              "batch_size": batch_size, "width": model_config.width, "depth": model_config.depth,
              "vrm_ms": round(1e3 * vrm_s, 3), **by_hand, "rm_ms": round(1e3 * rm_s, 3),
              "ratio": round(vrm_s / rm_s, 3)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
