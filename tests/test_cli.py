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
    latent = {"pac_bayes_bound", "elbo", "w_recovery", "target_w_corr", "kl_per_pair", "kl_weight"}
    if model == "vrm":
        assert latent <= set(summary) and summary["kl_weight"] == config["train_config"]["kl_weight"]
    else:
        assert not latent & set(summary)


def test_every_prior_has_a_flag_recorded_in_the_config_and_the_printed_priors(tmp_path, capsys):
    from dataclasses import fields

    from pyro_vrm.cli import build_parser
    from pyro_vrm.model import Priors

    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for f in fields(Priors):
        assert f"--prior-{f.name.replace('_', '-')}" in help_text
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *TINY, "--preset", "tempered", "--prior-concentration", "0.3",
                 "--prior-feature-scale-tril",
                 ";".join(",".join("0.5" if i == j else "0" for j in range(16)) for i in range(16))]) == 0
    summary = json.loads(capsys.readouterr().out)
    config = json.loads((out / "config.json").read_text())
    assert config["priors"]["concentration"] == 0.3 and len(config["priors"]["feature_scale_tril"]) == 16
    assert "Dirichlet(0.3)" in summary["priors"] and "MultivariateNormal" in summary["priors"]
    saved = json.loads((out / "checkpoint" / "config.json").read_text())
    assert Priors.from_dict(saved["priors"]) == Priors.from_dict(config["priors"])


def test_the_paper_preset_and_explicit_flags_above_it(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "paper"), *TINY, "--preset", "paper"]) == 0
    paper = json.loads(capsys.readouterr().out)
    assert (paper["kl_weight"], paper["lambda_sup"], paper["observe_aspects"]) == (1.0, 0.1, False)
    assert main(["train", "--out", str(tmp_path / "mixed"), *TINY, "--preset", "paper", "--kl-weight", "0.5"]) == 0
    mixed = json.loads(capsys.readouterr().out)
    assert (mixed["kl_weight"], mixed["lambda_sup"], mixed["preset"]) == (0.5, 0.1, "paper")
    assert main(["train", "--out", str(tmp_path / "rec"), *TINY]) == 0
    recommended = json.loads(capsys.readouterr().out)
    assert recommended["observe_aspects"] is True and recommended["lambda_sup"] == 0.0


