import pyro
import pytest
import torch

from pyro_vrm.config import ModelConfig, TrainConfig
from pyro_vrm.model import Priors
from pyro_vrm.objective import VRMLoss, VRMObjective, make_elbo, step_metrics
from pyro_vrm.posterior import kl_terms
from pyro_vrm.supervision import supervision_loss
from pyro_vrm.train import supervision_setup
from pyro_vrm.vrm import VRM

SMALL = ModelConfig(latent_dim=4, width=32, depth=1, conditional_prior=False, preference_scale=False)


def setup(small_data, priors=Priors(), **model):
    train = small_data.train
    torch.manual_seed(0)
    vrm = VRM(ModelConfig(**{**SMALL.__dict__, **model}), train.hidden_size, train.num_aspects, priors)
    vrm.create_global_parameters()
    with torch.no_grad():  # away from the prior, so that every KL term is sizeable
        for p in vrm.parameters():
            p.add_(0.2 * torch.randn_like(p))
    standardizer, targets = supervision_setup(train, TrainConfig())
    return vrm, train.batch(torch.arange(64), targets), len(train), standardizer


def loss_at(vrm, batch, num_pairs, kl_weight, lambda_sup=0.1, seed=3, elbo="meanfield", **kwargs):
    objective = VRMObjective(make_elbo(TrainConfig(elbo=elbo)), lambda_sup, "kl", kl_weight)
    pyro.set_rng_seed(seed)  # the same draws for every beta: scaling a site's density draws nothing
    return objective(vrm.model, vrm.guide, batch, num_pairs=num_pairs, preferences=torch.ones(len(batch.index)),
                     **kwargs)


@pytest.mark.parametrize("model", [{}, {"bayesian_decoder": True}])
def test_the_kl_part_of_the_loss_scales_exactly_by_beta(small_data, model):
    vrm, batch, n, _ = setup(small_data, **model)
    losses = {beta: loss_at(vrm, batch, n, beta).detach() for beta in (1.0, 0.5, 0.1)}
    with torch.no_grad():
        local = kl_terms(vrm, batch).local.mean()  # per pair (the batch's index is 0..63)
    # loss(beta) = -E log p(y) + beta * KL / N + lambda * L_sup, the same draws at every beta
    slope = (losses[1.0] - losses[0.5]) / 0.5
    assert float(losses[0.5] - losses[0.1]) == pytest.approx(0.4 * float(slope), rel=1e-4)
    if not model:  # every KL in closed form: the slope is the mean local KL of the batch's pairs
        assert float(slope) == pytest.approx(float(local), rel=1e-4)
    else:  # the global latents' KL (a Monte Carlo term under AutoNormal's Delta sites) enters once, / N
        assert float(slope) != pytest.approx(float(local), rel=1e-3)


def test_beta_one_is_bit_for_bit_the_paper_elbo(small_data):
    vrm, batch, n, _ = setup(small_data)
    weighted = loss_at(vrm, batch, n, kl_weight=1.0)
    pyro.set_rng_seed(3)
    elbo = make_elbo(TrainConfig()).differentiable_loss(vrm.model, vrm.guide, batch, num_pairs=n,
                                                        preferences=torch.ones(64))
    sup = supervision_loss("kl", batch.target, vrm.amortized_guide.weight_posterior(batch.prompt_state).concentration)
    assert torch.equal(weighted, elbo / n + 0.1 * sup.mean())


def test_the_kl_weight_scales_monte_carlo_kls_too(small_data):
    vrm, batch, n, _ = setup(small_data, Priors(feature_df=4.0))
    losses = [loss_at(vrm, batch, n, beta, elbo="trace").detach() for beta in (1.0, 0.5, 0.25)]
    assert float(losses[0] - losses[1]) == pytest.approx(2 * float(losses[1] - losses[2]), rel=1e-4)


@torch.no_grad()
def test_observed_aspects_enter_the_loss_as_their_likelihood(small_data):
    vrm, batch, n, standardizer = setup(small_data, Priors(aspect_noise=0.7), observe_aspects=True)
    aspects = (standardizer(small_data.train.chosen_scores), standardizer(small_data.train.rejected_scores))
    loss = VRMLoss(vrm, VRMObjective(make_elbo(TrainConfig()), 0.0, "kl", 0.1), aspects)
    plain = VRMLoss(vrm, VRMObjective(make_elbo(TrainConfig()), 0.0, "kl", 0.1))
    pyro.set_rng_seed(5)
    with_aspects = loss(batch, n)
    pyro.set_rng_seed(5)
    without = plain(batch, n)
    # the difference is -log N(a | s(z), sigma_a) at the step's own draws of z, per pair
    pyro.set_rng_seed(5)
    trace = pyro.poutine.trace(vrm.guide).get_trace(batch, num_pairs=n)
    noise = torch.distributions.Normal(0.0, 0.7)
    expected = 0.0
    for site, table in zip(("chosen_features", "rejected_features"), aspects):
        scores = vrm.decoder(torch.ones(1), trace.nodes[site]["value"])[1]
        expected = expected - noise.log_prob(table[batch.index] - scores).sum()
    assert float(with_aspects - without) == pytest.approx(float(expected) / 64, rel=1e-4)


