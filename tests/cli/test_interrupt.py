"""Interrupted work: SIGTERM (and Ctrl-C) during `mmh-jax train` and `mmh-jax run` leave a checkpoint or
partial results, and the next run resumes from them.

Real `mmh-jax` subprocesses, signalled once their first checkpoint is on disk (polled); every wait has
a timeout. Exact resume of the training loop itself is tests/experiments/test_training.py (in-process); sweep restart
after SIGKILL is tests/test_sweep.py.
"""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import mmh_jax
from mmh_jax import cli, train
from mmh_jax.experiments import training
from mmh_jax.experiments.pipeline import config as pipeline_config
from mmh_jax.experiments.pipeline import images, toy
from mmh_jax.experiments.pipeline import run as pipeline_run
from mmh_jax.experiments.pipeline.common import Context, train_model

WAIT_S = 300  # generous per-process limit (2 shared, loaded cores); nothing waits without one

# 1500 steps of the quick MLP (~300 steps/s on 2 CPU cores), a checkpoint every 250 steps (one
# dispatch is 50 steps): several seconds of training remain after the first checkpoint appears.
TRAIN = ["train", "--preset", "quick", "--n", "500", "--steps", "1500", "--checkpoint-every", "250", "--seed", "3"]


def _start(args, log: Path) -> subprocess.Popen:
    fh = open(log, "w")  # noqa: SIM115 - closed by _finish
    # Python's Ctrl-C handler installed first: a test runner started in the background (`cmd &`) ignores
    # SIGINT, the child inherits that, and Python then installs no KeyboardInterrupt at start-up.
    boot = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "sys.argv = ['mmh-jax', *sys.argv[1:]]; runpy.run_module('mmh_jax', run_name='__main__')")
    proc = subprocess.Popen([sys.executable, "-c", boot, *args], stdout=fh, stderr=subprocess.STDOUT,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
    proc.log_file, proc.log_path = fh, log
    return proc


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    try:
        rc = proc.wait(timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)
        raise
    finally:
        proc.log_file.close()
    return rc, proc.log_path.read_text()


def _signal_when(proc: subprocess.Popen, path: Path, signum: int) -> None:
    """Send ``signum`` to ``proc`` as soon as ``path`` exists; fail if it exits first or takes too long."""
    deadline = time.monotonic() + WAIT_S
    while not path.exists():
        if proc.poll() is not None:
            proc.log_file.close()
            pytest.fail(f"exited ({proc.returncode}) before {path} appeared:\n{proc.log_path.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{path} did not appear within {WAIT_S} s")
        time.sleep(0.05)
    proc.send_signal(signum)


def _leaves(out) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(mmh_jax.load(str(out)).params)]


@pytest.mark.parametrize("signum, code, exact", [
    (signal.SIGTERM, 143, False),
    # with an uninterrupted reference run alongside: ~60 s more on 2 loaded cores
    pytest.param(signal.SIGTERM, 143, True, marks=pytest.mark.slow),
    pytest.param(signal.SIGINT, 130, True, marks=pytest.mark.slow),  # Ctrl-C: the same path
])
def test_signal_during_train_saves_a_checkpoint_and_resume_continues_it(tmp_path, signum, code, exact):
    part, ref = tmp_path / "part", tmp_path / "ref"
    proc = _start([*TRAIN, "--out", str(part)], tmp_path / "part.log")
    reference = _start([*TRAIN, "--out", str(ref)], tmp_path / "ref.log") if exact else None
    try:
        _check_interrupted_training(proc, reference, part, ref, tmp_path, signum, code)
    finally:  # a failed assertion must not leave the reference run (and its log file) behind
        if reference is not None and reference.poll() is None:
            reference.kill()
            reference.wait()
        if reference is not None:
            reference.log_file.close()


