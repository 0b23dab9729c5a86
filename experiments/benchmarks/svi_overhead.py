"""pyro_vrm's training step against a hand-written torch step of exactly the same loss.

pyro_vrm's step is the loop's (``pyro_vrm/loop.py``): ``VRMLoss`` (Pyro's TraceMeanField_ELBO
made a differentiable loss, plus the supervision term) forward and backward, and a ClippedAdam
step. The hand-written step computes the same loss in plain torch (:func:`torch_loss`). Same
batch (256 simulated pairs), same modules, same closed-form KLs, same optimizer; CPU. The
objective is the fixed-prior model's (``--preset tempered``: KL weight 0.01, the batch's aspect
scores observed with sigma_a learned under its HalfNormal prior, no supervision term), or
``--preset paper`` (KL weight 1, lambda 0.1, no aspect likelihood). Before timing, the two
losses are checked equal on the same draws. Prints one JSON line ending with
``"ratio": pyro_vrm / torch``. pyro_vrm's step is training's: by default the loss module compiled
by ``torch.jit.trace`` on its first batch (compiled before timing), with ``--no-jit`` run eagerly.

``pyro.infer.SVI.step`` is not timed: it steps the parameters of Pyro's global param store,
which pyro_vrm's module-local parameters are not in; the torch-optimizer loop timed here is the
training loop.

    python experiments/benchmarks/svi_overhead.py [--batch-size 256] [--repeats 200] [--no-validation]
                                                  [--preset tempered|paper] [--no-jit]
"""

from __future__ import annotations

import argparse
import json

import pyro
import torch
from pyro.optim.clipped_adam import ClippedAdam
from torch.distributions import Dirichlet, HalfNormal, Normal, kl_divergence
from torch.nn.functional import logsigmoid

from pyro_vrm import VRM, SimulationConfig, TrainConfig, simulate, supervision_loss
from timing import time_interleaved
from training import add_preset_argument, objective_fields, recipe


