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

import numpy as np
import pytest
import torch

from pyro_vrm.cli import main
from pyro_vrm.config import ConfigError, TrainConfig
from pyro_vrm.loop import minibatches
from pyro_vrm.runs import RunDir
from pyro_vrm.train import WEIGHT_DECAY_GRID, fit_vrm

# One thread per process: the same float reductions in every run, and no oversubscription.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
# a tiny network of the tempered preset (fixed priors), the cheapest fit, for the loop's machinery
SMALL = ["train", "--quiet", "--width", "32", "--depth", "1", "--latent-dim", "4", "--preset", "tempered"]
TRAIN = [*SMALL, "--log-every", "10"]
STOPPABLE_CLI = Path(__file__).with_name("stoppable_cli.py")  # pyro_vrm.cli that can hold at a step

# The resume tests: 60 steps, a checkpoint every 20, a record every 5; the stopped runs are held in
# step 33, between checkpoints (20 and 40) and after records (25, 30) that a resume must drop and
# log again, so that a run killed there must go back to step 20, and one stopped by SIGTERM must
# checkpoint step 33 itself.
RESUMABLE = [*SMALL, "--log-every", "5", "--steps", "60", "--checkpoint-every", "20"]
HOLD_STEP = 33


def held(*args: str, step: int, ready: Path) -> subprocess.Popen:
    """A run that holds still in step ``step`` (before its loss) once it has written ``ready``, until
    a signal comes: see tests/stoppable_cli.py."""
    env = {**ENV, "PYRO_VRM_TEST_HOLD": f"{step}:{ready}"}
    return subprocess.Popen([sys.executable, str(STOPPABLE_CLI), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_until_held(proc: subprocess.Popen, ready: Path) -> None:
    """Wait, however slow the machine, until the run holds at its step; it must still be going."""
    deadline = time.monotonic() + 600
    while not ready.exists():
        assert proc.poll() is None, f"the run ended before it held: {proc.communicate()[1]}"
        assert time.monotonic() < deadline, "the run never reached the step it was to hold at"
        time.sleep(0.02)
    assert proc.poll() is None


def checkpoint(run: Path) -> dict:
    return torch.load(run / "checkpoint" / "params.pt", weights_only=False)


def assert_same(a, b, where: str = "checkpoint") -> None:
    """``a`` and ``b`` equal bit for bit, tensors and arrays included, however nested."""
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), f"{where} differs from the uninterrupted run"
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), f"{where} differs from the uninterrupted run"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where} differs from the uninterrupted run"


def assert_same_run(resumed: Path, reference: Path) -> None:
    """Everything the final checkpoints hold (parameters, optimizer state, RNG states, step, extra
    tensors), and every metrics record, as the uninterrupted run's."""
    assert_same(checkpoint(resumed), checkpoint(reference))
    assert RunDir(resumed).read_metrics() == RunDir(reference).read_metrics()