def _check_interrupted_training(proc, reference, part, ref, tmp_path, signum, code):
    _signal_when(proc, part / "checkpoints" / "250", signum)
    rc, log = _finish(proc)
    assert rc == code, log[-3000:]
    saved = mmh_jax.load(str(part))  # readable, and holds the step the training reached
    assert 250 <= saved.step < 1500 and saved.step % 50 == 0
    assert f"interrupted: checkpoint saved at step {saved.step}" in log

    rc, log = _finish(_start([*TRAIN, "--resume", "--out", str(part)], tmp_path / "resume.log"))
    assert rc == 0 and "trained to step 1500" in log, log[-3000:]
    steps = [json.loads(line)["step"] for line in (part / "train_log.jsonl").read_text().splitlines()]
    after = list(range(saved.step + 50, 1501, 50))  # the resumed run logs on from the saved step, not from 0
    assert steps[-len(after):] == after and max(steps[:-len(after)]) <= saved.step, steps
    if reference is not None:  # the parameters of an uninterrupted run (in-process version: tests/experiments/test_training.py)
        rc, log = _finish(reference)
        assert rc == 0, log[-3000:]
        for a, b in zip(_leaves(part), _leaves(ref), strict=True):
            np.testing.assert_array_equal(a, b)


def test_sigterm_is_handled_like_ctrl_c_and_the_handler_restored(tmp_path, monkeypatch, capsys):
    """In-process: the CLI's handler records a SIGTERM, the command stops at its next safe point
    (``_interrupt.check()`` raises a KeyboardInterrupt there; exit 143), and the caller's SIGTERM
    handler is back afterwards."""
    from mmh_jax import _interrupt

    assert threading.current_thread() is threading.main_thread()  # signal handlers need the main thread
    seen = []

    def fake_run(config, out, *, resume=False, overwrite=False, progress=True):
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # recorded by the CLI's handler, not raised here
            deadline = time.monotonic() + 5  # the handler runs in the main thread soon after delivery
            while _interrupt.requested() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            seen.append(_interrupt.requested())
            _interrupt.check()  # the safe point
        except KeyboardInterrupt:
            seen.append("interrupted")
            raise
        return {"interrupted": False, "step": 0, "start": 0, "saved": False, "loss": 0.0}

    monkeypatch.setattr(training, "train_or_resume", fake_run)
    mine = lambda signum, frame: None  # noqa: E731
    before = signal.signal(signal.SIGTERM, mine)
    try:
        t = time.monotonic()
        assert cli.main(["train", "--out", str(tmp_path / "t")]) == 143
        assert time.monotonic() - t < 5 and seen == [signal.SIGTERM, "interrupted"]
        assert "interrupted by SIGTERM" in capsys.readouterr().err
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, before)


TINY = dict(data="lollipop", n=500, model="mlp", model_kwargs={"hidden": 16, "num_layers": 2}, batch_size=32,
            steps_per_call=10, checkpoint_every=1000, warmup_steps=5, steps=40)


def test_run_stops_on_an_interrupted_training_and_the_rerun_continues_it(tmp_path, monkeypatch, capsys):
    """`run`'s cached training: an interrupt saves the checkpoint and stops (no half-trained model goes on
    to the experiment); the rerun says it resumes and trains the rest."""
    ctx = Context(out=str(tmp_path), progress=True)
    original = train.make_train_loop

    def interrupted_at_20(*a, **k):
        loop = original(*a, **k)

        def wrapped(state, *args):
            if int(state.step) >= 20:
                raise KeyboardInterrupt
            return loop(state, *args)

        return wrapped

    monkeypatch.setattr(train, "make_train_loop", interrupted_at_20)
    with pytest.raises(KeyboardInterrupt):
        train_model(ctx, "toy", training.TrainConfig(**TINY))
    assert mmh_jax.load(str(tmp_path / "models" / "toy")).step == 20
    monkeypatch.setattr(train, "make_train_loop", original)
    capsys.readouterr()
    model = train_model(ctx, "toy", training.TrainConfig(**TINY))
    assert model.step == 40
    err = capsys.readouterr().err
    assert "[toy] resuming the training" in err and "from its checkpoint at step 20 of 40" in err