def torch_loss(vrm: VRM, batch, num_pairs: int, train_config: TrainConfig,
               aspects: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """The loop's loss by hand, for a batch of B of N = ``num_pairs`` pairs:

        loss = -[ (N/B) sum_b (log p(y_b | w, z) + log p(a_b | z) - beta KL_b) + log p(sigma_a) ] / N
               + lambda * mean_b L_sup

    One reparameterized draw of w, z_c, z_r in the guide's order (so that with the same RNG
    state it sees the same draws as Pyro's TraceMeanField_ELBO), the preference log-likelihood,
    with ``aspects`` ((N, K) standardized chosen and rejected tables, indexed by the batch) the
    aspect log-likelihood Normal(s(z), sigma_a) summed over K for both responses, closed-form
    KLs times beta = ``kl_weight``, the plate's N/B, and a learned sigma_a's HalfNormal log prior
    once (not per pair, not scaled); the supervision term only where lambda > 0 and the batch
    carries targets, as ``VRMObjective`` computes it.
    """
    cfg, guide, decoder, priors = train_config, vrm.amortized_guide, vrm.decoder, vrm.priors
    B = len(batch.index)
    concentration = guide.weight_encoder(batch.prompt_state)
    loc, scale = guide.feature_encoder(batch.prompt_state.expand(2, -1, -1),
                                       torch.stack([batch.chosen_state, batch.rejected_state]))
    q_w, q_c, q_r = Dirichlet(concentration), Normal(loc[0], scale[0]), Normal(loc[1], scale[1])
    w, z_c, z_r = q_w.rsample(), q_c.rsample(), q_r.rsample()
    rewards, scores = decoder(w, torch.stack([z_c, z_r]))
    log_lik = logsigmoid(rewards[0] - rewards[1])
    global_log_prior = 0.0
    if aspects is not None:
        index = batch.index.cpu()
        chosen, rejected = (a[index].to(batch.index.device) for a in aspects)
        learned = priors.aspect_noise is None
        sigma = decoder.aspect_noise if learned else priors.aspect_noise
        log_lik = (log_lik + Normal(scores[0], sigma).log_prob(chosen).sum(-1)
                   + Normal(scores[1], sigma).log_prob(rejected).sum(-1))
        if learned:
            global_log_prior = HalfNormal(sigma.new_tensor(priors.aspect_noise_scale)).log_prob(sigma).sum()
    p_w = Dirichlet(priors.concentration_vector(vrm.num_objectives, concentration))
    p_z = Normal(torch.full_like(loc[0], priors.feature_loc), torch.full_like(loc[0], priors.feature_scale))
    kl = kl_divergence(q_w, p_w) + kl_divergence(q_c, p_z).sum(-1) + kl_divergence(q_r, p_z).sum(-1)
    elbo = (num_pairs / B) * (log_lik - cfg.kl_weight * kl).sum() + global_log_prior
    loss = -elbo / num_pairs
    if cfg.lambda_sup > 0 and batch.target is not None:
        loss = loss + cfg.lambda_sup * supervision_loss(cfg.sup_loss, batch.target, concentration).mean()
    return loss


def setup(batch_size: int, preset_name: str = "tempered", train_config: TrainConfig = TrainConfig(),
          seed: int = 0, num_prompts: int | None = None):
    """(VRM, its recipe (objective, aspect tables), a batch of ``batch_size`` simulated pairs
    with targets, N), as ``fit_vrm`` would build them under ``preset_name``, from ``num_prompts``
    simulated prompts (default ``batch_size``: two pairs each, a fifth of them held out)."""
    train = simulate(SimulationConfig(num_prompts=num_prompts or max(batch_size, 2))).train
    r = recipe(train, preset_name, train_config=train_config)
    pyro.set_rng_seed(seed)
    vrm = VRM(r.model_config, train.hidden_size, r.model_config.num_objectives)
    index = torch.arange(min(batch_size, len(train)))
    return vrm, r, train.batch(index, r.targets), len(train)


def run(batch_size: int, preset_name: str, repeats: int, jit: bool = False):
    """(median seconds of each step, the recipe, B): the loop's step (``jit``: compiled) and the
    hand-written one, after checking that their losses agree on the same draws."""
    vrm, r, batch, num_pairs = setup(batch_size, preset_name, TrainConfig(jit=jit))
    cfg, loss_module = r.train_config, r.loss(vrm)

    def by_hand() -> torch.Tensor:
        return torch_loss(vrm, batch, num_pairs, cfg, r.aspects)

    pyro.set_rng_seed(1)
    ours = loss_module(batch, num_pairs)
    pyro.set_rng_seed(1)
    theirs = by_hand()
    if not torch.allclose(ours, theirs, rtol=1e-5):
        raise AssertionError(f"the hand-written loss {float(theirs)} is not pyro_vrm's {float(ours)}")

    def optimizer_step(loss_fn):
        optim = ClippedAdam(vrm.parameters(), lr=cfg.lr, clip_norm=cfg.clip_norm)

        def step():
            loss = loss_fn()
            optim.zero_grad()
            loss.backward()
            optim.step()
        return step

    seconds = time_interleaved({"pyro_vrm": optimizer_step(lambda: loss_module(batch, num_pairs)),
                                "torch": optimizer_step(by_hand)}, repeats)
    return seconds, r, len(batch.index)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=TrainConfig().batch_size)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--validation", action=argparse.BooleanOptionalAction, default=True,
                        help="Pyro's distribution and shape checks (on by default in Pyro)")
    parser.add_argument("--jit", action=argparse.BooleanOptionalAction, default=TrainConfig().jit,
                        help="time the step compiled by torch.jit.trace, as training runs it by default")
    add_preset_argument(parser, ("tempered", "paper"))  # the fixed priors the hand-written loss covers
    args = parser.parse_args(argv)
    with pyro.validation_enabled(args.validation):
        seconds, r, batch_size = run(args.batch_size, args.preset, args.repeats, args.jit)
    ours_s, torch_s = seconds["pyro_vrm"], seconds["torch"]
    result = {"benchmark": "svi_overhead", "preset": args.preset, **objective_fields(r),
              "batch_size": batch_size, "device": "cpu", "threads": torch.get_num_threads(),
              "validation": args.validation, "jit": args.jit, "pyro_vrm_ms": round(1e3 * ours_s, 3),
              "torch_ms": round(1e3 * torch_s, 3), "ratio": round(ours_s / torch_s, 3)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
