"""Issue 16's rows about training flags, --resume, outputs and messages: each input, its exit code,
the message a user reads and the files before/after. In-process `mmh-jax` calls on tiny runs.
"""

import json
import os
import shutil

import numpy as np
import pytest

import mmh_jax
from mmh_jax import cli, train
from mmh_jax.experiments import training

#: A tiny quick-preset training (one dispatch is 50 steps).
TINY = ["train", "--preset", "quick", "--n", "128", "--seed", "3"]


def _files(root) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs} \
        if os.path.exists(root) else set()


def _main(argv, capsys) -> tuple[int, str]:
    """(exit code, stderr) of `mmh-jax ARGV`, argparse's own exits included."""
    try:
        rc = cli.main(argv)
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


def _patch_loops(monkeypatch, on_call: int, action) -> None:
    """The training loops ``train.make_train_loop`` builds run ``action(loop, args)`` at their
    ``on_call``-th call instead of the loop itself."""
    original = train.make_train_loop

    def make(*a, **k):
        loop, calls = original(*a, **k), [0]

        def wrapped(*args):
            calls[0] += 1
            return action(loop, args) if calls[0] == on_call else loop(*args)
        return wrapped

    monkeypatch.setattr(train, "make_train_loop", make)


def _ctrl_c(loop, args):
    raise KeyboardInterrupt


