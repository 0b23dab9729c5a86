r"""The VRM training objective (DESIGN.md sections 3 and 3b), per pair:

    loss = ( -ELBO_beta + lambda * sum_n L_sup(t_n, m_n) ) / N
    ELBO_beta = E_q[log p(y, a | w, z)] - beta * KL(q || p)

The ELBO comes from ``TraceMeanField_ELBO`` (closed-form KLs) or ``Trace_ELBO``, scaled to the
full data by the plate's subsampling; beta (``kl_weight``) weights every KL term, local and
global, through :class:`KLWeight` on the latent sites of model and guide (beta = 1 is the
paper's ELBO, bit for bit); the aspect likelihood is in E_q[log p] when aspects are observed;
the supervision term is read off the Dirichlet parameters of the same guide run the ELBO used.
As in Pyro's ``examples/svi_torch.py``, the objective is a loss module (:class:`VRMLoss`) that a
torch optimizer steps (:mod:`pyro_vrm.loop`).

With ``jit``, the loss module is compiled by ``torch.jit.trace`` on its first minibatch, as Pyro's
``JitTraceMeanField_ELBO`` compiles an ELBO. Pyro's JIT ELBOs themselves do not apply: they pass
the parameters of Pyro's global param store into the trace, and parameters that belong to their
modules would become constants, which ``torch.jit.trace`` refuses for tensors that require
gradients. Tracing the module makes its parameters the graph's inputs instead.
"""

from __future__ import annotations

import warnings

import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from pyro.util import get_rng_state, set_rng_state
from torch import nn

from .config import TrainConfig
from .features import PairBatch
from .model import SITES
from .posterior import expected_log_likelihood, kl_terms, reward_posterior
from .supervision import supervision_loss
from .vrm import VRM

__all__ = ["KLWeight", "make_elbo", "VRMObjective", "VRMLoss", "step_metrics"]


class KLWeight(Messenger):
    """Scales the log-density of every latent sample site by ``beta``, in the model and in the
    guide alike. Under ``TraceMeanField_ELBO`` each closed-form KL is scaled by the guide site's
    scale, and under ``Trace_ELBO`` log p - log q of every latent is, so the ELBO becomes
    E_q[log p(observed | latents)] - beta * KL. Observed sites keep their scale.

    Examples:
        >>> import pyro, pyro.distributions as dist
        >>> def f():
        ...     pyro.sample("latent", dist.Normal(0.0, 1.0))
        ...     pyro.sample("observed", dist.Normal(0.0, 1.0), obs=torch.tensor(0.0))
        >>> trace = poutine.trace(KLWeight(0.1)(f)).get_trace()
        >>> trace.nodes["latent"]["scale"], trace.nodes["observed"]["scale"]
        (0.1, 1.0)
    """

    def __init__(self, beta: float):
        super().__init__()
        if not beta > 0:
            raise ValueError(f"the KL weight must be positive, got {beta}")
        self.beta = beta

    def _process_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and not msg["is_observed"] and not site_is_subsample(msg):
            msg["scale"] = self.beta * msg["scale"]


class _Traceable:
    """An ELBO whose ``differentiable_loss`` keeps its value under ``torch.jit.trace``.

    ``Trace_ELBO.differentiable_loss`` returns ``loss + (surrogate - surrogate.item())``, and a
    trace freezes the ``item()`` as a constant: the gradient stays right, the value does not. When
    every latent of the guide is reparameterized, as all of VRM's are, the surrogate loss equals
    the loss, so it is returned alone, as Pyro's ``JitTraceMeanField_ELBO`` does.
    """

    def differentiable_loss(self, model, guide, *args, **kwargs):
        loss = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            for site in guide_trace.nodes.values():
                if site["type"] == "sample" and not site["is_observed"] and not site["fn"].has_rsample:
                    raise ValueError(f"--jit needs a reparameterized guide; site {site['name']!r} is not")
            _, surrogate = self._differentiable_loss_particle(model_trace, guide_trace)
            loss = loss + surrogate / self.num_particles
        return loss


