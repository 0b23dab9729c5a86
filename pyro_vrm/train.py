r"""Fitting VRM by stochastic variational inference (DESIGN.md section 3).

The loss per step is the paper's Eq. 14 for the minibatch, divided by the data size N:

    ( -ELBO + lambda * sum_n L_sup(t_n, m_n) ) / N

with the ELBO from ``TraceMeanField_ELBO`` (closed-form KLs) or ``Trace_ELBO``, both scaled to
the full data by the plate's subsampling, and the supervision term read off the Dirichlet
parameters of the same guide run that the ELBO used. As in Pyro's ``examples/svi_torch.py``,
the ELBO is a differentiable loss on the VRM's modules (:class:`VRMLoss`), minimised by the
loop of :mod:`pyro_vrm.loop` with a torch optimizer, so that the same fit runs on one process
or data-parallel under ``accelerate launch``, and can be resumed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch import nn

from .config import ModelConfig, TrainConfig
from .features import PairBatch, PreferenceFeatures
from .loop import Checkpointing, NonFiniteLoss, TrainingInterrupted, minibatches, optimize, seed_everything
from .model import SITES, Priors
from .posterior import kl_estimate, reward_posterior
from .runs import RunDir
from .supervision import Standardizer, supervision_loss, supervision_target
from .vrm import VRM

__all__ = ["VRMObjective", "VRMLoss", "make_elbo", "fit_vrm", "build_vrm", "load_vrm",
           # re-exported from loop.py, where they live
           "NonFiniteLoss", "TrainingInterrupted", "minibatches", "seed_everything"]

DEFAULT_NUM_OBJECTIVES = 4  # UltraFeedback's aspects, when the data carries no scores


def make_elbo(config: TrainConfig):
    cls = TraceMeanField_ELBO if config.elbo == "meanfield" else Trace_ELBO
    return cls(num_particles=config.num_particles, vectorize_particles=config.num_particles > 1,
               max_plate_nesting=1)


class VRMObjective:
    """(-ELBO + lambda * L_sup) / N for a minibatch, called as ``pyro.infer.SVI`` calls a loss:
    ``objective(model, guide, batch, num_pairs=N, **model_kwargs)``.

    After each call, ``terms`` holds the guide's distributions of that step (for metrics).
    """

    def __init__(self, elbo, lambda_sup: float, sup_loss: str):
        self.elbo, self.lambda_sup, self.sup_loss = elbo, lambda_sup, sup_loss
        self.terms: dict = {}

    def __call__(self, model, guide, batch: PairBatch, num_pairs: int, **kwargs) -> torch.Tensor:
        traced_guide = poutine.trace(guide)  # lets the supervision term reuse the ELBO's guide run
        elbo_loss = self.elbo.differentiable_loss(model, traced_guide, batch, num_pairs=num_pairs, **kwargs)
        nodes = traced_guide.trace.nodes
        q_w = nodes[SITES["weights"]]["fn"]
        sup = batch.prompt_state.new_zeros(())
        if self.lambda_sup > 0 and batch.target is not None:
            sup = supervision_loss(self.sup_loss, batch.target, q_w.concentration).mean()
        self.terms = {"elbo_loss": elbo_loss.detach() / num_pairs, "sup": sup.detach(),
                      "q_w": q_w, "q_chosen": nodes[SITES["chosen"]]["fn"],
                      "q_rejected": nodes[SITES["rejected"]]["fn"]}
        return elbo_loss / num_pairs + self.lambda_sup * sup


class VRMLoss(nn.Module):
    """The VRM objective as a module: ``forward(batch, num_pairs)`` is the loss of
    :class:`VRMObjective` with every pair's preference observed as y = 1 (chosen wins) and, with
    ``aspects`` ((N, K) chosen and rejected tables), the batch's aspect scores observed too."""

    def __init__(self, vrm: VRM, objective: VRMObjective,
                 aspects: tuple[torch.Tensor, torch.Tensor] | None = None):
        super().__init__()
        self.vrm, self.objective, self.aspects = vrm, objective, aspects

    def forward(self, batch: PairBatch, num_pairs: int) -> torch.Tensor:
        kwargs = {}
        if self.aspects is not None:
            index = batch.index.cpu()
            kwargs["aspects"] = tuple(a[index].to(batch.index.device) for a in self.aspects)
        preferences = torch.ones(len(batch.index), device=batch.index.device)
        return self.objective(self.vrm.model, self.vrm.guide, batch, num_pairs=num_pairs,
                              preferences=preferences, **kwargs)


def supervision_setup(train: PreferenceFeatures, config: TrainConfig):
    """(standardizer, targets (N, K)) from the training scores, or (None, None) without scores."""
    if train.chosen_scores is None:
        return None, None
    standardizer = Standardizer.fit(train.chosen_scores, train.rejected_scores)
    return standardizer, supervision_target(standardizer(train.chosen_scores), config.sup_temperature)


