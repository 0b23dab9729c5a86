"""pyro_vrm's training step against a hand-written torch step of exactly the same loss.

pyro_vrm's step is the loop's: ``VRMLoss`` (Pyro's TraceMeanField_ELBO made a differentiable
loss, plus the supervision term) forward and backward, and a ClippedAdam step. The hand-written
step computes the same loss in plain torch. Same batch (256 simulated pairs), same modules, same
closed-form KLs, same optimizer; CPU. Also timed, not in the ratio: ``pyro.infer.SVI.step`` with
the same loss and Pyro's per-parameter ClippedAdam, which pyro_vrm's loop replaced (its fits are
the same bit for bit). Prints one JSON line ending with ``"ratio": pyro_vrm / torch``.

    python experiments/benchmarks/svi_overhead.py [--batch-size 256] [--repeats 200] [--no-validation]
"""

from __future__ import annotations

import argparse
import json

import pyro
import torch
from pyro.infer import SVI
from pyro.optim import ClippedAdam
from pyro.optim.clipped_adam import ClippedAdam as TorchClippedAdam
from torch.distributions import Dirichlet, Normal, kl_divergence
from torch.nn.functional import logsigmoid

from pyro_vrm.config import ModelConfig, TrainConfig
from pyro_vrm.simulate import SimulationConfig, simulate
from pyro_vrm.supervision import Standardizer, supervision_loss, supervision_target
from pyro_vrm.train import VRMLoss, VRMObjective, make_elbo
from pyro_vrm.vrm import VRM
from timing import time_interleaved


def torch_loss(vrm: VRM, batch, num_pairs: int, lambda_sup: float, sup_loss: str) -> torch.Tensor:
    """(-ELBO + lambda * L_sup) / N by hand: one sample of each latent, closed-form KLs.

    Draws w, z_c, z_r in the guide's order, so with the same RNG state it sees the same samples
    as Pyro's TraceMeanField_ELBO.
    """
    guide, decoder, priors = vrm.amortized_guide, vrm.decoder, vrm.priors
    B = len(batch.index)
    concentration = guide.weight_encoder(batch.prompt_state)
    loc, scale = guide.feature_encoder(batch.prompt_state.expand(2, -1, -1),
                                       torch.stack([batch.chosen_state, batch.rejected_state]))
    q_w, q_c, q_r = Dirichlet(concentration), Normal(loc[0], scale[0]), Normal(loc[1], scale[1])
    w, z_c, z_r = q_w.rsample(), q_c.rsample(), q_r.rsample()
    rewards, _ = decoder(w, torch.stack([z_c, z_r]))
    log_lik = logsigmoid(rewards[0] - rewards[1])
    p_w = Dirichlet(priors.concentration_vector(vrm.num_objectives, concentration))
    p_z = Normal(torch.full_like(loc[0], priors.feature_loc), torch.full_like(loc[0], priors.feature_scale))
    kl = kl_divergence(q_w, p_w) + kl_divergence(q_c, p_z).sum(-1) + kl_divergence(q_r, p_z).sum(-1)
    elbo = (num_pairs / B) * (log_lik - kl).sum()
    sup = supervision_loss(sup_loss, batch.target, concentration).mean()
    return -elbo / num_pairs + lambda_sup * sup


def setup(batch_size: int, seed: int = 0):
    data = simulate(SimulationConfig(num_prompts=max(batch_size, 2)))
    train = data.train
    standardizer = Standardizer.fit(train.chosen_scores, train.rejected_scores)
    target = supervision_target(standardizer(train.chosen_scores))
    pyro.set_rng_seed(seed)
    pyro.clear_param_store()
    vrm = VRM(ModelConfig(), train.hidden_size, train.num_aspects)
    index = torch.arange(min(batch_size, len(train)))
    return vrm, train.batch(index, target), len(train)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--validation", action=argparse.BooleanOptionalAction, default=True,
                        help="Pyro's distribution and shape checks (on by default in Pyro)")
    args = parser.parse_args(argv)
    pyro.enable_validation(args.validation)
    cfg = TrainConfig()
    vrm, batch, num_pairs = setup(args.batch_size)
    ones = torch.ones(len(batch.index))

    objective = VRMObjective(make_elbo(cfg), cfg.lambda_sup, cfg.sup_loss)
    svi = SVI(vrm.model, vrm.guide, ClippedAdam({"lr": cfg.lr, "clip_norm": cfg.clip_norm}), loss=objective)
    svi.step(batch, num_pairs=num_pairs, preferences=ones)  # registers the parameters
    loss_module = VRMLoss(vrm, objective)

    def optimizer_step(loss_fn):
        optim = TorchClippedAdam(vrm.parameters(), lr=cfg.lr, clip_norm=cfg.clip_norm)

        def step():
            loss = loss_fn()
            optim.zero_grad()
            loss.backward()
            optim.step()
        return step

    seconds = time_interleaved({
        "pyro_vrm": optimizer_step(lambda: loss_module(batch, num_pairs)),
        "torch": optimizer_step(lambda: torch_loss(vrm, batch, num_pairs, cfg.lambda_sup, cfg.sup_loss)),
        "svi": lambda: svi.step(batch, num_pairs=num_pairs, preferences=ones),
    }, args.repeats)
    ours, torch_s = seconds["pyro_vrm"], seconds["torch"]
    result = {"benchmark": "svi_overhead", "batch_size": len(batch.index), "device": "cpu",
              "threads": torch.get_num_threads(), "validation": args.validation,
              "svi_ms": round(1e3 * seconds["svi"], 3), "pyro_vrm_ms": round(1e3 * ours, 3),
              "torch_ms": round(1e3 * torch_s, 3), "ratio": round(ours / torch_s, 3)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