class _TraceableMeanFieldELBO(_Traceable, TraceMeanField_ELBO):
    pass


class _TraceableTraceELBO(_Traceable, Trace_ELBO):
    pass


def make_elbo(config: TrainConfig):
    """The ELBO estimator of ``config.elbo``, with ``config.num_particles`` particles; one whose
    value survives ``torch.jit.trace`` with ``config.jit``."""
    if config.elbo == "meanfield":
        cls = _TraceableMeanFieldELBO if config.jit else TraceMeanField_ELBO
    else:
        cls = _TraceableTraceELBO if config.jit else Trace_ELBO
    return cls(num_particles=config.num_particles, vectorize_particles=config.num_particles > 1,
               max_plate_nesting=1)


class VRMObjective:
    """(-ELBO_beta + lambda * L_sup) / N for a minibatch, called as ``pyro.infer.SVI`` calls a loss:
    ``objective(model, guide, batch, num_pairs=N, **model_kwargs)``.

    After each call, ``terms`` holds the step's loss and supervision term (for metrics).
    """

    def __init__(self, elbo, lambda_sup: float, sup_loss: str, kl_weight: float = 1.0):
        self.elbo, self.lambda_sup, self.sup_loss, self.kl_weight = elbo, lambda_sup, sup_loss, kl_weight
        self.terms: dict = {}

    def __call__(self, model, guide, batch: PairBatch, num_pairs: int, **kwargs) -> torch.Tensor:
        if self.kl_weight != 1:
            model, guide = KLWeight(self.kl_weight)(model), KLWeight(self.kl_weight)(guide)
        supervised = self.lambda_sup > 0 and batch.target is not None
        if supervised:
            guide = poutine.trace(guide)  # lets the supervision term reuse the ELBO's guide run
        elbo_loss = self.elbo.differentiable_loss(model, guide, batch, num_pairs=num_pairs, **kwargs)
        sup = batch.prompt_state.new_zeros(())
        if supervised:
            q_w = guide.trace.nodes[SITES["weights"]]["fn"]
            sup = supervision_loss(self.sup_loss, batch.target, q_w.concentration).mean()
        loss = elbo_loss / num_pairs + self.lambda_sup * sup
        self.terms = {"loss": loss.detach(), "sup": sup.detach()}
        return loss


class VRMLoss(nn.Module):
    """The VRM objective as a module: ``forward(batch, num_pairs)`` is the loss of
    :class:`VRMObjective` with every pair's preference observed as y = 1 (chosen wins) and, with
    ``aspects`` ((N, K) chosen and rejected tables), the batch's aspect scores observed too.

    With ``jit``, ``forward`` runs a ``torch.jit.trace`` of the objective, compiled on the first
    batch of each shape: the same loss and gradients, and the same draws from the same random
    state, with less Python per step. The objective's ELBO must then be one of
    ``make_elbo(config)`` with ``config.jit`` set.
    """

    def __init__(self, vrm: VRM, objective: VRMObjective,
                 aspects: tuple[torch.Tensor, torch.Tensor] | None = None, jit: bool = False):
        super().__init__()
        self.vrm, self.objective, self.aspects, self.jit = vrm, objective, aspects, jit
        if jit and not isinstance(objective.elbo, _Traceable):
            raise ValueError("VRMLoss(jit=True) needs the ELBO of make_elbo(config) with config.jit")
        self._compiled = {}  # (shapes, num_pairs) -> traced objective; a dict, so not a submodule

    def batch_aspects(self, batch: PairBatch) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The observed aspect scores of the batch's pairs, (B, K) each, or None."""
        if self.aspects is None:
            return None
        index = batch.index.cpu()
        return tuple(a[index].to(batch.index.device) for a in self.aspects)

    def forward(self, batch: PairBatch, num_pairs: int) -> torch.Tensor:
        if self.jit:
            return self._traced(batch, num_pairs)
        preferences = torch.ones(len(batch.index), device=batch.index.device)
        return self.objective(self.vrm.model, self.vrm.guide, batch, num_pairs=num_pairs,
                              preferences=preferences, aspects=self.batch_aspects(batch))

    def _traced(self, batch: PairBatch, num_pairs: int) -> torch.Tensor:
        inputs = tuple(t for t in batch if t is not None)
        key = (tuple(t.shape for t in inputs), batch.target is not None, num_pairs)
        if key not in self._compiled:
            flat, rng = _FlatLoss(self, num_pairs, batch.target is not None), get_rng_state()
            with warnings.catch_warnings(), pyro.validation_enabled(False):
                # the tracer's notes on shapes read as Python ints (static here: one graph per
                # shape) and torch's notice that torch.jit is deprecated in favour of torch.compile
                warnings.simplefilter("ignore")
                self._compiled[key] = torch.jit.trace(flat, inputs, check_trace=False)
            set_rng_state(rng)  # tracing ran the objective once: its draws are not the step's
        # Unoptimized: the profiling executor would re-specialize the graph after its first runs and
        # differentiate it by its own formulas, so that a resumed run would round otherwise than an
        # uninterrupted one. The time saved is the Python's, which this keeps.
        with torch.jit.optimized_execution(False):
            loss, sup = self._compiled[key](*inputs)
        self.objective.terms = {"loss": loss.detach(), "sup": sup.detach()}
        return loss