def test_test_fraction_acts_on_simulated_data(tmp_path, capsys):
    assert main(["train", "--model", "rm", "--out", str(tmp_path), *TINY, "--test-fraction", "0.5"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["test_pairs"] == summary["train_pairs"] == 2500


@pytest.mark.parametrize("argv, message", [
    (["--steps", "-3"], "--steps must be positive, got -3"),
    (["--latent-dim", "0"], "--latent-dim must be positive, got 0"),
    (["--sup-loss", "hinge"], "invalid choice: 'hinge'"),
    (["--lr-decay", "2"], "--lr-decay must be in (0, 1]"),
    (["--model", "gpt"], "invalid choice: 'gpt'"),
    (["--prior-concentration", "-1"], "--prior-concentration must be positive"),
    (["--prior-concentration-hyperprior", "0,-1"], "--prior-concentration-hyperprior needs a positive scale"),
    (["--prior-feature-df", "many"], "argument --prior-feature-df"),
    (["--kl-weight", "0"], "--kl-weight must be positive"),
    (["--weight-decay", "lots"], "--weight-decay must be a number >= 0 or auto"),
    (["--conditional-prior", "--prior-feature-df", "4"], "a conditional prior learns a Dirichlet"),
    (["--test-fraction", "1.5"], "--test-fraction must be in (0, 1)"),
    (["--finetune", "lora"], "--weight-decay auto needs cached hidden states (--finetune none)"),
])
def test_bad_arguments_give_one_clear_line(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err.strip().splitlines()[-1]
    assert "Traceback" not in err


def write_pairs(path, n=24):
    import random
    rng = random.Random(0)
    rows = []
    for i in range(n):
        good, bad = rng.sample(["Sure, here is a careful answer.", "No.", "Let me explain step by step.",
                                "I refuse to say.", "It is 42, as far as I know."], 2)
        rows.append({"prompt": f"Question number {i // 2}?", "chosen": good, "rejected": bad,
                     "scores_chosen": [4, 5, 3, 4], "scores_rejected": [2, 1, 3, 2]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


TEXT = ["--max-length", "32", "--steps", "10", "--batch-size", "8", "--width", "16", "--quiet",
        "--log-every", "5"]


def test_featurize_then_train_on_a_file_reuses_the_cached_features(tmp_path, capsys):
    data, cache = write_pairs(tmp_path / "prefs.jsonl"), tmp_path / "cache"
    assert main(["featurize", "--data", str(data), "--cache-dir", str(cache), "--max-length", "32"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["from_cache"] is False and first["pairs"] == 24 and first["hidden_size"] == 384
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--cache-dir", str(cache), "--out", str(out), *TEXT]) == 0
    summary = json.loads(capsys.readouterr().out)
    config = json.loads((out / "config.json").read_text())
    assert config["features"]["from_cache"] is True and config["features"]["cache"] == first["cache"]
    assert summary["train_pairs"] + summary["test_pairs"] == 24
    assert "oracle_accuracy" not in summary and "pac_bayes_bound" in summary


def test_simulated_text_summary_has_the_truth(tmp_path, capsys, monkeypatch):
    from pyro_vrm import simulated_text
    small = simulated_text.TextSimulationConfig(num_prompts=12)
    monkeypatch.setattr(simulated_text, "TextSimulationConfig", lambda seed=0: small)
    out = tmp_path / "run"
    assert main(["train", "--data", "simulated-text", "--cache-dir", str(tmp_path), "--out", str(out), *TEXT]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert {"oracle_accuracy", "w_recovery", "target_w_corr", "shifted_accuracy"} <= set(summary)
    assert summary["test_pairs"] == 4  # the data's own split: 2 of 12 prompts, 2 pairs each
    assert summary["train_pairs"] == 16
    # the data have their own split: a test fraction would be ignored, so it is refused
    assert main(["train", "--data", "simulated-text", "--cache-dir", str(tmp_path), "--out", str(out), *TEXT,
                 "--test-fraction", "0.3"]) == 2
    assert "has its own train/test split" in capsys.readouterr().err


def test_bad_data_gives_one_line_naming_the_row(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "Hi", "chosen": "Hello", "rejected": "Hey"}) + "\n"
                   + json.dumps({"prompt": " ", "chosen": "Hello", "rejected": "Hey"}) + "\n")
    assert main(["train", "--data", str(bad), "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.jsonl, row 1, field 'prompt'" in err[0]
    assert main(["featurize", "--data", "simulated"]) == 2


def test_diagnose_passes_its_flags_and_prints_the_json(tmp_path, capsys, monkeypatch):
    import pyro_vrm.diagnostics as diagnostics
    calls = []
    monkeypatch.setattr(diagnostics, "diagnose",
                        lambda run_dir, **kw: calls.append((run_dir, kw)) or {"nuts_coverage_w": 1.0})
    (tmp_path / "config.json").write_text("{}")
    assert main(["diagnose", str(tmp_path), "--nuts-pairs", "7"]) == 0
    assert calls == [(tmp_path, {"nuts_pairs": 7})]
    assert json.loads(capsys.readouterr().out) == {"nuts_coverage_w": 1.0}


def test_diagnose_refuses_a_run_on_other_data_in_one_line(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"data": "prefs.jsonl", "model": "vrm"}))
    assert main(["diagnose", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--data simulated only" in err[0]


def test_finetune_lora_trains_the_adapters_with_vrm_end_to_end(tiny_causal_lm, tmp_path, capsys, monkeypatch):
    import torch
    from safetensors.torch import load_file

    from pyro_vrm import simulated_text
    from pyro_vrm.reward_model import VRMRewardModel

    small = simulated_text.TextSimulationConfig
    monkeypatch.setattr(simulated_text, "TextSimulationConfig", lambda seed=0: small(num_prompts=16, seed=seed))

    out = tmp_path / "lora"
    argv = ["train", "--data", "simulated-text", "--backbone", str(tiny_causal_lm), "--max-length", "48",
            "--finetune", "lora", "--lora-rank", "4", "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
            "--steps", "6", "--batch-size", "8", "--checkpoint-every", "3", "--log-every", "3", "--width", "16",
            "--weight-decay", "0.01", "--quiet"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    state = torch.load(out / "checkpoint" / "params.pt", weights_only=False)
    adapters = state["adapters"]
    lora_b = [t for name, t in adapters.items() if "lora_B" in name]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b), "the adapters did not train (B starts at 0)"
    assert json.loads((out / "config.json").read_text())["finetune_config"]["lora_rank"] == 4
    # The base weights stay as loaded; the reward model carries the trained adapters.
    rm = VRMRewardModel.from_run(out)
    base = load_file(tiny_causal_lm / "model.safetensors")
    fitted = {name.split("base_model.model.")[-1].replace(".base_layer", ""): p
              for name, p in rm.backbone.model.named_parameters()}
    assert all(torch.equal(base[name], fitted[name]) for name in base)
    rm.save_pretrained(tmp_path / "saved")
    again = VRMRewardModel.from_pretrained(tmp_path / "saved")
    prompts, responses = ["How can I sleep better?"], ["Start with a fixed bedtime and keep to it."]
    assert torch.equal(rm.score(prompts, responses)[0], again.score(prompts, responses)[0])
    # Resuming the finished run loads model and adapters, trains no step, and summarizes the same fit.
    assert main([*argv, "--resume"]) == 0
    assert json.loads(capsys.readouterr().out)["test_accuracy"] == summary["test_accuracy"]
    # Evaluation reads the states of the trained adapters, not the frozen backbone's.
    assert main(["evaluate", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    evaluation = json.loads(capsys.readouterr().out)
    assert evaluation["splits"]["test"]["accuracy"]["accuracy"] == summary["test_accuracy"]


def test_the_temperature_scaled_rm_records_its_temperature_in_the_summary_and_checkpoint(tmp_path, capsys):
    out = tmp_path / "rm-temperature"
    assert main(["train", "--model", "rm-temperature", "--out", str(out), *TINY]) == 0
    summary = json.loads(capsys.readouterr().out)
    selection = summary["temperature_selection"]
    assert summary["temperature"] == selection["temperature"] > 0
    assert selection["validation_log_lik_scaled"] >= selection["validation_log_lik"]
    assert json.loads((out / "checkpoint" / "config.json").read_text())["temperature"] == selection["temperature"]