@torch.no_grad()
def step_metrics(vrm: VRM, objective: VRMObjective, batch: PairBatch) -> dict:
    """Per-pair loss terms and accuracy of one minibatch (B pairs), from the step's guide run."""
    t, priors = objective.terms, vrm.priors
    particle_mean = lambda x: x.reshape(-1, len(batch.index)).mean(0)  # noqa: E731
    like = batch.prompt_state
    p_z = priors.semantic_features(vrm.config.latent_dim, like)
    kl_z = sum(particle_mean(kl_estimate(t[k], p_z, 1)).mean() for k in ("q_chosen", "q_rejected"))
    if priors.concentration_hyperprior is None:
        p_w = priors.objective_weights(priors.concentration_vector(vrm.num_objectives, like))
        kl_w = particle_mean(kl_estimate(t["q_w"], p_w, 1)).mean()
    else:
        kl_w = torch.tensor(float("nan"))
    mean_c, _ = reward_posterior(vrm, batch.prompt_state, batch.chosen_state, num_samples=32)
    mean_r, _ = reward_posterior(vrm, batch.prompt_state, batch.rejected_state, num_samples=32)
    margin = mean_c - mean_r
    return {
        "loss": float(t["elbo_loss"] + objective.lambda_sup * t["sup"]),
        "elbo": float(-t["elbo_loss"]),
        "expected_log_lik": float(-t["elbo_loss"] + kl_w + kl_z) if not kl_w.isnan() else None,
        "kl_w": float(kl_w), "kl_z": float(kl_z), "sup_loss": float(t["sup"]),
        "accuracy": float((margin > 0).float().mean()), "margin": float(margin.mean()),
        "mean_reward": float(torch.cat([mean_c, mean_r]).mean()),
    }


def fit_vrm(train: PreferenceFeatures, model_config: ModelConfig = ModelConfig(),
            train_config: TrainConfig = TrainConfig(), priors: Priors = Priors(),
            run: RunDir | None = None, progress: bool = True,
            monitor: Callable[[VRM], dict] | None = None,
            resume: bool = False) -> tuple[VRM, Standardizer | None]:
    """Fit VRM to ``train`` by SVI; write metrics and checkpoints to ``run`` if given, and with
    ``resume`` go on from ``run``'s checkpoint. ``train`` is a table of cached states, or
    :class:`pyro_vrm.finetune.TextPairs`, whose backbone's LoRA adapters then train jointly.

    ``monitor(vrm)``, called at every logged step, adds its own metrics to the record (e.g. the
    accuracy on held-out pairs, for learning curves)."""
    cfg = train_config
    seed_everything(cfg.seed)
    num_objectives = train.num_aspects or DEFAULT_NUM_OBJECTIVES
    vrm = VRM(model_config, train.hidden_size, num_objectives, priors)
    vrm.create_global_parameters()
    standardizer, targets = supervision_setup(train, cfg)
    if model_config.observe_aspects and standardizer is None:
        raise ValueError("--observe-aspects needs data with aspect scores")
    aspects = (standardizer(train.chosen_scores), standardizer(train.rejected_scores)) \
        if model_config.observe_aspects else None

    objective = VRMObjective(make_elbo(cfg), cfg.lambda_sup, cfg.sup_loss)
    checkpointing = None
    if run is not None:
        config = {"kind": "vrm", "model": asdict(model_config), "train": asdict(cfg),
                  "priors": asdict(priors), "priors_repr": repr(priors),
                  "hidden_size": train.hidden_size, "num_objectives": num_objectives}
        extra = {} if standardizer is None else {"score_mean": standardizer.mean, "score_sd": standardizer.sd}
        checkpointing = Checkpointing(run, config, vrm, extra, resume)
    optimize(VRMLoss(vrm, objective, aspects), train, cfg, targets=targets, checkpointing=checkpointing,
             metrics=lambda batch: step_metrics(vrm, objective, batch), progress=progress,
             monitor=(lambda: monitor(vrm)) if monitor else None, desc="svi")
    return vrm, standardizer


def build_vrm(config: dict) -> VRM:
    """A VRM with freshly initialised parameters from a checkpoint's config (model, priors, sizes),
    every parameter created, so that a saved state dict loads into it."""
    priors = Priors(**{k: tuple(map(_tuple, v)) if isinstance(v, list) else v
                       for k, v in config["priors"].items()})
    vrm = VRM(ModelConfig(**config["model"]), config["hidden_size"], config["num_objectives"], priors)
    vrm.create_global_parameters()
    return vrm


def load_vrm(run: RunDir) -> tuple[VRM, Standardizer | None]:
    """The VRM (and the aspect standardizer, if any) saved in ``run``'s checkpoint."""
    vrm = build_vrm(run.checkpoint_config())
    extra = run.load_checkpoint(vrm)["extra"]
    standardizer = Standardizer(extra["score_mean"], extra["score_sd"]) if "score_mean" in extra else None
    return vrm, standardizer


def _tuple(value):
    return tuple(value) if isinstance(value, list) else value