class _FlatLoss(nn.Module):
    """VRMLoss on the batch's tensors as positional arguments, returning (loss, supervision term):
    the form ``torch.jit.trace`` compiles (it takes tensors, and a named tuple would come back as a
    plain one)."""

    def __init__(self, loss: VRMLoss, num_pairs: int, has_target: bool):
        super().__init__()
        self.loss, self.num_pairs, self.has_target = loss, num_pairs, has_target

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = PairBatch(*tensors) if self.has_target else PairBatch(*tensors, target=None)
        preferences = torch.ones(len(batch.index), device=batch.index.device)
        loss = self.loss.objective(self.loss.vrm.model, self.loss.vrm.guide, batch, num_pairs=self.num_pairs,
                                   preferences=preferences, aspects=self.loss.batch_aspects(batch))
        return loss, self.loss.objective.terms["sup"]


@torch.no_grad()
def step_metrics(loss: VRMLoss, batch: PairBatch, num_pairs: int) -> dict:
    """What a logged step records, per pair: the step's loss; the ELBO at beta = 1 (the true
    ELBO, whatever beta trains) with its expected log-likelihood and KL terms, estimated on the
    step's minibatch; the supervision term; and accuracy, margin and mean posterior-mean reward.
    Its Monte Carlo draws leave the random number generators as they were, so that how often a
    run logs does not change the fit."""
    rng = get_rng_state()
    try:
        return _step_metrics(loss, batch, num_pairs)
    finally:
        set_rng_state(rng)


def _step_metrics(loss: VRMLoss, batch: PairBatch, num_pairs: int) -> dict:
    vrm, terms = loss.vrm, loss.objective.terms
    own = batch._replace(index=torch.arange(len(batch.index), device=batch.index.device))
    kl = kl_terms(vrm, own, aspects=loss.batch_aspects(batch))
    log_lik = expected_log_likelihood(vrm, own, loss.batch_aspects(batch), num_particles=1).mean()
    kl_per_pair = kl.total(num_pairs) / num_pairs
    mean_c, _ = reward_posterior(vrm, batch.prompt_state, batch.chosen_state, num_samples=32)
    mean_r, _ = reward_posterior(vrm, batch.prompt_state, batch.rejected_state, num_samples=32)
    margin = mean_c - mean_r
    return {
        "loss": float(terms["loss"]), "elbo": float(log_lik - kl_per_pair), "expected_log_lik": float(log_lik),
        "kl_w": float(kl.weights.mean()), "kl_z": float((kl.chosen + kl.rejected).mean()),
        "kl_global": float(kl.global_kl), "kl_weight": loss.objective.kl_weight, "sup_loss": float(terms["sup"]),
        "accuracy": float((margin > 0).float().mean()), "margin": float(margin.mean()),
        "mean_reward": float(torch.cat([mean_c, mean_r]).mean()),
    }
