r"""A Bayesian last layer for the Bradley-Terry reward model, sampled by NUTS: epistemic uncertainty
from one fit (Snoek et al. 2015, Riquelme et al. 2018; for reward models Yang et al. 2024).

The RM's head is an MLP whose last layer is linear, r(x, y) = v . phi(h_x, h_xy) + b. Keep the
fitted phi, the penultimate activations (D,), as fixed features and give the last layer's weights
a posterior given the N training pairs, d_n = phi(x_n, y_cn) - phi(x_n, y_rn):

    w ~ Normal(0, tau^2 I_D),      y_n ~ Bernoulli(logits = w . d_n)      (y_n = 1: the chosen won)

The bias cancels in every margin and is left out. A response's reward, a distribution over the
NUTS draws of w (its mean and sd), is measured from the mean training response, w . (phi - phi_bar):
a shift w . phi_bar common to all responses is set by the prior alone, no disagreement about any.

**The prior scale** tau is chosen from :data:`PRIOR_SCALES` on validation pairs, not by the
training pairs' evidence. The features were fitted to the training pairs and separate them (the
RM wins every training pair of simulated-text, by wide margins), so there p(y | tau) only grows
with tau; a HalfNormal hyperprior drifts the same way, into a posterior that is a narrow cone at
a large radius, where NUTS does not mix. Unseen pairs show the features' errors: tau maximizes
their posterior predictive log-likelihood under the Laplace approximation N(w*, Sigma) at the
MAP w* (MacKay 1992), P(chosen wins) ~ sigmoid(mu / sqrt(1 + pi s^2 / 8)) for a margin of mean
mu and variance s^2, as the tuned RM picks its weight decay on validation pairs.

**Sampling.** The Laplace fit preconditions NUTS: it moves in u = L^-1 (w - w*), L L^T = Sigma,
where the posterior is close to N(0, I); the draws are of the exact posterior all the same.
"""

from __future__ import annotations

import copy
import math
import time

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import MCMC, NUTS
from pyro.infer.mcmc.util import diagnostics
from torch import nn
from torch.nn.functional import logsigmoid

from .baseline import RewardHead
from .features import PreferenceFeatures

__all__ = ["BayesianLastLayer", "PRIOR_SCALES", "laplace_fit"]

# Prior sds tau of the last layer's weights that validation pairs choose from.
PRIOR_SCALES = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


