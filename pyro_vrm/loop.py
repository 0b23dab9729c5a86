"""The optimisation loop that VRM and the Bradley-Terry baseline share.

One loop, on one process or on many: ``accelerate`` prepares the loss module (a
``DistributedDataParallel`` wrapper under ``accelerate launch``) and the optimizer; every
process draws the same global minibatch of ``batch_size`` pairs and computes the loss on its own
contiguous share, so that the averaged gradient is that of the global minibatch. The loss module
is any ``nn.Module`` whose ``forward(batch, num_pairs)`` returns the per-pair loss of its share:
Pyro's ELBO made into a module, in the manner of Pyro's ``examples/svi_torch.py``, or the
Bradley-Terry loss.

A checkpoint holds what a resumed run needs to go on exactly as an uninterrupted one would: the
parameters, the optimizer's state (with its decayed learning rate), the random number generators'
states and the step. SIGTERM ends a run after the step in flight, with a checkpoint; a loss that
turns NaN stops it with a message naming the step, the last good checkpoint kept.
"""

from __future__ import annotations

import math
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pyro
import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import AutocastKwargs
from pyro.optim.clipped_adam import ClippedAdam
from pyro.util import get_rng_state, set_rng_state
from torch import nn
from tqdm import tqdm

from .config import ConfigError, TrainConfig
from .features import PairBatch
from .runs import RunDir

__all__ = ["NonFiniteLoss", "TrainingInterrupted", "StopTraining", "Checkpointing", "process_state",
           "seed_everything", "minibatches", "optimize"]


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the kept checkpoint."""


class TrainingInterrupted(RuntimeError):
    """SIGTERM stopped the run after a step; the message names the step and the checkpoint."""


class StopTraining(Exception):
    """Raised by a monitor to end the fit after the step it measured, on every process: a
    validation fit whose score has stopped improving. ``measured``: the monitor's record of that
    step, logged as any other."""

    def __init__(self, measured: dict | None = None):
        super().__init__("the monitor ended the fit")
        self.measured = measured or {}


def process_state() -> PartialState:
    """This process's place among those ``accelerate launch`` started (one, without it): on the
    GPU where there is one, else on the CPU (gloo between processes)."""
    return PartialState(cpu=not torch.cuda.is_available())


def seed_everything(seed: int) -> None:
    """Seed Python, numpy, torch and Pyro: the first thing a fit does."""
    pyro.set_rng_seed(seed)


def minibatches(num_pairs: int, batch_size: int, steps: int, seed: int) -> Iterator[torch.Tensor]:
    """``steps`` index tensors (B,), each epoch a fresh permutation (seeded).

    Examples:
        >>> sorted(torch.cat(list(minibatches(6, 3, steps=2, seed=0))).tolist())  # one epoch: every pair once
        [0, 1, 2, 3, 4, 5]
    """
    g = torch.Generator().manual_seed(seed)
    batch_size = min(batch_size, num_pairs)
    order, position = torch.randperm(num_pairs, generator=g), 0
    for _ in range(steps):
        if position + batch_size > num_pairs:
            order, position = torch.randperm(num_pairs, generator=g), 0
        yield order[position:position + batch_size]
        position += batch_size


@dataclass
class Checkpointing:
    """Where and what to checkpoint: the run folder, the JSON config that rebuilds ``model``,
    the module whose state is saved (the VRM or the reward head, not the loss wrapper), extra
    tensors (e.g. the aspect standardizer), and whether to resume from the folder's
    checkpoint. The LoRA adapters of a backbone trained end to end are saved with the model."""

    run: RunDir
    config: dict
    model: nn.Module
    extra: dict | None = None
    resume: bool = False


class _WithEncoder(nn.Module):
    """A loss module plus the backbone model whose adapters train with it: held here so that the
    optimizer and DistributedDataParallel see the adapters' parameters."""

    def __init__(self, loss: nn.Module, encoder: nn.Module):
        super().__init__()
        self.loss, self.encoder = loss, encoder

    def forward(self, batch: PairBatch, num_pairs: int) -> torch.Tensor:
        return self.loss(batch, num_pairs)


