import json
import math
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


# Each notebook ends with a `results` dict: the numbers its markdown reads. The test appends a cell
# (to its in-memory copy only) that prints them as JSON, and checks the claims below against them.
def check_svi_experiment(r):
    kl, prob, accuracy = r["kl_per_pair"], r["mean_prob_chosen"], r["test_accuracy"]
    # The paper's objective collapses to the prior: no KL, every prediction 1/2.
    assert kl["VRM (paper preset)"] < 0.05
    assert abs(prob["VRM (paper preset)"] - 0.5) < 0.01
    # The tempered objective leaves the prior, and its predictions leave 1/2.
    assert kl["VRM (tempered)"] > 1.0
    assert prob["VRM (tempered)"] > 0.55
    assert set(accuracy) == {"VRM (tempered)", "VRM (paper preset)", "RM", "twin"}
    assert all(0.55 < a <= 1.0 for a in accuracy.values()), accuracy


def check_posterior_diagnostics(r):
    assert r["kl_weight"] < 1  # the checks' markdown explains a fit at beta < 1
    prior, q, nuts = r["sd"]["prior"], r["sd"]["q (SVI)"], r["sd"]["NUTS"]
    for z in ["chosen_features", "rejected_features"]:
        assert r["test_sd"]["posterior"][z] < 0.5 * r["test_sd"]["prior"][z]  # q is not the prior
        assert nuts[z] < 0.9 * prior[z]  # the observed aspect scores inform z
        assert q[z] < nuts[z]  # beta < 1: q narrower than the posterior at weight 1
    assert r["nuts_max_rhat"] < 1.2, "NUTS is no reference without converged chains"
    assert r["khat_share_above_0_7"] > 0.5
    assert 0.0 <= r["nuts_coverage_w"] <= 1.0


def check_swapping_priors(r):
    # z_c and z_r are exchangeable a priori: the prior predictive P(chosen wins) is 1/2 under each prior.
    assert len(r["prior_predictive_prob_chosen"]) == 5
    assert all(abs(p - 0.5) < 0.02 for p in r["prior_predictive_prob_chosen"].values())
    fits = r["fits"]
    assert len(fits) == 6
    # A mean-field q cannot reach a correlated prior: the KL per pair stays above the floor.
    assert fits["correlated Normal features"]["kl_per_pair"] >= r["kl_floor_per_pair"]
    assert fits["fixed sigma_a = 0.25"]["kl_per_pair"] > fits["defaults"]["kl_per_pair"]
    assert (fits["Dirichlet(10)"]["median sum_k alpha_k of q(w|x)"]
            > fits["defaults"]["median sum_k alpha_k of q(w|x)"])
    # No closed-form KL under a Student-t prior: no PAC-Bayes bound; the others have one.
    for name, fit in fits.items():
        bound = fit["pac_bayes_bound"]
        if name == "Student-t(3) features":
            assert bound is None or math.isnan(bound)
        else:
            assert math.isfinite(bound)


def check_simulation_based_calibration(r):
    sbc = r["sbc"]
    # The default: uniform ranks, a contracting margin, z-scores of sd near 1.
    default = sbc["recommended"]
    for quantity in ("w", "margin", "loglik"):
        assert default[f"{quantity}_rank_pvalue"] > 1e-3, quantity
    assert default["margin_contraction"] > 0.3 and abs(default["margin_zscore_sd"] - 1) < 0.15
    assert -0.15 < default["margin_zscore_mean"] < 0  # truths slightly above q's draws, as its ECDF shows
    # KL weight 0.01: contracts more than the posterior, too narrow, every rank test fails.
    tempered = sbc["tempered"]
    assert tempered["margin_contraction"] > default["margin_contraction"] and tempered["margin_zscore_sd"] > 1.5
    assert max(tempered[f"{q}_rank_pvalue"] for q in ("w", "margin", "loglik")) < 1e-3
    assert abs(tempered["margin_zscore_mean"]) > 3 * abs(default["margin_zscore_mean"])
    # a calibrated q puts 2 / (L + 1) of the margin ranks at 0 or L; the tempered one several times that,
    # and most of its log-likelihood truths above all of its draws
    at_ends = r["margin_ranks_at_0_or_L"]
    assert at_ends["recommended"] < 0.04 < 3 * 0.04 < at_ends["tempered"]
    assert r["loglik_ranks_at_L"]["tempered"] > 0.5 > 0.05 > r["loglik_ranks_at_L"]["recommended"]
    # Untrained: contracts nothing, w passes as the prior's would, the margin does not know the winner.
    untrained = sbc["untrained"]
    assert untrained["margin_contraction"] < 0.05 and untrained["w_rank_pvalue"] > 1e-3
    assert untrained["margin_rank_pvalue"] < 1e-6 and untrained["margin_zscore_mean"] < -0.1


CHECKS = {"01_svi_experiment": check_svi_experiment, "02_posterior_diagnostics": check_posterior_diagnostics,
          "03_swapping_priors": check_swapping_priors,
          "04_simulation_based_calibration": check_simulation_based_calibration}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stripped_runs_and_shows_what_it_says(path, tmp_path):
    assert path.stem in CHECKS, f"{path.name}: add the checks of its results to CHECKS"
    nb = nbformat.read(path, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code), "commit notebooks without outputs"
    nb.cells.append(new_code_cell("import json\nprint(json.dumps(results, default=float))"))
    # python3 is ipykernel's own kernel, started with this interpreter; a cell error raises here.
    NotebookClient(nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert not list(tmp_path.iterdir()), "notebooks write into a temporary folder of their own"
    printed = "".join(out["text"] for out in nb.cells[-1].outputs if out["output_type"] == "stream"
                      and out["name"] == "stdout")
    CHECKS[path.stem](json.loads(printed))
