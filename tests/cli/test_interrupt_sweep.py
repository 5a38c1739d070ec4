"""A signal at any moment of `mmh-jax train` and `mmh-jax run` ends the process promptly with 130/143,
no traceback and a truthful message about what was saved (issue 16).

Each case is a real child process (tests/cli/interrupt_child.py) that signals itself at a named moment, so
the moment is the same on every run whatever the load: during the imports, before the model exists,
during the first compile (sent from a timer thread while XLA runs), after the first steps, in the
middle of training, at the start of a save, and between two experiments of `run`. The default tier
runs each moment once (SIGINT and SIGTERM alternate); the slow tier runs every moment with both
signals, five times each.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import mmh_jax

CHILD = Path(__file__).with_name("interrupt_child.py")
WAIT_S = 300
STEPS = 600
TRAIN = ["train", "--preset", "quick", "--n", "256", "--steps", str(STEPS), "--checkpoint-every", "200",
         "--seed", "3"]
#: moment -> whether a checkpoint must exist afterwards
TRAIN_POINTS = {"import": False, "data": False, "compile": True, "first_steps": True, "mid": True, "save": True}
CODES = {"SIGINT": 130, "SIGTERM": 143}


def _child(point: str, sig: str, args: list[str]) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, str(CHILD), point, sig, *args], capture_output=True, text=True,
                          timeout=WAIT_S, stdin=subprocess.DEVNULL, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    return proc.returncode, proc.stdout + proc.stderr


def _steps(out: Path) -> list[int]:
    ckpts = out / "checkpoints"
    return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) if ckpts.is_dir() else []


def _check_train(tmp_path: Path, point: str, sig: str) -> None:
    out = tmp_path / f"{point}-{sig}"
    rc, log = _child(point, sig, [*TRAIN, "--out", str(out)])
    assert rc == CODES[sig], log[-3000:]
    assert "Traceback" not in log and "Exception ignored" not in log, log[-3000:]
    assert f"trained to step {STEPS}" not in log, log[-3000:]  # it stopped, not ran on to the end
    steps = _steps(out)
    if not TRAIN_POINTS[point]:
        assert steps == [], (steps, log[-3000:])
        assert "interrupted" in log and "checkpoint saved" not in log, log[-3000:]
        if point == "data":  # the training had begun: say there is nothing to resume
            assert "no checkpoint yet, nothing to resume" in log, log[-3000:]
        return
    assert steps and steps[-1] < STEPS, (steps, log[-3000:])
    assert f"interrupted: checkpoint saved at step {steps[-1]} " in log, log[-3000:]
    assert mmh_jax.load(str(out)).step == steps[-1]  # the newest checkpoint is whole
    if point == "save":  # the save the signal landed in completed
        assert steps[-1] == 200, steps
    logged = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert max(logged) == steps[-1], (logged, steps)


def _check_run(tmp_path: Path, sig: str) -> None:
    out = tmp_path / f"run-{sig}"
    rc, log = _child("between_experiments", sig, ["run", "toy", "images", "--preset", "quick", "--out", str(out)])
    assert rc == CODES[sig], log[-3000:]
    assert "Traceback" not in log and "Exception ignored" not in log, log[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert "toy" in metrics and "images" not in metrics, sorted(metrics)
    assert re.search(r"interrupted (after|during) \w+: .*metrics\.json holds toy", log), log[-3000:]
    assert not (out / "models" / "digits").exists()  # images never began


_ALTERNATING = [(p, "SIGINT" if i % 2 == 0 else "SIGTERM") for i, p in enumerate(TRAIN_POINTS)]


@pytest.mark.parametrize("point, sig", _ALTERNATING)
def test_a_signal_during_train_stops_it_and_says_what_was_saved(tmp_path, point, sig):
    _check_train(tmp_path, point, sig)


def test_a_signal_between_experiments_stops_run_after_the_finished_one(tmp_path):
    _check_run(tmp_path, "SIGTERM")


@pytest.mark.slow
@pytest.mark.parametrize("repeat", range(5))
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("point", list(TRAIN_POINTS))
def test_every_moment_every_signal_five_times(tmp_path, point, sig, repeat):
    _check_train(tmp_path, point, sig)


@pytest.mark.slow
@pytest.mark.parametrize("repeat", range(5))
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_run_between_experiments_every_signal_five_times(tmp_path, sig, repeat):
    _check_run(tmp_path, sig)
