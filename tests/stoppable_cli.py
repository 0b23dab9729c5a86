"""``python tests/stoppable_cli.py train ...``: ``pyro_vrm.cli`` that, told by the environment,
holds still in the middle of a known step until a signal comes, so that a test can stop a real
training process at that step deterministically, however slow the machine (used by test_loop.py).

``PYRO_VRM_TEST_HOLD=STEP:READY_FILE`` makes the run, in step STEP after its minibatch is drawn and
before its loss is computed, install a SIGTERM handler that records the signal and hands it on to
the one the training loop installed, write READY_FILE, and wait. SIGKILL kills it there (step STEP
in flight, unfinished); after SIGTERM it goes on with the step as the loop would, so the loop's
own handling of SIGTERM decides what happens next. Nothing of the package changes: the wait only
wraps ``pyro_vrm.loop._loss``, which counts the steps (a run that holds is a fresh one, so its
k-th loss is that of step k).
"""

import os
import signal
import sys
import time
from pathlib import Path

import pyro_vrm.loop
from pyro_vrm.cli import main

HOLD = "PYRO_VRM_TEST_HOLD"
GIVE_UP_S = 600  # a test that never signals must not leave a process waiting for ever


def hold_at(step: int, ready: Path) -> None:
    loss, calls = pyro_vrm.loop._loss, 0

    def held_loss(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == step:
            wait_for_a_signal(ready, step)
        return loss(*args, **kwargs)

    pyro_vrm.loop._loss = held_loss


def wait_for_a_signal(ready: Path, step: int) -> None:
    received = []
    previous = signal.getsignal(signal.SIGTERM)

    def record(signum, frame):
        received.append(signum)

    signal.signal(signal.SIGTERM, record)  # installed before READY_FILE exists: no signal is missed
    tmp = ready.with_name(ready.name + ".tmp")
    tmp.write_text(str(step))
    os.replace(tmp, ready)
    deadline = time.monotonic() + GIVE_UP_S
    while not received:
        if time.monotonic() > deadline:
            print(f"stoppable_cli: no signal within {GIVE_UP_S} s at step {step}", file=sys.stderr)
            os._exit(3)
        time.sleep(0.01)
    signal.signal(signal.SIGTERM, previous)
    if callable(previous):  # the training loop's handler: it decides what SIGTERM does
        previous(signal.SIGTERM, None)
    else:  # no handler of the loop's: SIGTERM does what it would have done to this process
        os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":
    if os.environ.get(HOLD):
        at, _, path = os.environ[HOLD].partition(":")
        hold_at(int(at), Path(path))
    sys.exit(main())