def test_step_metrics_report_the_true_elbo_and_leave_the_rng_alone(small_data):
    vrm, batch, n, _ = setup(small_data)
    loss = VRMLoss(vrm, VRMObjective(make_elbo(TrainConfig()), 0.1, "kl", 0.1))
    loss(batch, n)
    state = torch.random.get_rng_state()
    record = step_metrics(loss, batch, n)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert record["kl_weight"] == 0.1
    assert record["elbo"] == pytest.approx(record["expected_log_lik"] - record["kl_w"] - record["kl_z"], abs=1e-5)
    # the loss trains with beta = 0.1, the ELBO is at beta = 1: the loss is below -ELBO
    assert record["loss"] < -record["elbo"]


@torch.no_grad()
def test_a_learned_aspect_noise_adds_its_prior_once(small_data):
    vrm, batch, n, standardizer = setup(small_data, Priors(aspect_noise_scale=2.0), observe_aspects=True)
    sigma = vrm.decoder.aspect_noise
    assert sigma is not None and sigma.shape == (4,)
    aspects = (standardizer(small_data.train.chosen_scores), standardizer(small_data.train.rejected_scores))
    learned = VRMLoss(vrm, VRMObjective(make_elbo(TrainConfig()), 0.0, "kl", 0.1), aspects)
    pyro.set_rng_seed(5)
    loss = learned(batch, n)
    fixed = setup(small_data, Priors(aspect_noise_scale=2.0, aspect_noise=1.0), observe_aspects=True)[0]
    fixed.load_state_dict({k: v for k, v in vrm.state_dict().items() if k != "decoder.log_aspect_noise"})
    with torch.no_grad():
        vrm.decoder.log_aspect_noise.zero_()  # sigma_a = 1, as the fixed fit has it
    pyro.set_rng_seed(5)
    at_one = learned(batch, n)
    pyro.set_rng_seed(5)
    reference = VRMLoss(fixed, VRMObjective(make_elbo(TrainConfig()), 0.0, "kl", 0.1), aspects)(batch, n)
    half_normal = torch.distributions.HalfNormal(2.0).log_prob(torch.ones(4)).sum()
    assert float(at_one - reference) == pytest.approx(float(-half_normal) / n, rel=1e-4)
    assert float(loss) != float(at_one)  # sigma_a enters the likelihood


@pytest.mark.parametrize("case", [
    {},                                                        # the recommended objective, aspects observed
    {"lambda_sup": 0.1, "kl_weight": 1.0},                     # the paper's: supervision term, no aspects
    {"elbo": "trace", "num_particles": 2},                     # Monte Carlo KLs, vectorized particles
    {"bayesian_decoder": True, "concentration_hyperprior": (0.0, 1.0)},  # global latents (AutoNormal)
])
def test_the_compiled_loss_is_the_loss_with_the_same_draws_and_gradients(small_data, case):
    model = {k: v for k, v in case.items() if k in ("bayesian_decoder",)}
    model["observe_aspects"] = "lambda_sup" not in case
    priors = Priors(concentration_hyperprior=case.get("concentration_hyperprior"))
    train = {k: v for k, v in case.items() if k in ("lambda_sup", "kl_weight", "elbo", "num_particles")}
    vrm, batch, n, standardizer = setup(small_data, priors, **model)
    aspects = None if "lambda_sup" in case else (standardizer(small_data.train.chosen_scores),
                                                 standardizer(small_data.train.rejected_scores))
    if "lambda_sup" not in case:
        batch = batch._replace(target=None)
    losses = {}
    for jit in (False, True):
        cfg = TrainConfig(jit=jit, **train)
        loss = VRMLoss(vrm, VRMObjective(make_elbo(cfg), cfg.lambda_sup, "kl", cfg.kl_weight), aspects, jit=jit)
        for seed in (3, 4):  # the second call runs the compiled graph on fresh draws
            vrm.zero_grad()
            pyro.set_rng_seed(seed)
            value = loss(batch, n)
            value.backward()
            losses[jit, seed] = (value.detach(), {k: p.grad.clone() for k, p in vrm.named_parameters()},
                                 dict(loss.objective.terms))
    for seed in (3, 4):
        (eager, eager_grads, eager_terms), (compiled, grads, terms) = losses[False, seed], losses[True, seed]
        assert torch.allclose(compiled, eager, rtol=1e-5), (seed, float(compiled), float(eager))
        assert terms["loss"] == pytest.approx(float(eager), rel=1e-5)
        assert terms["sup"] == pytest.approx(float(eager_terms["sup"]), rel=1e-5, abs=1e-7)
        for name, grad in eager_grads.items():
            assert torch.allclose(grads[name], grad, rtol=1e-4, atol=1e-6), (seed, name)
    assert losses[True, 3][0] != losses[True, 4][0]  # fresh draws, not a value frozen at tracing


def test_jit_needs_the_traceable_elbo(small_data):
    vrm, *_ = setup(small_data)
    with pytest.raises(ValueError, match="config.jit"):
        VRMLoss(vrm, VRMObjective(make_elbo(TrainConfig(jit=False)), 0.0, "kl"), jit=True)
