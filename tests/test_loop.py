"""The shared training loop: resuming after SIGTERM or SIGKILL, and data-parallel training
under ``accelerate launch`` with two CPU processes (gloo)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pyro_vrm.config import ConfigError, TrainConfig
from pyro_vrm.loop import minibatches
from pyro_vrm.runs import RunDir
from pyro_vrm.train import fit_vrm

# One thread per process: the same float reductions in every run, and no oversubscription.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
TRAIN = ["train", "--quiet", "--width", "32", "--depth", "1", "--latent-dim", "4", "--log-every", "10"]


def cli(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pyro_vrm.cli", *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def finished(*args: str) -> dict:
    proc = cli(*args)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return json.loads(out)


def stop_when_logged(proc: subprocess.Popen, run: Path, step: int, sig: int) -> None:
    """Send ``sig`` once metrics.jsonl holds a record at or past ``step``; the run must still be going."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []
        if lines and lines[-1].endswith("}") and json.loads(lines[-1])["step"] >= step:
            break
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be interrupted: give it more steps"
    proc.send_signal(sig)


def checkpoint(run: Path) -> dict:
    return torch.load(run / "checkpoint" / "params.pt", weights_only=False)


def assert_same_run(resumed: Path, reference: Path) -> None:
    a, b = checkpoint(resumed), checkpoint(reference)
    assert a["step"] == b["step"]
    assert a["module"].keys() == b["module"].keys()
    for name in a["module"]:
        assert torch.equal(a["module"][name], b["module"][name]), f"{name} differs from the uninterrupted run"
    assert RunDir(resumed).read_metrics() == RunDir(reference).read_metrics()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of 1500 steps, checkpoint every 200."""
    run = tmp_path_factory.mktemp("loop") / "reference"
    finished(*TRAIN, "--steps", "1500", "--checkpoint-every", "200", "--out", str(run))
    return run


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_a_stopped_run_resumed_ends_as_the_uninterrupted_run(reference, tmp_path, sig):
    run = tmp_path / "run"
    proc = cli(*TRAIN, "--steps", "1500", "--checkpoint-every", "200", "--out", str(run))
    stop_when_logged(proc, run, 430, sig)
    _, err = proc.communicate(timeout=60)
    if sig == signal.SIGTERM:  # checkpoint at the step in flight, then a clean exit
        assert proc.returncode == 128 + signal.SIGTERM, err
        stopped_at = checkpoint(run)["step"]
        assert f"stopped after step {stopped_at}" in err and stopped_at >= 430
    else:  # the last periodic checkpoint survives
        assert proc.returncode == -signal.SIGKILL
        assert checkpoint(run)["step"] in (400, 600, 800, 1000, 1200, 1400)
    assert not list((run / "checkpoint").glob(".*.tmp"))
    summary = finished(*TRAIN, "--steps", "1500", "--checkpoint-every", "200", "--out", str(run), "--resume")
    assert_same_run(run, reference)
    assert summary["test_accuracy"] == json.loads((reference / "summary.json").read_text())["test_accuracy"]


def test_resume_refuses_other_settings(tmp_path, small_data):
    run = tmp_path / "run"
    fit_vrm(small_data.train, train_config=TrainConfig(steps=20, log_every=10), run=RunDir(run), progress=False)
    with pytest.raises(ConfigError, match=r"other settings \(train\)"):
        fit_vrm(small_data.train, train_config=TrainConfig(steps=30, log_every=10), run=RunDir(run),
                progress=False, resume=True)


def test_resume_without_a_checkpoint_starts_afresh(small_data, tmp_path):
    cfg = TrainConfig(steps=20, batch_size=64, log_every=10)
    fresh, _ = fit_vrm(small_data.train, train_config=cfg, run=RunDir(tmp_path / "a"), progress=False)
    resumed, _ = fit_vrm(small_data.train, train_config=cfg, run=RunDir(tmp_path / "b"), progress=False,
                         resume=True)
    assert all(torch.equal(p, q) for p, q in zip(fresh.parameters(), resumed.parameters()))


def test_a_half_written_metrics_line_is_dropped_on_resume(tmp_path):
    run = RunDir(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 10}\n{"step": 20}\n{"step": 30}\n{"st')
    run.start_metrics(keep_until=20)
    assert run.read_metrics() == [{"step": 10}, {"step": 20}]


def test_each_process_takes_a_contiguous_share_of_the_global_batch():
    index = next(minibatches(100, 8, steps=1, seed=0))
    shares = index.chunk(2)
    assert torch.equal(torch.cat(shares), index) and all(len(s) == 4 for s in shares)


# ---------------------------------------------------------------------------------------------
# Two processes under accelerate launch (gloo on the CPU)
# ---------------------------------------------------------------------------------------------
def launch_two(*args: str) -> dict:
    with socket.socket() as s:  # a free port for the process group's rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(port), "-m", "pyro_vrm.cli", *args]
    proc = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1, "only the main process prints the summary"
    return json.loads(proc.stdout[proc.stdout.index("{"):])


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    flags = ["--steps", "300", "--batch-size", "128"]
    # The Bradley-Terry loss is deterministic, so data parallelism must reproduce the
    # single-process fit up to float rounding in the gradient average.
    launch_two(*TRAIN, *flags, "--model", "rm", "--out", str(tmp_path / "rm2"))
    finished(*TRAIN, *flags, "--model", "rm", "--out", str(tmp_path / "rm1"))
    two, one = checkpoint(tmp_path / "rm2")["module"], checkpoint(tmp_path / "rm1")["module"]
    for name in one:
        assert torch.allclose(two[name], one[name], atol=1e-4), name
    # VRM's ELBO is a Monte Carlo estimate, and each process draws its own samples, so the two
    # fits follow different noise: they must agree in what they learned, within sampling error.
    vrm2 = launch_two(*TRAIN, *flags, "--out", str(tmp_path / "vrm2"))
    vrm1 = finished(*TRAIN, *flags, "--out", str(tmp_path / "vrm1"))
    assert abs(vrm2["test_accuracy"] - vrm1["test_accuracy"]) < 0.03
    assert abs(vrm2["elbo"] - vrm1["elbo"]) < 0.01
    assert vrm1["test_accuracy"] > 0.65  # both learned: chance is 0.5, the oracle 0.79
    metrics = RunDir(tmp_path / "vrm2").read_metrics()
    assert [r["step"] for r in metrics] == list(range(10, 301, 10))


def test_two_processes_train_lora_adapters_as_one_process_does(tiny_causal_lm, tmp_path):
    """The backbone runs outside DDP's forward (TextPairs.batch), yet its adapters' gradients must
    be averaged across processes like the head's: the fit matches one process's."""
    flags = ["train", "--quiet", "--model", "rm", "--data", "simulated-text", "--backbone", str(tiny_causal_lm),
             "--max-length", "48", "--finetune", "lora", "--lora-rank", "4", "--steps", "12", "--batch-size", "8",
             "--width", "16", "--cache-dir", str(tmp_path / "cache")]
    launch_two(*flags, "--out", str(tmp_path / "two"))
    finished(*flags, "--out", str(tmp_path / "one"))
    two, one = checkpoint(tmp_path / "two"), checkpoint(tmp_path / "one")
    assert two["adapters"].keys() == one["adapters"].keys()
    for name in one["adapters"]:
        assert torch.allclose(two["adapters"][name], one["adapters"][name], atol=1e-5), name
    assert any(t.abs().sum() > 0 for name, t in one["adapters"].items() if "lora_B" in name)
    for name in one["module"]:
        assert torch.allclose(two["module"][name], one["module"][name], atol=1e-5), name
