"""Every `mmh-jax` command on bad input: one clear error line, a non-zero exit code, good outputs untouched.

Bad input here: NaN/inf data, empty arrays, wrong shapes and dtypes, missing files, files that are
not what their name says (damaged .npz/.npy, broken PNGs, a directory named like a file), a
checkpoint of another model or a damaged one, an unwritable or full ``--out``. By default no
traceback is printed; ``--debug`` (before or after the subcommand) prints it. Commands run in
process through ``cli.main`` (as the other CLI tests do); one tiny training run serves the
checkpoint cases.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from mmh_jax import cli


def _error_line(err: str, command: str) -> str:
    """The one error line of ``err``; fails on a traceback or on several error lines."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith(f"mmh-jax {command}: error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Bad data files, one per failure mode, plus a good 2-D data set."""
    d = tmp_path_factory.mktemp("bad_files")
    good = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
    np.save(d / "good.npy", good)
    np.save(d / "nan.npy", np.where(np.arange(64)[:, None] == 3, np.nan, good))
    np.save(d / "inf.npy", np.where(np.arange(64)[:, None] == 5, np.inf, good))
    np.save(d / "empty.npy", np.zeros((0, 2), np.float32))
    np.save(d / "no_columns.npy", np.zeros((10, 0), np.float32))
    np.save(d / "vector.npy", np.zeros((10,), np.float32))
    np.save(d / "strings.npy", np.array([["a", "b"]] * 20))
    np.save(d / "complex.npy", np.ones((20, 2), np.complex64))
    np.save(d / "wide.npy", np.zeros((20, 3), np.float32))
    np.savez(d / "two_arrays.npz", a=good, b=good)
    (d / "damaged.npz").write_bytes(b"PK\x03\x04 this is not a zip archive")
    (d / "damaged.npy").write_bytes(b"\x93NUMPY\x07\x00 garbage")
    (d / "folder.npz").mkdir()
    (d / "broken_png").mkdir()
    (d / "broken_png" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return d


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory, tiny_run):
    """A tiny trained run (conftest), a copy whose saved config names another network (the "other
    model"), and a copy whose parameter files are damaged."""
    base = tmp_path_factory.mktemp("runs")
    good = tiny_run
    (step,) = os.listdir(good / "checkpoints")

    other = base / "other_model"
    shutil.copytree(good, other)
    meta = other / "checkpoints" / step / "meta" / "metadata"
    saved = json.loads(meta.read_text())
    saved["config"]["model_kwargs"]["hidden"] = 64  # the stored parameters are 128 wide
    meta.write_text(json.dumps(saved))

    damaged = base / "damaged"
    shutil.copytree(good, damaged)
    for root, _, names in os.walk(damaged / "checkpoints" / step / "state"):
        for name in names:
            if name not in ("commit_success.txt", "_CHECKPOINT_METADATA"):
                with open(os.path.join(root, name), "r+b") as fh:
                    fh.truncate(max(os.path.getsize(os.path.join(root, name)) // 3, 1))
    return {"good": good, "other_model": other, "damaged": damaged}


def _contents(directory) -> dict[str, bytes]:
    """{name: bytes} of the files in ``directory``."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.fixture
def good_out(tmp_path):
    """An --out directory holding the outputs of an earlier, successful run (lid.npz of `lid`,
    samples.npz of `sample`); a failing command, even with --overwrite, must leave it as it is.

    Returns the directory and its contents (compare with `_contents`)."""
    out = tmp_path / "result"
    out.mkdir()
    np.savez(out / "lid.npz", lid=np.arange(5, dtype=np.float32))
    np.savez(out / "samples.npz", x=np.zeros((3, 2), np.float32))
    return out, _contents(out)


LID_DATA_CASES = [
    ("nan.npy", "non-finite"),
    ("inf.npy", "non-finite"),
    ("empty.npy", "empty"),
    ("no_columns.npy", "empty"),
    ("vector.npy", r"shape \(N, D\)"),
    ("strings.npy", "numeric"),
    ("complex.npy", "numeric"),
    ("two_arrays.npz", "under the key 'x'"),
    ("damaged.npz", "not a readable numpy"),
    ("damaged.npy", "not a readable numpy"),
    ("folder.npz", "not a readable numpy"),
    ("missing.npz", "not found"),
]


@pytest.mark.parametrize("name, match", LID_DATA_CASES, ids=[c[0] for c in LID_DATA_CASES])
def test_lid_bad_data(files, good_out, capsys, name, match):
    out, before = good_out
    rc = cli.main(["lid", "--data", str(files / name), "--k", "5", "--out", str(out), "--overwrite"])
    assert rc == 2
    line = _error_line(capsys.readouterr().err, "lid")
    assert re.search(match, line), line
    assert _contents(out) == before


@pytest.mark.parametrize("name, match", [("nan.npy", "non-finite"), ("empty.npy", "empty"),
                                         ("wide.npy", "dimension D=2")])
def test_lid_bad_queries(files, good_out, capsys, name, match):
    out, before = good_out
    rc = cli.main(["lid", "--data", str(files / "good.npy"), "--k", "5", "--queries", str(files / name),
                   "--out", str(out), "--overwrite"])
    assert rc == 2
    assert match in _error_line(capsys.readouterr().err, "lid")
    assert _contents(out) == before


TRAIN_DATA_CASES = [
    ("nan.npy", "non-finite"),
    ("inf.npy", "non-finite"),
    ("empty.npy", "no points"),
    ("vector.npy", "images must have shape"),
    ("strings.npy", "numeric"),
    ("damaged.npz", "not a readable numpy"),
    ("damaged.npy", "not a readable numpy"),
    ("broken_png", "not a readable image"),
    ("missing.npy", "no such file"),
]


@pytest.mark.parametrize("name, match", TRAIN_DATA_CASES, ids=[c[0] for c in TRAIN_DATA_CASES])
def test_train_bad_data_fails_before_training(files, tmp_path, capsys, name, match):
    out = tmp_path / "run"
    rc = cli.main(["train", "--preset", "quick", "--steps", "5", "--data", str(files / name), "--out", str(out)])
    assert rc == 2
    assert match in _error_line(capsys.readouterr().err, "train")
    assert not out.exists()  # nothing written: the data are checked before the run directory is made


@pytest.mark.parametrize("which, match", [("missing", "no such directory"), ("empty_dir", "no checkpoint found")])
@pytest.mark.parametrize("command", ["sample", "lid"])
def test_missing_checkpoints(tmp_path, good_out, capsys, command, which, match):
    ckpt = {"missing": tmp_path / "nope", "empty_dir": tmp_path}[which]
    out, before = good_out
    rc = cli.main([*CHECKPOINT_COMMANDS[command], "--checkpoint", str(ckpt), "--out", str(out), "--overwrite"])
    assert rc == 2
    assert match in _error_line(capsys.readouterr().err, command)
    assert _contents(out) == before


CHECKPOINT_COMMANDS = {
    "sample": ["sample", "--n", "4", "--num-steps", "2"],
    "lid": ["lid", "--estimator", "flipd", "--preset", "quick", "--n", "4"],
    "run": ["run", "--preset", "quick", "--data", "lollipop"],
}

# A failed orbax restore leaves read coroutines whose finalizers report at some later moment (as
# unraisable exceptions that fail whichever test is running then), so these cases run in one child
# process: cli.main on each argv, (exit code, stderr) back as JSON.
_CHILD = """
import contextlib, io, json, sys
from mmh_jax import cli
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    results.append([rc, err.getvalue()])
print(json.dumps(results))
"""


def test_checkpoints_of_another_model_or_damaged(run_dirs, tmp_path):
    """sample, lid and run on a checkpoint whose config names another network, and on one with
    truncated parameter files: a one-line error each, and the earlier outputs stay as they were
    (sample and lid with --overwrite: the earlier output is replaced only by a finished one)."""
    earlier = {"run": "metrics.json", "sample": "samples.npz", "lid": "lid.npz"}
    cases, outs = [], []
    for which in ("other_model", "damaged"):
        for command, argv in CHECKPOINT_COMMANDS.items():
            out = tmp_path / f"{command}_{which}" / earlier[command]
            out.parent.mkdir()
            out.write_bytes(b"an earlier, good result")
            cases.append((command, [*argv, "--checkpoint", str(run_dirs[which]), "--out", str(out.parent),
                                    *([] if command == "run" else ["--overwrite"])]))
            outs.append(out)
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps([argv for _, argv in cases])],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for (command, argv), (rc, err), out in zip(cases, results, outs):
        assert rc == 2, (argv, err)
        line = _error_line(err, command)
        assert "could not be restored" in line, argv
        if "other_model" in " ".join(argv):  # refused from the stored shapes, before any read
            assert "film_0.kernel: stored float32[128, 256], expected float32[128, 128]" in line, line
        assert out.read_bytes() == b"an earlier, good result", argv
        assert os.listdir(out.parent) == [out.name], argv


def test_lid_with_checkpoint_refuses_bad_points(run_dirs, files, good_out, capsys):
    out, before = good_out
    for name, match in [("nan.npy", "non-finite"), ("wide.npy", "event shape"), ("empty.npy", "no points"),
                        ("damaged.npz", "not a readable numpy")]:
        rc = cli.main(["lid", "--checkpoint", str(run_dirs["good"]), "--data", str(files / name), "--out", str(out),
                       "--overwrite"])
        assert rc == 2, name
        assert match in _error_line(capsys.readouterr().err, "lid"), name
    assert _contents(out) == before


@pytest.mark.parametrize("where", [["--debug", "lid"], ["lid", "--debug"]])
def test_debug_shows_the_traceback(files, tmp_path, capsys, where):
    rc = cli.main([*where, "--data", str(files / "nan.npy"), "--out", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "load_array" in err
    assert err.strip().splitlines()[-1].startswith("mmh-jax lid: error: ")


def test_unexpected_errors_are_one_line_too(monkeypatch, tmp_path, capsys):
    from mmh_jax.experiments import lid_cmd

    def broken(config, out, *, overwrite=False):
        raise RuntimeError("something\nunforeseen")

    monkeypatch.setattr(lid_cmd, "run", broken)
    assert cli.main(["lid", "--out", str(tmp_path / "o")]) == 1
    line = _error_line(capsys.readouterr().err, "lid")
    assert line == "mmh-jax lid: error: RuntimeError: something unforeseen (run with --debug for the traceback)"
    assert cli.main(["--debug", "lid", "--out", str(tmp_path / "o")]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_ctrl_c_outside_training_exits_130_without_traceback(monkeypatch, tmp_path, capsys):
    """Ctrl-C (a real SIGINT to this process) during `lid`: the CLI's handler records it, the work
    stops at its next safe point (``_interrupt.check()``), exit 130 with a message, no traceback."""
    import signal
    import time

    from mmh_jax import _interrupt
    from mmh_jax.experiments import lid_cmd

    reached = []

    def interrupted(config, out, *, overwrite=False):
        os.kill(os.getpid(), signal.SIGINT)  # recorded by the CLI's handler, not raised here
        deadline = time.monotonic() + 5
        while _interrupt.requested() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        _interrupt.check()  # the safe point: raises Interrupted
        reached.append("after the safe point")

    monkeypatch.setattr(lid_cmd, "run", interrupted)
    # A runner started in the background of a script inherits SIGINT as ignored, which the CLI keeps
    # (as Python does): give this process Python's own handler, whatever started it.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        before = signal.getsignal(signal.SIGINT)
        rc = cli.main(["lid", "--out", str(tmp_path / "o")])
        after = signal.getsignal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, inherited)
    assert rc == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "mmh-jax lid: interrupted by SIGINT" in err, err
    assert reached == []
    assert after is before  # the caller's handler is back


@pytest.fixture
def no_work(monkeypatch):
    """Record calls of the commands' work functions: an --out problem must stop before any of them."""
    from mmh_jax.experiments import lid_cmd, sample_cmd, training, validation
    from mmh_jax.experiments.pipeline import run as pipeline_run

    calls = []
    for mod, name in ((lid_cmd, "run"), (sample_cmd, "run"), (training, "train_or_resume"), (validation, "run"),
                      (pipeline_run, "run")):
        monkeypatch.setattr(mod, name, lambda *a, _m=mod.__name__, **k: calls.append(_m))
    return calls


COMMANDS = {
    "train": ["train", "--preset", "quick"],
    "lid": ["lid", "--preset", "quick"],
    "sample": ["sample", "--checkpoint", "somewhere"],
    "run": ["run", "validation", "--preset", "quick"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_out_below_a_file_is_refused_before_work(tmp_path, capsys, no_work, command):
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    rc = cli.main([*COMMANDS[command], "--out", str(blocker / "sub" / "out")])
    assert rc == 2 and no_work == []
    assert "is a file, not a directory" in _error_line(capsys.readouterr().err, command)
    assert blocker.read_text() == "keep me"


def test_unwritable_out_is_refused_before_work(tmp_path, capsys, no_work, monkeypatch):
    import tempfile

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", denied)  # root ignores file modes: simulate a read-only folder
    rc = cli.main(["train", "--preset", "quick", "--out", str(tmp_path / "run")])
    assert rc == 2 and no_work == []
    line = _error_line(capsys.readouterr().err, "train")
    assert "is not writable" in line and "Permission denied" in line
    assert list(tmp_path.iterdir()) == []


def test_full_disk_is_refused_before_work(tmp_path, capsys, no_work, monkeypatch):
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=3 * 2**20))
    rc = cli.main(["lid", "--preset", "quick", "--out", str(tmp_path / "lid")])
    assert rc == 2 and no_work == []
    assert "only 3.0 MiB free" in _error_line(capsys.readouterr().err, "lid")


def test_writable_out_passes_the_check_and_creates_nothing(tmp_path):
    cli.check_out(str(tmp_path / "new" / "deeper" / "out"))
    cli.check_out(str(tmp_path))
    existing = tmp_path / "old.npz"
    existing.write_bytes(b"x")
    cli.check_out(str(existing))  # writable; that --out names a file is refused later, by the command
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.npz"]