def in_process(*args: str) -> dict:
    """``pyro-vrm train ...`` run by this process (its imports already paid for), on one thread as
    the subprocesses are, so that its floats are theirs; the summary it wrote."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(list(args)) == 0
    finally:
        torch.set_num_threads(threads)
    return json.loads((Path(args[args.index("--out") + 1]) / "summary.json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """``reference()``: (folder, summary) of an uninterrupted run of the resume tests' settings,
    fitted on first use (while the first test's run trains up to the step it holds at)."""
    run, summary = tmp_path_factory.mktemp("loop") / "reference", {}

    def get() -> tuple[Path, dict]:
        if not summary:
            summary.update(in_process(*RESUMABLE, "--out", str(run)))
        return run, summary

    return get


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_a_stopped_run_resumed_ends_as_the_uninterrupted_run(reference, tmp_path, sig):
    """A real training process, held in step 33 (tests/stoppable_cli.py) and stopped there by the
    signal, then resumed with --resume, ends as the uninterrupted run: every checkpointed tensor
    and every metrics record equal, bit for bit, and the same test accuracy."""
    run, ready = tmp_path / "run", tmp_path / "held"
    proc = held(*RESUMABLE, "--out", str(run), step=HOLD_STEP, ready=ready)
    try:
        reference_run, reference_summary = reference()
        wait_until_held(proc, ready)
        assert RunDir(run).read_metrics()[-1]["step"] == 30  # records past the last checkpoint
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    if sig == signal.SIGTERM:  # the step in flight finishes, is checkpointed, and the run exits cleanly
        assert proc.returncode == 128 + signal.SIGTERM, err
        assert checkpoint(run)["step"] == HOLD_STEP
        assert f"stopped after step {HOLD_STEP};" in err
    else:  # the last periodic checkpoint survives
        assert proc.returncode == -signal.SIGKILL
        assert checkpoint(run)["step"] == 20
    assert not list((run / "checkpoint").glob(".*.tmp"))
    summary = in_process(*RESUMABLE, "--out", str(run), "--resume")
    assert_same_run(run, reference_run)
    assert summary["test_accuracy"] == reference_summary["test_accuracy"]


def test_resume_refuses_other_settings(tmp_path, small_data):
    run = tmp_path / "run"
    fit_vrm(small_data.train, train_config=TrainConfig(steps=20, log_every=10, weight_decay=0.0), run=RunDir(run),
            progress=False)
    with pytest.raises(ConfigError, match=r"other settings \(train\)"):
        fit_vrm(small_data.train, train_config=TrainConfig(steps=30, log_every=10, weight_decay=0.0), run=RunDir(run),
                progress=False, resume=True)


def test_resume_without_a_checkpoint_starts_afresh(small_data, tmp_path):
    cfg = TrainConfig(steps=20, batch_size=64, log_every=10)
    fresh, _ = fit_vrm(small_data.train, train_config=cfg, run=RunDir(tmp_path / "a"), progress=False)
    resumed, _ = fit_vrm(small_data.train, train_config=cfg, run=RunDir(tmp_path / "b"), progress=False,
                         resume=True)
    assert all(torch.equal(p, q) for p, q in zip(fresh.parameters(), resumed.parameters()))


def test_a_monitor_that_draws_leaves_the_fit_as_it_was(small_data):
    import random

    import pyro

    def drawing_monitor(vrm) -> dict:  # as a posterior predictive on held-out pairs does
        return {"draws": float(torch.randn(3).sum() + pyro.sample("x", pyro.distributions.Normal(0.0, 1.0))
                               + np.random.rand() + random.random())}

    cfg = TrainConfig(steps=20, batch_size=64, log_every=5)
    plain, _ = fit_vrm(small_data.train, train_config=cfg, progress=False)
    monitored, _ = fit_vrm(small_data.train, train_config=cfg, progress=False, monitor=drawing_monitor)
    assert all(torch.equal(p, q) for p, q in zip(plain.parameters(), monitored.parameters()))


def test_a_monitor_that_raises_stop_training_ends_the_fit_after_that_step(small_data, tmp_path):
    from pyro_vrm.loop import StopTraining
    snapshots = []

    def monitor(vrm) -> dict:
        snapshots.append([p.detach().clone() for p in vrm.parameters()])
        if len(snapshots) == 3:
            raise StopTraining({"scored": 3})  # what it measured at the last step is logged too
        return {"scored": len(snapshots)}

    cfg = TrainConfig(steps=40, batch_size=64, log_every=5, checkpoint_every=40, weight_decay=0.0)
    run = RunDir(tmp_path)
    vrm, _ = fit_vrm(small_data.train, train_config=cfg, run=run, progress=False, monitor=monitor)
    assert len(snapshots) == 3  # no step after the one whose monitor raised
    assert all(torch.equal(p, q) for p, q in zip(vrm.parameters(), snapshots[-1]))
    assert [(r["step"], r["scored"]) for r in run.read_metrics()] == [(5, 1), (10, 2), (15, 3)]
    assert checkpoint(tmp_path)["step"] == 15  # the state it stopped in is the one saved


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
    proc = subprocess.run(command, check=False, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1, "only the main process prints the summary"
    return json.loads(proc.stdout[proc.stdout.index("{"):])


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    # The Bradley-Terry loss is deterministic, so data parallelism must reproduce the
    # single-process fit up to float rounding in the gradient average, after any number of steps.
    rm = ["--steps", "50", "--batch-size", "128", "--model", "rm"]
    launch_two(*TRAIN, *rm, "--out", str(tmp_path / "rm2"))
    in_process(*TRAIN, *rm, "--out", str(tmp_path / "rm1"))
    two, one = checkpoint(tmp_path / "rm2")["module"], checkpoint(tmp_path / "rm1")["module"]
    assert two.keys() == one.keys()
    for name in one:
        assert torch.allclose(two[name], one[name], atol=1e-4), name
    # VRM's ELBO is a Monte Carlo estimate, and each process draws its own samples, so the two
    # fits follow different noise: they must agree in what they learned, within sampling error.
    # (Measured at these settings, seeds 0-2: two processes against one differ by at most 0.006
    # in accuracy, 0.0012 in test log loss and 0.5% in the ELBO; one process with another seed
    # differs by up to 0.02, 0.008 and 5%. The ELBO, about -17 per pair with the aspects'
    # likelihood, is compared relatively.)
    vrm = ["--steps", "200", "--batch-size", "128"]
    vrm2 = launch_two(*TRAIN, *vrm, "--out", str(tmp_path / "vrm2"))
    vrm1 = in_process(*TRAIN, *vrm, "--out", str(tmp_path / "vrm1"))
    assert abs(vrm2["test_accuracy"] - vrm1["test_accuracy"]) < 0.03
    assert abs(vrm2["test_log_loss"] - vrm1["test_log_loss"]) < 0.005
    assert abs(vrm2["elbo"] - vrm1["elbo"]) < 0.02 * abs(vrm1["elbo"])
    assert vrm1["test_accuracy"] > 0.65  # both learned: chance is 0.5, the oracle 0.79
    metrics = RunDir(tmp_path / "vrm2").read_metrics()
    assert [r["step"] for r in metrics] == list(range(10, 201, 10))


def test_two_processes_choose_the_default_weight_decay_together(tmp_path):
    # The validation scores are taken, and a validation fit is ended by its patience, on the main
    # process; every process must stop where it does and refit the same choice.
    summary = launch_two(*SMALL[:-2], "--steps", "40", "--batch-size", "128", "--validate-every", "5",
                         "--validation-patience", "1", "--out", str(tmp_path / "auto"))
    table = summary["weight_decay_selection"]
    assert all(row["last_scored_step"] in (40, row["steps"] + 5) for row in table)
    assert any(row["last_scored_step"] < 40 for row in table)
    assert [row["weight_decay"] for row in table] == list(WEIGHT_DECAY_GRID)
    best = max(table, key=lambda row: (row["validation_log_lik"], row["weight_decay"]))
    assert summary["weight_decay"] == best["weight_decay"]
    assert checkpoint(tmp_path / "auto")["step"] == best["steps"]


def small_text_pairs(path: Path, num_prompts: int = 24) -> Path:
    """A small preference file (layout ``pairs``, two pairs per prompt): the text path at a
    fraction of simulated-text's cost, which the fit below does not need."""
    topics = ["bake bread", "fix a bike", "learn chess", "plant tomatoes", "write a poem", "save money"]
    good = ["Here are the steps, one by one, with the reasons for each.", "Start small, check each part, then go on."]
    bad = ["No idea, look it up.", "That is too hard to explain here."]
    with path.open("w") as f:
        for i in range(num_prompts):
            prompt = f"Question {i}: how do I {topics[i % len(topics)]}?"
            for j in range(2):
                f.write(json.dumps({"prompt": prompt, "chosen": f"{good[j]} First, {topics[(i + j) % 6]}.",
                                    "rejected": bad[(i + j) % 2]}) + "\n")
    return path


def test_two_processes_train_lora_adapters_as_one_process_does(tiny_causal_lm, tmp_path):
    """The backbone runs outside DDP's forward (TextPairs.batch), yet its adapters' gradients must
    be averaged across processes like the head's: the fit matches one process's."""
    flags = ["train", "--quiet", "--model", "rm", "--data", str(small_text_pairs(tmp_path / "pairs.jsonl")),
             "--backbone", str(tiny_causal_lm), "--max-length", "48", "--finetune", "lora", "--lora-rank", "4",
             "--steps", "12", "--batch-size", "8", "--width", "16", "--cache-dir", str(tmp_path / "cache")]
    launch_two(*flags, "--out", str(tmp_path / "two"))
    in_process(*flags, "--out", str(tmp_path / "one"))
    two, one = checkpoint(tmp_path / "two"), checkpoint(tmp_path / "one")
    assert two["adapters"].keys() == one["adapters"].keys()
    for name in one["adapters"]:
        assert torch.allclose(two["adapters"][name], one["adapters"][name], atol=1e-5), name
    assert any(t.abs().sum() > 0 for name, t in one["adapters"].items() if "lora_B" in name)
    for name in one["module"]:
        assert torch.allclose(two["module"][name], one["module"][name], atol=1e-5), name


def test_a_fit_is_in_full_precision_whatever_mixed_precision_the_process_holds(tmp_path):
    """accelerate's state is one per process: a TRL trainer run before a fit leaves bf16 in it. The
    loop opts out of autocast, so the fit is the one a fresh process makes (and Pyro's Dirichlet,
    which has no bf16 kernel, samples at all)."""
    script = ("import sys; from accelerate import Accelerator; Accelerator(cpu=True, mixed_precision='bf16'); "
              "from pyro_vrm.cli import main; sys.exit(main(sys.argv[1:]))")
    run = [*TRAIN, "--steps", "20", "--batch-size", "64"]
    proc = subprocess.run([sys.executable, "-c", script, *run, "--out", str(tmp_path / "bf16")], env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    in_process(*run, "--out", str(tmp_path / "fresh"))
    after, fresh = checkpoint(tmp_path / "bf16")["module"], checkpoint(tmp_path / "fresh")["module"]
    for name in fresh:
        assert torch.allclose(after[name], fresh[name], atol=1e-6), name