def laplace_fit(differences: torch.Tensor, prior_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(MAP w* (D,), covariance Sigma (D, D) of the Laplace approximation) of the posterior of w
    given pairs whose chosen response won, ``differences`` d_n (N, D), under the prior
    w ~ Normal(0, prior_scale^2 I): Newton's method with step halving (the log posterior is
    concave), Sigma the inverse of its negative Hessian at w*. Float64.

    Examples:
        >>> d = torch.tensor([[1.0], [1.0], [1.0], [-1.0]])    # right 3 times in 4
        >>> w, _ = laplace_fit(d, prior_scale=1e3)               # a flat prior: w* = log 3
        >>> round(float(w), 4)
        1.0986
    """
    d = differences.double()
    precision = prior_scale**-2

    def log_joint(w):
        return float(logsigmoid(d @ w).sum() - precision * w.dot(w) / 2)

    def hessian(w):                                              # of minus the log posterior, (D, D)
        p = torch.sigmoid(d @ w)
        return d.T @ (d * (p * (1 - p)).unsqueeze(-1)) + precision * torch.eye(d.shape[-1], dtype=d.dtype)

    w = d.new_zeros(d.shape[-1])
    for _ in range(100):
        step = torch.linalg.solve(hessian(w), d.T @ torch.sigmoid(-(d @ w)) - precision * w)
        while log_joint(w + step) < log_joint(w) and step.abs().max() > 1e-12:
            step = step / 2
        w = w + step
        if step.abs().max() < 1e-9:  # converged
            break
    return w, torch.cholesky_inverse(torch.linalg.cholesky(hessian(w)))


def probit_log_likelihood(differences: torch.Tensor, loc: torch.Tensor, covariance: torch.Tensor) -> float:
    """Mean log P(chosen wins) of pairs d (N, D) under w ~ N(loc, covariance), by the probit approximation."""
    d = differences.double()
    mu, var = d @ loc, ((d @ covariance) * d).sum(-1)
    return float(logsigmoid(mu / (1 + math.pi * var / 8).sqrt()).mean())


class BayesianLastLayer(nn.Module):
    """The last layer of a fitted :class:`~pyro_vrm.baseline.RewardHead` made Bayesian, sampled by
    NUTS on ``train``'s pairs (see the module docstring); the rest of the head is frozen.

    Args:
        head: the fitted RM; it is copied, not changed.
        train: the N pairs it was fitted to, the likelihood of the last layer.
        validation: pairs it was not fitted to, which choose the prior scale tau.
        prior_scales: the prior sds tau to choose from.

    Examples:
        >>> pyro.set_rng_seed(0)
        >>> train = PreferenceFeatures(torch.randn(40, 3), torch.randn(40, 3) + 1, torch.randn(40, 3))
        >>> layer = BayesianLastLayer(RewardHead(3, 4, 1), train, train.select(torch.arange(10)))
        >>> report = layer.fit(num_samples=50, warmup=50, chains=1)
        >>> [tuple(t.shape) for t in layer.mean_sd(train.prompt_state[:5], train.chosen_state[:5])]
        [(5,), (5,)]
    """

    def __init__(self, head: RewardHead, train: PreferenceFeatures, validation: PreferenceFeatures,
                 prior_scales: tuple[float, ...] = PRIOR_SCALES):
        super().__init__()
        last = head.net[-1]
        if not (isinstance(last, nn.Linear) and last.out_features == 1):
            raise ValueError(f"a Bayesian last layer needs a head that ends in nn.Linear(D, 1), not {last}")
        if not prior_scales or min(prior_scales) <= 0:
            raise ValueError(f"prior_scales must be positive and not empty, got {prior_scales}")
        self.body = copy.deepcopy(head.net[:-1]).eval().requires_grad_(False)   # [h_x, h_xy] -> phi (D,)
        self.prior_scales = tuple(float(s) for s in prior_scales)
        phi_c, phi_r = self.features(train.prompt_state, train.chosen_state, train.rejected_state)
        self.register_buffer("differences", phi_c - phi_r)                       # (N, D) d_n
        self.register_buffer("validation_differences", torch.sub(*self.features(
            validation.prompt_state, validation.chosen_state, validation.rejected_state)))
        self.register_buffer("feature_mean", torch.cat([phi_c, phi_r]).mean(0))  # (D,) phi_bar
        self.register_buffer("draws", phi_c.new_zeros(0, phi_c.shape[-1]))      # (S, D) w, once fitted
        self.report: dict | None = None

    @torch.no_grad()
    def features(self, prompt_state: torch.Tensor, *response_states: torch.Tensor) -> list[torch.Tensor]:
        """phi (B, D), float64, of each (B, H) response state with the prompt's (B, H)."""
        return [self.body(torch.cat([prompt_state, s], -1)).double() for s in response_states]

    def model(self, prior_scale: float):
        """w ~ Normal(0, tau^2 I); each training pair's preference ~ Bernoulli(logits = w . d_n)."""
        d = self.differences
        w = pyro.sample("w", dist.Normal(d.new_zeros(d.shape[-1]), prior_scale).to_event(1))
        with pyro.plate("pairs", len(d)):
            pyro.sample("preference", dist.Bernoulli(logits=d @ w), obs=d.new_ones(len(d)))

    def fit(self, num_samples: int = 500, warmup: int = 300, seed: int = 0, chains: int = 2) -> dict:
        """Choose tau on the validation pairs, then draw ``num_samples`` w per chain by NUTS after
        ``warmup`` steps, ``chains`` chains one after the other (seeds ``seed``, ``seed`` + 1, ...),
        each from a draw of the Laplace approximation.

        Returns (and keeps in ``report``): the ``prior_scale`` chosen and the
        ``validation_log_lik`` of each tau; the NUTS diagnostics over the D weights, ``r_hat_max``
        and ``n_eff_min`` (split R-hat and effective sample size across chains), and per chain
        ``divergences`` and ``acceptance_rate``; and the ``seconds`` it took."""
        if num_samples < 2 or warmup < 0 or chains < 1:
            raise ValueError(f"fit needs num_samples >= 2, warmup >= 0, chains >= 1; "
                             f"got {num_samples}, {warmup}, {chains}")
        started = time.perf_counter()
        laplace = {tau: laplace_fit(self.differences, tau) for tau in self.prior_scales}
        scores = {tau: probit_log_likelihood(self.validation_differences, *fit) for tau, fit in laplace.items()}
        tau = max(scores, key=scores.get)
        w_map, covariance = laplace[tau]
        whiten = dist.transforms.LowerCholeskyAffine(w_map, torch.linalg.cholesky(covariance)).inv  # w -> u
        draws, per_chain = [], []
        for chain in range(chains):
            pyro.set_rng_seed(seed + chain)
            kernel = NUTS(self.model, transforms={"w": whiten}, max_tree_depth=8)
            mcmc = MCMC(kernel, num_samples, warmup, initial_params={"w": torch.randn_like(w_map)},  # u ~ N(0, I)
                        disable_progbar=True)
            mcmc.run(tau)
            draws.append(mcmc.get_samples()["w"])
            per_chain.append(mcmc.diagnostics())
        draws = torch.stack(draws)                                                 # (C, S, D)
        stats = diagnostics({"w": draws})["w"]
        self.draws = draws.flatten(0, 1)
        self.report = {"prior_scale": tau, "validation_log_lik": {str(t): s for t, s in scores.items()},
                       "r_hat_max": float(stats["r_hat"].max()), "n_eff_min": float(stats["n_eff"].min()),
                       "divergences": [len(c["divergences"]["chain 0"]) for c in per_chain],
                       "acceptance_rate": [float(c["acceptance rate"]["chain 0"]) for c in per_chain],
                       "chains": chains, "num_samples": num_samples, "warmup": warmup,
                       "seconds": time.perf_counter() - started}
        return self.report

    @torch.no_grad()
    def rewards(self, prompt_state: torch.Tensor, response_state: torch.Tensor) -> torch.Tensor:
        """(S, B) reward draws w . (phi - phi_bar) of each response to its prompt: states (B, H)."""
        if len(self.draws) == 0:
            raise RuntimeError("the last layer has no posterior draws yet: call fit() first")
        phi, = self.features(prompt_state, response_state)                       # (B, D)
        return (self.draws @ (phi - self.feature_mean).T).to(prompt_state.dtype)

    def mean_sd(self, prompt_state: torch.Tensor, response_state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and sd of the reward of each response to its prompt: states (B, H) ->
        (B,), (B,), as :func:`pyro_vrm.ensemble.reward_mean_sd` gives them for other fits."""
        draws = self.rewards(prompt_state, response_state)                         # (S, B)
        return draws.mean(0), draws.std(0, correction=0)

    def prob_chosen(self, prompt_state: torch.Tensor, chosen_state: torch.Tensor,
                    rejected_state: torch.Tensor) -> torch.Tensor:
        """Posterior predictive P(chosen wins) = E[sigmoid(r_c - r_r)] of each pair: states (B, H) -> (B,)."""
        margin = self.rewards(prompt_state, chosen_state) - self.rewards(prompt_state, rejected_state)
        return torch.sigmoid(margin).mean(0)

    def forward(self, prompt_state: torch.Tensor, response_state: torch.Tensor) -> torch.Tensor:
        """The posterior mean reward, (B, H) states -> (B,)."""
        return self.mean_sd(prompt_state, response_state)[0]