def _parameter_groups(loss_module: nn.Module, weight_decay: float) -> list[dict]:
    """The trainable parameters with ``weight_decay``, but for those of a submodule with a
    ``decayed_parameters()`` method that leaves them out, which get none (a conditional prior's
    VRM decays its prior networks only: the guide's best is the exact posterior, nothing to shrink)."""
    exempt = set()
    for module in loss_module.modules():
        if hasattr(module, "decayed_parameters"):
            decayed = {id(p) for p in module.decayed_parameters()}
            exempt |= {id(p) for p in module.parameters() if id(p) not in decayed}
    parameters = [p for p in loss_module.parameters() if p.requires_grad]
    groups = [{"params": [p for p in parameters if id(p) not in exempt], "weight_decay": weight_decay},
              {"params": [p for p in parameters if id(p) in exempt], "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


def _training_state(step: int, optimizer: torch.optim.Optimizer, backbone) -> dict:
    state = {"step": step, "optimizer": optimizer.state_dict(), "rng": get_rng_state()}
    if backbone is not None:
        from .finetune import adapter_state_dict

        state["adapters"] = adapter_state_dict(backbone)
    return state


class _SigtermFlag:
    """Records a SIGTERM instead of dying of it, so the loop can checkpoint first."""

    def __enter__(self):
        self.received = False
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.received = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def optimize(loss_module: nn.Module, source, cfg: TrainConfig, *,
             metrics: Callable[[PairBatch], dict], targets: torch.Tensor | None = None,
             checkpointing: Checkpointing | None = None, progress: bool = True,
             monitor: Callable[[], dict] | None = None, desc: str = "train") -> None:
    """Minimise ``loss_module(batch, num_pairs)`` over minibatches of ``source`` with ClippedAdam
    (lr decaying geometrically to ``lr * lr_decay``, gradients clipped elementwise).

    ``source`` has ``len()`` and ``batch(index, targets) -> PairBatch``; when it has a
    ``backbone`` (:class:`pyro_vrm.finetune.TextPairs`), its batches are computed with gradient
    and the backbone's LoRA adapters train too, and are checkpointed. ``metrics(batch)``,
    called on the main process after every ``log_every``-th step, reads that step's loss terms
    from the loss module and returns the record to log, to which ``monitor()`` adds its own (with
    the random streams restored after it, so that measuring leaves the fit as it was); a monitor
    that raises :class:`StopTraining` ends the loop after that step, on every process.
    Returns when the loop ends; the parameters are updated in place.
    """
    # Full precision whatever mixed precision the process's shared accelerate state holds (a TRL
    # trainer run before sets bf16): Pyro's Dirichlet has no bf16 kernel, and a fit must not depend
    # on what ran before it.
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), kwargs_handlers=[AutocastKwargs(enabled=False)])
    world, rank = accelerator.num_processes, accelerator.process_index
    if cfg.batch_size % world:
        raise ConfigError(f"--batch-size {cfg.batch_size} must be divisible by the {world} processes")
    backbone = getattr(source, "backbone", None)
    if backbone is not None:
        loss_module = _WithEncoder(loss_module, backbone.model)
    if cfg.weight_decay == "auto":
        raise ConfigError("--weight-decay auto is resolved by a VRM fit; the RM's is --model rm-tuned")
    optimizer = ClippedAdam(_parameter_groups(loss_module, cfg.weight_decay), lr=cfg.lr,
                            lrd=cfg.lr_decay ** (1 / cfg.steps), clip_norm=cfg.clip_norm)
    ckpt = checkpointing
    start = _restore(ckpt, optimizer, backbone) if ckpt is not None and ckpt.resume else 0
    if rank > 0:  # the same initial parameters everywhere (DDP broadcasts rank 0's), other draws
        pyro.set_rng_seed(cfg.seed + 7919 * rank + start)
    module, optimizer = accelerator.prepare(loss_module, optimizer)
    main = accelerator.is_main_process
    if ckpt is not None and main:
        ckpt.run.start_metrics(keep_until=start if ckpt.resume else None)
    num_pairs, last_good = len(source), start or None

    def save(step: int) -> None:
        if ckpt is not None:
            accelerator.wait_for_everyone()
            if main:
                ckpt.run.save_checkpoint(ckpt.config, ckpt.model, ckpt.extra,
                                         **_training_state(step, optimizer, backbone))

    bar = tqdm(total=cfg.steps, initial=start, disable=not progress or not main, desc=desc, mininterval=1.0)
    with _SigtermFlag() as sigterm:
        for step, index in enumerate(minibatches(num_pairs, cfg.batch_size, cfg.steps, cfg.seed), 1):
            if step <= start:
                continue
            batch = _to(source.batch(index.chunk(world)[rank], targets), accelerator.device)
            loss = _loss(module, batch, num_pairs)
            if not math.isfinite(loss.item()):
                where = f"; the last good checkpoint (step {last_good}) is in {ckpt.run.checkpoint_dir}" \
                    if ckpt is not None and last_good else ""
                raise NonFiniteLoss(f"loss is {loss.item()} at step {step}{where}")
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            stopping = False
            if main and (step % cfg.log_every == 0 or step == cfg.steps):
                try:
                    measured = _isolated(monitor) if monitor else {}
                except StopTraining as stop:
                    measured, stopping = stop.measured, True
                record = {"step": step, **metrics(batch), **measured}
                bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['accuracy']:.3f}")
                if ckpt is not None:
                    ckpt.run.log_metrics(record)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                save(step)
                last_good = step
            bar.update()
            interrupted, stopping = _any(accelerator, sigterm.received, stopping)
            if (interrupted or stopping) and last_good != step:
                save(step)
            if interrupted:
                bar.close()
                where = f"; checkpoint in {ckpt.run.checkpoint_dir}, continue with --resume" if ckpt else ""
                raise TrainingInterrupted(f"SIGTERM received: stopped after step {step}{where}")
            if stopping:
                break
    bar.close()
    # Free the DistributedDataParallel wrapper now: left to the interpreter's exit, it is
    # destroyed after the process group, and gloo's threads abort the process. One process has no
    # wrapper, and free_memory's gc.collect would cost it a third of a second a fit.
    del module
    if world > 1:
        accelerator.free_memory()


