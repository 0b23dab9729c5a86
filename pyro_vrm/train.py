"""Fitting: VRM by stochastic variational inference, and the controls it is measured against
(the Bradley-Terry RM, the RM with its weight decay tuned on validation pairs, the RM with a
temperature fitted on validation pairs, and the deterministic twin), all through the one loop
of :mod:`pyro_vrm.loop` on the same minibatches, optimizer and step budget.

Each fit seeds everything first, so a fit is a function of its data and configuration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, replace

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list

from .baseline import BradleyTerryLoss, RewardHead, fit_temperature
from .config import ModelConfig, TrainConfig
from .features import PreferenceFeatures, validation_folds
from .loop import Checkpointing, StopTraining, optimize, seed_everything
from .metrics import pairwise_accuracy
from .model import Priors
from .objective import VRMLoss, VRMObjective, make_elbo, step_metrics
from .runs import RunDir
from .supervision import Standardizer, supervision_target
from .twin import DeterministicTwin, TwinLoss
from .vrm import VRM

__all__ = ["supervision_setup", "resolve_model_config", "fit_vrm", "select_kl_weight", "select_on_validation",
           "KL_WEIGHT_GRID", "AUTO_GRIDS",
           "fit_reward_model", "fit_twin", "WEIGHT_DECAY_GRID",
           "fit_tuned_reward_model", "fit_temperature_scaled_reward_model", "validation_log_likelihood"]

# Weight decays the tuned RM chooses from, on validation pairs carved from the training pairs.
WEIGHT_DECAY_GRID = (0.0, 1e-4, 1e-3, 1e-2, 0.1)
# KL weights beta that ``--kl-weight auto`` chooses from, the same way; 1 is the model's own posterior.
KL_WEIGHT_GRID = (0.01, 0.03, 0.1, 0.3, 1.0)
# What ``"auto"`` chooses from, per TrainConfig field, for VRM, in this order; while one is chosen,
# another still "auto" is held at its value here (the model's own posterior, no decay).
AUTO_GRIDS = {"kl_weight": KL_WEIGHT_GRID, "weight_decay": WEIGHT_DECAY_GRID}
WHILE_ANOTHER_IS_CHOSEN = {"kl_weight": 1.0, "weight_decay": 0.0}


def supervision_setup(train: PreferenceFeatures, config: TrainConfig):
    """(standardizer, targets (N, K)) from the training scores, or (None, None) without scores."""
    if train.chosen_scores is None:
        return None, None
    standardizer = Standardizer.fit(train.chosen_scores, train.rejected_scores)
    return standardizer, supervision_target(standardizer(train.chosen_scores), config.sup_temperature)


def resolve_model_config(train: PreferenceFeatures, model_config: ModelConfig) -> ModelConfig:
    """``model_config`` with what the data decide filled in: K from the aspect scores, and
    whether aspects are observed (by default, when the data carry them)."""
    observe = model_config.observe_aspects
    if observe is None:
        observe = train.chosen_scores is not None and model_config.decoder == "linear"
    if observe and train.chosen_scores is None:
        raise ValueError("--observe-aspects needs data with aspect scores")
    return replace(model_config, observe_aspects=observe,
                   num_objectives=train.num_aspects or model_config.num_objectives)


def _checkpointing(run: RunDir | None, config: dict, module, extra: dict | None, resume: bool):
    return None if run is None else Checkpointing(run, config, module, extra, resume)


def fit_vrm(train: PreferenceFeatures, model_config: ModelConfig = ModelConfig(),
            train_config: TrainConfig = TrainConfig(), priors: Priors = Priors(),
            run: RunDir | None = None, progress: bool = True,
            monitor: Callable[[VRM], dict] | None = None,
            resume: bool = False) -> tuple[VRM, Standardizer | None]:
    """Fit VRM to ``train`` by SVI; write metrics and checkpoints to ``run`` if given, and with
    ``resume`` go on from ``run``'s checkpoint.

    Args:
        train: N training pairs: a table of cached states, or
            :class:`pyro_vrm.finetune.TextPairs`, whose backbone's LoRA adapters then train jointly.
        model_config: sizes, decoder and guide networks; ``observe_aspects=None`` observes the
            aspect scores when the data carry them.
        train_config: optimisation, KL weight beta and supervision lambda (defaults: the
            recommended preset; :func:`pyro_vrm.config.preset` gives the others). A KL weight or
            weight decay of ``"auto"`` is chosen first by :func:`select_on_validation` from
            :data:`AUTO_GRIDS` (both: beta first, the decay then at that beta); the checkpoint's
            config records the choice (``train.kl_weight``,
            ``train.weight_decay``) and the table (``kl_weight_selection``, ``weight_decay_selection``).
        priors: every prior of the model.
        run: a run folder for ``metrics.jsonl`` and checkpoints.
        progress: show a progress bar.
        monitor: ``monitor(vrm)``, called at every logged step, adds its own metrics to the
            record (e.g. the accuracy on held-out pairs, for learning curves).
        resume: go on from ``run``'s checkpoint, if it holds one.

    Returns:
        The fitted :class:`~pyro_vrm.vrm.VRM`, whose ``selections`` holds the validation tables of
        any ``"auto"`` setting, and the aspect standardizer (None without scores).

    Examples:
        >>> from pyro_vrm.simulation import SimulationConfig, simulate
        >>> data = simulate(SimulationConfig(num_prompts=40))
        >>> vrm, standardizer = fit_vrm(data.train, ModelConfig(width=16), TrainConfig(steps=5), progress=False)
        >>> vrm.config.observe_aspects, vrm.num_objectives
        (True, 4)
    """
    cfg, selections = train_config, {}
    for setting, grid in AUTO_GRIDS.items():
        if getattr(cfg, setting) == "auto":
            held = {other: value for other, value in WHILE_ANOTHER_IS_CHOSEN.items()
                    if other != setting and getattr(cfg, other) == "auto"}
            table = select_on_validation(train, model_config, replace(cfg, **held), priors, setting, grid)
            best = max(table, key=lambda row: (row["validation_log_lik"], row[setting]))
            cfg, steps = replace(cfg, **{setting: best[setting]}), best["steps"]
            selections[f"{setting}_selection"] = table
    if selections:  # run for the steps the last choice stopped at
        cfg = _stopped_early(cfg, steps)
    seed_everything(cfg.seed)
    model_config = resolve_model_config(train, model_config)
    vrm = VRM(model_config, train.hidden_size, model_config.num_objectives, priors)
    vrm.create_global_parameters()
    standardizer, targets = supervision_setup(train, cfg)
    aspects = (standardizer(train.chosen_scores), standardizer(train.rejected_scores)) \
        if model_config.observe_aspects else None
    loss = VRMLoss(vrm, VRMObjective(make_elbo(cfg), cfg.lambda_sup, cfg.sup_loss, cfg.kl_weight), aspects,
                   jit=cfg.jit)
    config = {"kind": "vrm", "model": asdict(model_config), "train": asdict(cfg), "priors": priors.to_dict(),
              "priors_repr": repr(priors), "hidden_size": train.hidden_size,
              "num_objectives": model_config.num_objectives}
    config.update(selections)
    extra = None if standardizer is None else standardizer.to_extra()
    optimize(loss, train, cfg, targets=targets, checkpointing=_checkpointing(run, config, vrm, extra, resume),
             metrics=lambda batch: step_metrics(loss, batch, len(train)), progress=progress,
             monitor=(lambda: monitor(vrm)) if monitor else None, desc="svi")
    vrm.selections = selections  # the validation tables of the settings chosen by "auto", if any
    return vrm, standardizer


def select_kl_weight(train: PreferenceFeatures, model_config: ModelConfig = ModelConfig(),
                     train_config: TrainConfig = TrainConfig(), priors: Priors = Priors(),
                     grid: tuple[float, ...] = KL_WEIGHT_GRID, validation_fraction: float = 0.2) -> list[dict]:
    """:func:`select_on_validation` of the KL weight beta. beta is a property of the data set:
    where aspect scores pin the features down a small beta costs nothing, where only the
    preferences speak it makes q overconfident (DESIGN.md 3c)."""
    return select_on_validation(train, model_config, train_config, priors, "kl_weight", grid, validation_fraction)


def select_on_validation(train: PreferenceFeatures, model_config: ModelConfig, train_config: TrainConfig,
                         priors: Priors, setting: str, grid: tuple[float, ...],
                         validation_fraction: float = 0.2) -> list[dict]:
    """One row per value of ``grid`` of the :class:`TrainConfig` field ``setting``: VRM fitted
    with it to the training pairs less a ``validation_fraction`` of their prompts, scored every
    ``validate_every`` steps on those held-out pairs by the mean log posterior predictive P(chosen wins)
    (``validation_log_lik``), and reported at its best step (``steps``, early stopping, as the
    tuned RM's) with the accuracy there and ``last_scored_step``, the last step scored (earlier
    than the last step where ``validation_patience`` ended the fit). With ``validation_folds``
    K > 1, each of K groups of the prompts is held out in turn and the scores are averaged step by
    step over the K fits, up to the last step every fold reached. A conditional prior is fitted by
    marginal likelihood and overfits a small data set as the RM does; its weight decay is chosen
    this way (DESIGN.md 3c).
    """
    from .evaluate import _log_loss, predict  # evaluation reads fits; fitting needs it only here

    if not isinstance(train, PreferenceFeatures):
        flag = f"--{setting.replace('_', '-')}"
        raise ValueError(f"{flag} auto needs cached hidden states (--finetune none): it scores validation fits "
                         f"through a frozen backbone's states; with --finetune lora give {flag} a number (a "
                         f"--finetune none fit of the same data records the one it chose in its summary)")
    folds = validation_folds(train, train_config.validation_folds, validation_fraction, train_config.seed)

    def score(vrm, validation) -> tuple[float, float]:
        predictions = predict(vrm, validation)
        return -_log_loss(predictions.prob_chosen), float(predictions.correct.mean())

    table = []
    for value in grid:
        config = replace(train_config, **{setting: value}, log_every=train_config.validate_every)
        scored = _scored_on_folds(
            lambda part, monitor: fit_vrm(part, model_config, config, priors, progress=False, monitor=monitor),
            score, folds, config)
        (log_lik, accuracy), step = max(scored, key=lambda pair: pair[0][0])
        table.append({setting: value, "steps": step, "validation_log_lik": log_lik, "validation_accuracy": accuracy,
                      "last_scored_step": scored[-1][1]})
    return table


def _scored_at_logged_steps(fit: Callable[[Callable], object],
                            score: Callable[[torch.nn.Module], tuple[float, float]],
                            config: TrainConfig) -> list[tuple[tuple[float, float], int]]:
    """Run ``fit(monitor)``, whose monitor scores the model at every logged step of ``config``
    (``log_every`` is the validation cadence here) and ends the fit once the log-likelihood has not
    improved for ``validation_patience`` scores (if set):
    [((validation log-likelihood, accuracy), step)] in order."""
    scores = []

    def monitor(model) -> dict:
        scores.append(score(model))
        best = max(range(len(scores)), key=lambda i: scores[i][0])
        if config.validation_patience and len(scores) - 1 - best >= config.validation_patience:
            raise StopTraining
        return {}

    fit(monitor)
    if PartialState().num_processes > 1:  # the monitor runs on the main process: all choose as it does
        scores = broadcast_object_list([scores])[0]
    return [(s, min(config.log_every * (i + 1), config.steps)) for i, s in enumerate(scores)]


def _scored_on_folds(fit: Callable[[PreferenceFeatures, Callable], object],
                     score: Callable[[torch.nn.Module, PreferenceFeatures], tuple[float, float]],
                     folds: list[tuple[PreferenceFeatures, PreferenceFeatures]],
                     config: TrainConfig) -> list[tuple[tuple[float, float], int]]:
    """:func:`_scored_at_logged_steps` of ``fit(fitting pairs, monitor)`` on each of ``folds``,
    scored by ``score(model, its validation pairs)``, then :func:`_averaged` over the folds."""
    return _averaged([_scored_at_logged_steps(lambda monitor, part=part: fit(part, monitor),
                                              lambda model, held=held: score(model, held), config)
                      for part, held in folds])


def _averaged(curves: list[list[tuple[tuple[float, float], int]]]) -> list[tuple[tuple[float, float], int]]:
    """The folds' scored curves averaged step by step, up to the last step every fold reached:
    a fold that patience stopped early caps the choice for all.

    Examples:
        >>> _averaged([[((-0.7, 0.5), 10), ((-0.6, 0.6), 20)], [((-0.5, 0.7), 10)]])
        [((-0.6, 0.6), 10)]
    """
    length = min(len(curve) for curve in curves)
    return [(tuple(sum(curve[i][0][j] for curve in curves) / len(curves) for j in range(2)), curves[0][i][1])
            for i in range(length)]


def _stopped_early(config: TrainConfig, steps: int, **values) -> TrainConfig:
    """``config`` with ``values``, run for the first ``steps`` of its learning-rate schedule."""
    return replace(config, **values, steps=steps, lr_decay=config.lr_decay ** (steps / config.steps),
                   checkpoint_every=min(config.checkpoint_every, steps))


def fit_reward_model(train: PreferenceFeatures, model_config: ModelConfig = ModelConfig(),
                     train_config: TrainConfig = TrainConfig(), run: RunDir | None = None,
                     progress: bool = True, monitor: Callable[[RewardHead], dict] | None = None,
                     resume: bool = False, temperature: float = 1.0) -> RewardHead:
    """Fit the Bradley-Terry head to ``train`` with the loop, minibatches and optimizer VRM uses
    (``train``: cached states, or TextPairs whose LoRA adapters train with the head); write
    metrics and checkpoints to ``run`` (``resume``: go on from its checkpoint). ``monitor(head)``
    adds its metrics to every logged record, as in :func:`fit_vrm`. The head is fitted at
    temperature 1; ``temperature`` (recorded in the checkpoint's config) divides its rewards
    afterwards."""
    cfg = _without_auto_decay(train_config)
    seed_everything(cfg.seed)
    head = RewardHead(train.hidden_size, model_config.width, model_config.depth)
    config = {"kind": "rm", "model": asdict(model_config), "train": asdict(cfg), "hidden_size": train.hidden_size}
    if temperature != 1.0:
        config["temperature"] = temperature
    loss = BradleyTerryLoss(head)
    optimize(loss, train, cfg, checkpointing=_checkpointing(run, config, head, None, resume),
             metrics=lambda batch: loss.metrics(), progress=progress,
             monitor=(lambda: monitor(head)) if monitor else None, desc="bradley-terry")
    head.temperature = float(temperature)
    return head


def fit_twin(train: PreferenceFeatures, model_config: ModelConfig = ModelConfig(),
             train_config: TrainConfig = TrainConfig(), priors: Priors = Priors(),
             run: RunDir | None = None, progress: bool = True,
             monitor: Callable[[DeterministicTwin], dict] | None = None,
             resume: bool = False) -> tuple[DeterministicTwin, Standardizer | None]:
    """Fit VRM's deterministic twin (:mod:`pyro_vrm.twin`) by maximum likelihood: the
    Bradley-Terry likelihood plus, when aspects are observed (as for VRM), their Normal
    likelihood with sd sigma_a (fixed by ``priors``, or learned as VRM learns it); no latent
    noise, no KL."""
    cfg = _without_auto_decay(train_config)
    seed_everything(cfg.seed)
    model_config = resolve_model_config(train, model_config)
    twin = DeterministicTwin(train.hidden_size, model_config.num_objectives, model_config.latent_dim,
                             model_config.width, model_config.depth, model_config.init_concentration,
                             learn_aspect_noise=model_config.observe_aspects and priors.aspect_noise is None,
                             learn_preference_scale=model_config.observe_aspects and model_config.preference_scale)
    standardizer, _ = supervision_setup(train, cfg)
    aspects = (standardizer(train.chosen_scores), standardizer(train.rejected_scores)) \
        if model_config.observe_aspects else None
    loss = TwinLoss(twin, priors, aspects)
    config = {"kind": "twin", "model": asdict(model_config), "train": asdict(cfg), "priors": priors.to_dict(),
              "hidden_size": train.hidden_size, "num_objectives": model_config.num_objectives}
    extra = None if standardizer is None else standardizer.to_extra()
    optimize(loss, train, cfg, checkpointing=_checkpointing(run, config, twin, extra, resume),
             metrics=lambda batch: loss.metrics(), progress=progress,
             monitor=(lambda: monitor(twin)) if monitor else None, desc="twin")
    return twin, standardizer


def _without_auto_decay(train_config: TrainConfig) -> TrainConfig:
    """A point fit's configuration: ``weight_decay="auto"`` chooses the decay of VRM's conditional
    prior, which the RM and the twin do not have; they read it as 0 (``fit_tuned_reward_model``
    chooses the RM's)."""
    return replace(train_config, weight_decay=0.0) if train_config.weight_decay == "auto" else train_config


@torch.no_grad()
def validation_log_likelihood(head, validation: PreferenceFeatures) -> tuple[float, float]:
    """(mean log P(chosen wins), accuracy with ties counted half) of a point-estimate reward head
    on ``validation``."""
    r_c = head(validation.prompt_state, validation.chosen_state)
    r_r = head(validation.prompt_state, validation.rejected_state)
    return float(torch.nn.functional.logsigmoid(r_c - r_r).mean()), pairwise_accuracy(r_c, r_r)


def fit_tuned_reward_model(train: PreferenceFeatures, model_config: ModelConfig = ModelConfig(),
                           train_config: TrainConfig = TrainConfig(), grid: tuple[float, ...] = WEIGHT_DECAY_GRID,
                           validation_fraction: float = 0.2, run: RunDir | None = None, progress: bool = True,
                           monitor: Callable[[RewardHead], dict] | None = None,
                           resume: bool = False) -> tuple[RewardHead, list[dict]]:
    """The RM with its weight decay and its number of steps (early stopping) chosen on
    validation pairs: each decay in ``grid`` is fitted to the training pairs less a
    ``validation_fraction`` of their prompts (or each of ``validation_folds`` groups in turn,
    averaged), scored every ``validate_every`` steps by the held-out
    log-likelihood of the preferences (accuracy breaks ties), and the best (decay, step) is
    refitted on all of ``train`` for that many steps, on the first steps of the same learning-rate
    schedule. Returns the refitted head and the selection table (one row per decay, at its best
    step)."""
    folds = validation_folds(train, train_config.validation_folds, validation_fraction, train_config.seed)
    table = []
    for decay in grid:
        config = replace(train_config, weight_decay=decay, log_every=train_config.validate_every)
        scored = _scored_on_folds(
            lambda part, monitor: fit_reward_model(part, model_config, config, progress=False, monitor=monitor),
            validation_log_likelihood, folds, config)
        (log_lik, accuracy), step = max(scored, key=lambda pair: pair[0])
        table.append({"weight_decay": decay, "steps": step, "validation_log_lik": log_lik,
                      "validation_accuracy": accuracy, "last_scored_step": scored[-1][1]})
    best = max(table, key=lambda row: (row["validation_log_lik"], row["validation_accuracy"]))
    chosen = _stopped_early(train_config, best["steps"], weight_decay=best["weight_decay"])
    head = fit_reward_model(train, model_config, chosen, run=run, progress=progress, monitor=monitor, resume=resume)
    return head, table


def fit_temperature_scaled_reward_model(train: PreferenceFeatures, model_config: ModelConfig = ModelConfig(),
                                        train_config: TrainConfig = TrainConfig(), validation_fraction: float = 0.2,
                                        run: RunDir | None = None, progress: bool = True,
                                        monitor: Callable[[RewardHead], dict] | None = None,
                                        resume: bool = False) -> tuple[RewardHead, dict]:
    """The RM with a temperature fitted on validation pairs (Guo et al. 2017), the cheap rival of
    a calibrated posterior: the head is fitted to the training pairs less a
    ``validation_fraction`` of their prompts (or to each of ``validation_folds`` groups' complement,
    their held-out margins pooled), T minimizes the log loss of the validation margins
    (:func:`pyro_vrm.baseline.fit_temperature`), and the head refitted on all of ``train`` with
    the same configuration divides its rewards by T. Returns the head and the selection
    (temperature, validation log-likelihood before and after)."""
    rewards = []  # (r_c, r_r) of each fold's held-out pairs under the head fitted without them
    for part, held in validation_folds(train, train_config.validation_folds, validation_fraction, train_config.seed):
        head = fit_reward_model(part, model_config, train_config, progress=False)
        with torch.no_grad():
            rewards.append((head(held.prompt_state, held.chosen_state), head(held.prompt_state, held.rejected_state)))
    r_c, r_r = (torch.cat(side) for side in zip(*rewards))
    log_lik = float(torch.nn.functional.logsigmoid(r_c - r_r).mean())
    temperature = fit_temperature(r_c - r_r)
    scaled_log_lik = float(torch.nn.functional.logsigmoid(r_c / temperature - r_r / temperature).mean())
    selection = {"temperature": temperature, "validation_log_lik": log_lik, "validation_log_lik_scaled": scaled_log_lik}
    head = fit_reward_model(train, model_config, train_config, run=run, progress=progress, monitor=monitor,
                            resume=resume, temperature=temperature)
    return head, selection
