import json

import pytest

from pyro_vrm.cli import main

TINY = ["--steps", "20", "--batch-size", "64", "--width", "16", "--quiet", "--log-every", "5"]


@pytest.mark.parametrize("model", ["vrm", "rm"])
def test_train_writes_the_run_folder(tmp_path, capsys, model):
    out = tmp_path / model
    assert main(["train", "--model", model, "--out", str(out), *TINY]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert json.loads(capsys.readouterr().out) == summary
    assert (out / "checkpoint" / "params.pt").exists() and (out / "checkpoint" / "config.json").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == model and config["train_config"]["steps"] == 20
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4
    assert {"test_accuracy", "train_accuracy", "oracle_accuracy", "gap_to_oracle"} <= set(summary)
    latent = {"pac_bayes_bound", "elbo", "w_recovery", "target_w_corr", "kl_per_pair"}
    if model == "vrm":
        assert latent <= set(summary)
        assert 0 <= summary["pac_bayes_bound"] and summary["elbo"] < 0
    else:
        assert not latent & set(summary)


@pytest.mark.parametrize("argv, message", [
    (["--steps", "-3"], "--steps must be positive, got -3"),
    (["--latent-dim", "0"], "--latent-dim must be positive, got 0"),
    (["--sup-loss", "hinge"], "invalid choice: 'hinge'"),
    (["--lr-decay", "2"], "--lr-decay must be in (0, 1]"),
    (["--model", "gpt"], "invalid choice: 'gpt'"),
])
def test_bad_arguments_give_one_clear_line(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err.strip().splitlines()[-1]
    assert "Traceback" not in err