@pytest.mark.slow  # two `mmh-jax run toy --preset quick` processes, ~90 s on 2 loaded cores
def test_sigterm_during_run_keeps_the_model_and_the_rerun_reuses_it(tmp_path):
    out = tmp_path / "run"
    args = ["run", "toy", "--preset", "quick", "--out", str(out)]
    proc = _start(args, tmp_path / "first.log")
    checkpoint = out / "models" / "toy" / "checkpoints" / "200"  # the quick toy model's only checkpoint
    _signal_when(proc, checkpoint, signal.SIGTERM)
    rc, log = _finish(proc)
    assert rc == 143, log[-3000:]
    assert "interrupted during toy" in log and "Rerun the same command to resume" in log
    assert not (out / "metrics.json").exists() or "toy" not in json.loads((out / "metrics.json").read_text())
    stamps = {p: p.stat().st_mtime_ns for p in checkpoint.rglob("*") if p.is_file()}
    assert stamps

    rc, log = _finish(_start(args, tmp_path / "second.log"))
    assert rc == 0, log[-3000:]
    assert "[toy] reusing the model trained earlier" in log
    assert {p: p.stat().st_mtime_ns for p in checkpoint.rglob("*") if p.is_file()} == stamps
    metrics = json.loads((out / "metrics.json").read_text())
    assert sum(metrics["toy"]["counts"].values()) == 128  # the quick preset's n_samples
    # a third run finds toy finished with the same configuration and keeps it
    rc, log = _finish(_start(args, tmp_path / "third.log"))
    assert rc == 0 and "[toy] finished by an earlier run" in log, log[-3000:]
    assert json.loads((out / "metrics.json").read_text())["toy"] == metrics["toy"]


def test_a_rerun_keeps_only_experiments_finished_with_the_same_configuration(tmp_path, monkeypatch):
    """pipeline.run.run into the same out keeps an experiment's earlier metrics.json entry only for the same
    configuration (but the experiment selection), seed and package versions, with its figures on disk, and
    never for --checkpoint; otherwise it computes the experiment again (here: stand-ins that draw a figure)."""
    computed = []

    def stand_in(name):
        def run(config, ctx):
            computed.append(name)
            Path(ctx.out, f"{name}.png").write_bytes(b"png")
            return {"figures": [f"{name}.png"]}
        return run

    monkeypatch.setattr(toy, "run", stand_in("toy"))
    monkeypatch.setattr(images, "run", stand_in("images"))
    out = tmp_path / "out"

    def rerun(config, where=out):
        computed.clear()
        pipeline_run.run(config, str(where), progress=False)
        return list(computed)

    def edit_metrics(change):
        metrics = json.loads((out / "metrics.json").read_text())
        change(metrics)
        (out / "metrics.json").write_text(json.dumps(metrics))

    quick = pipeline_config.preset("quick", experiments=["toy"])
    assert rerun(quick) == ["toy"]
    assert rerun(quick) == []  # kept
    assert rerun(pipeline_config.preset("quick", experiments=["toy", "images"])) == ["images"]  # selection aside
    assert rerun(dataclasses.replace(quick, toy=dataclasses.replace(quick.toy, n_samples=64))) == ["toy"]
    assert rerun(quick) == ["toy"]  # and back
    edit_metrics(lambda m: m.update(seed=1))  # the recorded identity still says seed 0
    assert rerun(quick) == ["toy"]
    edit_metrics(lambda m: m["provenance"]["versions"].update(jax="0.0"))
    assert rerun(quick) == ["toy"]
    assert rerun(quick) == []
    (out / "toy.png").unlink()
    assert rerun(quick) == ["toy"]
    own = pipeline_config.preset("quick", experiments=["images"], checkpoint=str(tmp_path / "run"), data="digits")
    assert rerun(own, tmp_path / "own") == ["images"]
    assert rerun(own, tmp_path / "own") == ["images"]  # a user's model may have been retrained since