# -- numeric flags: refused before any work or file, the message names the flag ------------------------
BAD_FLAGS = [
    (["--lr", "-1"], "argument --lr: must be a finite number > 0, got -1"),
    (["--lr", "nan"], "argument --lr: must be a finite number > 0, got nan"),
    (["--lr", "inf"], "argument --lr: must be a finite number > 0, got inf"),
    (["--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
    (["--keep", "0"], "argument --keep: must be at least 1, got 0"),
    (["--keep", "-1"], "argument --keep: must be at least 1, got -1"),
    (["--seed", "-1"], "argument --seed: must be at least 0, got -1"),
    (["--steps", "0"], "argument --steps: must be at least 1, got 0"),
    (["--checkpoint-every", "0"], "argument --checkpoint-every: must be at least 1, got 0"),
    (["--n", "x"], "argument --n: must be an integer, got 'x'"),
]


@pytest.mark.parametrize("flags, message", BAD_FLAGS)
def test_train_flags_are_checked_before_any_file(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    rc, err = _main([*TINY, "--steps", "5", *flags, "--out", str(out)], capsys)
    assert rc == 2 and message in err, err
    assert not out.exists()


@pytest.mark.parametrize("argv", [
    ["run", "toy", "--preset", "quick", "--seed", "-1"],
    ["sample", "--checkpoint", "somewhere", "--seed", "-1"],
    ["lid", "--preset", "quick", "--seed", "-1"],
])
def test_seed_is_checked_by_every_command_before_any_file(tmp_path, capsys, argv):
    out = tmp_path / "out"
    rc, err = _main([*argv, "--out", str(out)], capsys)
    assert rc == 2 and "argument --seed: must be at least 0, got -1" in err, err
    assert not out.exists()


def test_library_config_refuses_the_same_values():
    for field, value in [("learning_rate", -1.0), ("learning_rate", float("nan")), ("batch_size", 0), ("keep", 0),
                         ("seed", -1)]:
        with pytest.raises(ValueError, match=f"{field} must be"):
            training.preset("quick", **{field: value})


# -- --resume ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run100(tmp_path_factory):
    out = tmp_path_factory.mktemp("run100") / "run"
    assert cli.main([*TINY, "--steps", "100", "--out", str(out)]) == 0
    return out


def test_resume_with_fewer_steps_than_done_names_both(run100, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(run100, out)
    before = _files(out)
    rc, err = _main([*TINY, "--steps", "20", "--resume", "--out", str(out)], capsys)
    assert rc == 2 and "--steps 20 is fewer than the 100 steps" in err, err
    assert _files(out) == before


def test_resume_where_no_run_exists_is_an_error(tmp_path, capsys):
    out = tmp_path / "nothing"
    rc, err = _main([*TINY, "--steps", "50", "--resume", "--out", str(out)], capsys)
    assert rc == 2 and "holds no checkpoint to resume" in err and "drop --resume" in err, err
    assert _files(out) == set()


def test_resume_of_a_finished_run_says_so_and_reports_its_last_loss(run100, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(run100, out)
    rc, err = _main([*TINY, "--steps", "100", "--resume", "--out", str(out)], capsys)
    assert rc == 0, err
    last = json.loads((out / "train_log.jsonl").read_text().splitlines()[-1])["loss"]
    assert f"already trained to step 100 (loss {last:.4f})" in err, err
    assert "nan" not in err


def test_a_second_train_into_the_same_out_is_refused_unless_overwrite(run100, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(run100, out)
    rc, err = _main([*TINY, "--steps", "50", "--out", str(out)], capsys)
    assert rc == 2 and "already holds a run" in err and "--overwrite" in err, err
    assert mmh_jax.load(str(out)).step == 100
    rc, err = _main([*TINY, "--steps", "50", "--overwrite", "--out", str(out)], capsys)
    assert rc == 0, err
    assert mmh_jax.load(str(out)).step == 50
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.isdigit()) == ["50"]


@pytest.mark.slow  # three quick trainings in-process (~30 s)
def test_resume_semantics_interrupted_is_exact_extended_is_a_warm_restart(tmp_path, capsys, monkeypatch):
    """The help's two promises: resuming an interrupted run gives the uninterrupted run's parameters;
    extending a finished run with a larger --steps re-plans the schedule (and says so), so it differs."""
    full, part, ext = tmp_path / "full", tmp_path / "part", tmp_path / "ext"
    assert cli.main([*TINY, "--steps", "200", "--checkpoint-every", "50", "--out", str(full)]) == 0
    original = train.make_train_loop
    _patch_loops(monkeypatch, 3, _ctrl_c)  # a Ctrl-C after the second dispatch (library path)
    assert cli.main([*TINY, "--steps", "200", "--checkpoint-every", "50", "--out", str(part)]) == 130
    monkeypatch.setattr(train, "make_train_loop", original)
    assert mmh_jax.load(str(part)).step == 100
    assert cli.main([*TINY, "--steps", "200", "--checkpoint-every", "50", "--resume", "--out", str(part)]) == 0
    leaves = lambda p: [np.asarray(x) for x in __import__("jax").tree_util.tree_leaves(mmh_jax.load(str(p)).params)]  # noqa: E731
    for a, b in zip(leaves(part), leaves(full), strict=True):
        np.testing.assert_array_equal(a, b)

    assert cli.main([*TINY, "--steps", "100", "--checkpoint-every", "50", "--out", str(ext)]) == 0
    capsys.readouterr()
    assert cli.main([*TINY, "--steps", "200", "--checkpoint-every", "50", "--resume", "--out", str(ext)]) == 0
    err = capsys.readouterr().err
    assert "extending it from 100 to 200 steps: the learning-rate schedule is planned anew" in err, err
    assert mmh_jax.load(str(ext)).step == 200
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(leaves(ext), leaves(full), strict=True))
    assert diff > 1e-4, diff  # as the help says: not the uninterrupted 200-step run


# -- a non-finite loss stops training and keeps the last good checkpoint ---------------------------------
def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    def nan_loss(loop, args):
        state, metrics = loop(*args)
        return state, {**metrics, "loss": metrics["loss"] * np.nan}

    _patch_loops(monkeypatch, 3, nan_loss)
    out = tmp_path / "run"
    rc, err = _main([*TINY, "--steps", "300", "--checkpoint-every", "100", "--out", str(out)], capsys)
    assert rc == 2, err
    assert "the loss became nan between steps 100 and 150" in err and "last good checkpoint is step 100" in err, err
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.isdigit()) == ["100"]


def test_diverging_data_stops_at_once_without_a_checkpoint(tmp_path, capsys):
    data = tmp_path / "huge.npy"
    np.save(data, np.full((64, 2), 3e38, np.float32))
    out = tmp_path / "run"
    rc, err = _main([*TINY, "--data", str(data), "--steps", "100", "--out", str(out)], capsys)
    assert rc == 2 and "the loss became" in err and "no checkpoint was saved" in err, err
    assert not any(p.name.isdigit() for p in (out / "checkpoints").iterdir())


# -- outputs: a directory the command fills, never overwritten unasked ----------------------------------
def test_lid_and_sample_fill_a_directory_and_never_overwrite(run100, tmp_path, capsys):
    out = tmp_path / "results"
    rc, err = _main(["sample", "--checkpoint", str(run100), "--n", "8", "--num-steps", "2", "--out", str(out)], capsys)
    assert rc == 0 and (out / "samples.npz").exists(), err
    first = (out / "samples.npz").read_bytes()
    rc, err = _main(["sample", "--checkpoint", str(run100), "--n", "4", "--num-steps", "2", "--out", str(out)], capsys)
    assert rc == 2 and "already holds samples.npz" in err and "--overwrite" in err, err
    assert (out / "samples.npz").read_bytes() == first
    # lid into the same folder: its own file, next to the samples
    rc, err = _main(["lid", "--preset", "quick", "--out", str(out)], capsys)
    assert rc == 0 and (out / "lid.npz").exists(), err
    lid_bytes = (out / "lid.npz").read_bytes()
    rc, err = _main(["lid", "--preset", "quick", "--out", str(out)], capsys)
    assert rc == 2 and "already holds lid.npz" in err, err
    assert (out / "lid.npz").read_bytes() == lid_bytes
    rc, err = _main(["sample", "--checkpoint", str(run100), "--n", "4", "--num-steps", "2", "--overwrite",
                     "--out", str(out)], capsys)
    assert rc == 0, err
    assert np.load(out / "samples.npz")["x"].shape[0] == 4
    assert oct(os.stat(out / "samples.npz").st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("command", ["sample", "lid"])
def test_an_out_that_names_a_file_is_refused(run100, tmp_path, capsys, command):
    target = tmp_path / "lid_theta.npz"
    target.write_bytes(b"an earlier result")
    extra = ["--checkpoint", str(run100), "--n", "4", "--num-steps", "2"] if command == "sample" else ["--preset", "quick"]
    for out in (target, tmp_path / "new.npz"):
        rc, err = _main([command, *extra, "--out", str(out)], capsys)
        assert rc == 2 and "names a file, but --out is the directory" in err, err
    assert target.read_bytes() == b"an earlier result" and not (tmp_path / "new.npz").exists()


# -- messages and figures ------------------------------------------------------------------------------
def test_interrupted_and_finished_messages_go_to_stderr(tmp_path, capsys, monkeypatch):
    _patch_loops(monkeypatch, 2, _ctrl_c)
    assert cli.main([*TINY, "--steps", "200", "--out", str(tmp_path / "run")]) == 130
    captured = capsys.readouterr()
    assert "interrupted: checkpoint saved at step 50" in captured.err and "interrupted" not in captured.out


def test_the_loss_figure_of_a_one_dispatch_run_shows_its_point(tmp_path):
    import matplotlib.image

    log = tmp_path / "train_log.jsonl"
    log.write_text(json.dumps({"step": 50, "loss": 0.7}) + "\n")
    training.plot_loss(str(log), str(tmp_path / "loss.png"))
    img = matplotlib.image.imread(tmp_path / "loss.png")[..., :3]
    blue = np.array([0x1F, 0x77, 0xB4]) / 255  # matplotlib's first colour, the loss marker
    assert (np.abs(img - blue).max(axis=-1) < 0.1).sum() > 4


@pytest.mark.slow  # a flow's training and sampler compile: ~40 s on 2 loaded cores
def test_sample_works_on_a_flow_run(tmp_path, capsys):
    run = tmp_path / "flow"
    assert cli.main(["train", "--model", "flow", "--preset", "quick", "--steps", "5", "--n", "64", "--out",
                     str(run)]) == 0
    rc, err = _main(["sample", "--checkpoint", str(run), "--n", "6", "--out", str(tmp_path / "s")], capsys)
    assert rc == 0, err
    x = np.load(tmp_path / "s" / "samples.npz")["x"]
    assert x.shape == (6, 2) and np.isfinite(x).all()
    rc, err = _main(["sample", "--checkpoint", str(run), "--method", "ddim", "--out", str(tmp_path / "t")], capsys)
    assert rc == 2 and "--method: the model in" in err and "normalizing flow" in err, err


# -- --step: a damaged newest checkpoint names the intact ones, and --step picks one --------------------
def test_step_picks_an_intact_checkpoint_when_the_newest_is_damaged(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main([*TINY, "--steps", "100", "--checkpoint-every", "50", "--out", str(run)]) == 0
    for root, _, files in os.walk(run / "checkpoints" / "100" / "state"):
        for f in files:
            path = os.path.join(root, f)
            if os.path.getsize(path) > 64:
                with open(path, "r+b") as fh:
                    fh.truncate(16)
    rc, err = _main(["sample", "--checkpoint", str(run), "--n", "4", "--num-steps", "2", "--out",
                     str(tmp_path / "a")], capsys)
    line = err.strip().splitlines()[-1]
    assert rc == 2 and "step 100" in line and "intact steps: [50]" in line and "--step 50" in line, err
    assert len(line) <= 300 + len("mmh-jax sample: error: "), line
    rc, err = _main(["sample", "--checkpoint", str(run), "--step", "50", "--n", "4", "--num-steps", "2", "--out",
                     str(tmp_path / "a")], capsys)
    assert rc == 0 and int(np.load(tmp_path / "a" / "samples.npz")["step"]) == 50, err
    rc, err = _main(["lid", "--checkpoint", str(run), "--step", "50", "--preset", "quick", "--n", "8",
                     "--t0-grid", "0.01", "1", "4", "--out", str(tmp_path / "b")], capsys)
    assert rc == 0 and "(step 50)" in err, err
    rc, err = _main(["lid", "--step", "50", "--preset", "quick", "--out", str(tmp_path / "c")], capsys)
    assert rc == 2 and "--step applies to" in err, err


# -- a signal inside a finalizer is not lost ------------------------------------------------------------
def test_a_signal_that_lands_in_a_finalizer_still_stops_the_command(tmp_path, capsys, monkeypatch):
    """Raising from the handler lost the interrupt when it landed in a GC callback or __del__ ("Exception
    ignored in ...") and the command ran on to exit 0; recorded, it stops at the next safe point."""
    import signal

    from mmh_jax import _interrupt

    reached = []

    class Finalized:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)

    def fake_run(config, out, **kwargs):
        obj = Finalized()
        del obj  # the signal arrives while the finalizer runs
        for _ in range(500):  # the work goes on to its next safe point
            if _interrupt.requested():
                break
            __import__("time").sleep(0.01)
        _interrupt.check()
        reached.append("after the safe point")
        return {"interrupted": False, "step": 1, "start": 0, "loss": 0.0}

    monkeypatch.setattr(training, "train_or_resume", fake_run)
    rc, err = _main(["train", "--out", str(tmp_path / "t")], capsys)
    assert rc == 143 and "interrupted by SIGTERM" in err and "Exception ignored" not in err, err
    assert reached == []