def _isolated(monitor: Callable[[], dict]) -> dict:
    """``monitor()`` with the random streams restored after it: what a monitor draws (a posterior
    predictive's samples) must not change the fit it measures."""
    state = get_rng_state()  # Python, numpy and torch's CPU generator
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        return monitor()
    finally:
        set_rng_state(state)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def _loss(module: nn.Module, batch: PairBatch, num_pairs: int) -> torch.Tensor:
    try:
        return module(batch, num_pairs)
    except ValueError:  # Pyro's validation meets a NaN parameter or state before the loss does
        tensors = [*module.parameters(), *(t for t in batch if isinstance(t, torch.Tensor))]
        if all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point()):
            raise
        return torch.tensor(float("nan"))


def _to(batch: PairBatch, device: torch.device) -> PairBatch:
    return PairBatch(*(None if t is None else t.to(device) for t in batch))


def _any(accelerator: Accelerator, *flags: bool) -> tuple[bool, ...]:
    """Whether each of ``flags`` is set on any process (so that every process stops at the same
    step), in one collective."""
    if accelerator.num_processes == 1:
        return flags
    total = accelerator.reduce(torch.tensor([float(f) for f in flags], device=accelerator.device), "sum")
    return tuple(bool(t > 0) for t in total)


def _restore(ckpt: Checkpointing, optimizer: torch.optim.Optimizer, backbone) -> int:
    """Load the run's checkpoint into the model, the optimizer, the backbone's adapters (if it
    trains) and the RNGs; return its step (0, with nothing loaded, when there is no checkpoint)."""
    run = ckpt.run
    if not run.has_checkpoint():
        return 0
    differing = run.checkpoint_differs(ckpt.config)
    if differing:
        raise ConfigError(f"--resume: the checkpoint in {run.checkpoint_dir} was written with other "
                          f"settings ({', '.join(differing)}); resume with the same flags")
    state = run.load_checkpoint(ckpt.model)
    if "optimizer" not in state:
        raise ConfigError(f"--resume: the checkpoint in {run.checkpoint_dir} holds no optimizer state")
    optimizer.load_state_dict(state["optimizer"])
    if backbone is not None:
        from .finetune import load_adapter_state_dict

        load_adapter_state_dict(backbone, state["adapters"])
    set_rng_state(state["rng"])
    return state["step"]
