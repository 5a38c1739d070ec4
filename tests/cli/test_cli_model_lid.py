"""`mmh-jax lid --checkpoint`: LID_theta of a trained model per point — outputs, an oracle, errors."""

import re
import types

import jax
import numpy as np
import pytest

import mmh_jax
from mmh_jax import cli, lid
from mmh_jax.data import synthetic
from mmh_jax.experiments import model_estimators, model_lid, training

TRAIN = dict(data="lollipop", n=200, model="mlp", model_kwargs={"hidden": 16, "num_layers": 2}, batch_size=32,
             steps=20, steps_per_call=10, checkpoint_every=1000, warmup_steps=5, seed=3)
GRID = ["--t0-grid", "1e-3", "1", "6"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny MLP trained for 20 steps on 200 lollipop points (compilation dominates: seconds)."""
    out = str(tmp_path_factory.mktemp("model") / "run")
    training.train_or_resume(training.TrainConfig(**TRAIN), out, progress=False)
    return out


def _lid(argv, capsys):
    """(exit code, stdout, stderr) of `mmh-jax lid ARGV` (argparse's exits, --help or a bad flag, are returned too)."""
    rc = cli.main(["lid", *argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _component_rows(text, header_index=0):
    """{component: {column: value}} of the header_index-th per-component table printed."""
    lines = [ln.split() for ln in text.splitlines()]
    heads = [i for i, ln in enumerate(lines) if ln and ln[0] == "component"]
    i = heads[header_index]
    rows = {}
    for ln in lines[i + 1:]:
        if not ln or not ln[0].isdigit():
            break
        rows[int(ln[0])] = dict(zip(lines[i], ln))
    return rows


def test_flipd_on_training_data_matches_direct_calls(run_dir, tmp_path, capsys):
    """Oracle: the npz equals lid.flipd / flipd_curve / knee called directly on the loaded model with the
    documented keys, at the documented (seeded) subsample of the rebuilt training data."""
    out = tmp_path / "flipd"
    rc, text, err = _lid(["--checkpoint", run_dir, "--data", "train", "--n", "48", "--seed", "5",
                          "--trace", "hutchinson", "--t0", "0.05", *GRID, "--out", str(out)], capsys)
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["lid.npz"]  # --out is the directory lid fills
    with np.load(out / "lid.npz") as f:
        res = dict(f)
    assert set(res) == {"lid", "x", "index", "truth", "component", "t0", "t0s", "curves", "lid_knee", "t0_knee",
                        "lid_plateau", "t0_plateau"}
    assert res["lid"].shape == res["lid_knee"].shape == res["t0_knee"].shape == (48,)
    assert res["curves"].shape == (48, 6) and res["x"].shape == (48, 2)
    np.testing.assert_allclose(res["t0s"], np.geomspace(1e-3, 1.0, 6), rtol=1e-6)
    assert float(res["t0"]) == pytest.approx(0.05)
    for k in ("lid", "curves", "t0_knee"):
        assert np.all(np.isfinite(res[k])), k
    # lid_knee is NaN where a curve has no plateau (lid.knee's flag); checked against direct calls below
    assert np.any(np.isfinite(res["lid_knee"]))

    # The points: a seeded subsample of the generator's output, ground truth carried along.
    ds = synthetic.lollipop(TRAIN["n"], seed=TRAIN["seed"])
    idx = np.sort(np.random.default_rng(5).choice(TRAIN["n"], size=48, replace=False))
    np.testing.assert_array_equal(res["index"], idx)
    np.testing.assert_array_equal(res["x"], ds.x[idx])
    np.testing.assert_array_equal(res["truth"], ds.lid[idx])
    np.testing.assert_array_equal(res["component"], ds.component[idx])

    # Same numbers from the library called directly (keys as documented in model_lid).
    model = mmh_jax.load(run_dir)
    k_est, _ = jax.random.split(jax.random.key(5))
    keys = jax.random.split(k_est, 48)
    kw = dict(sde=model.sde, trace="hutchinson")
    direct = jax.jit(jax.vmap(lambda x, k: (lid.flipd(model.score_fn, x, k, t0=0.05, **kw),
                                            lid.flipd_curve(model.score_fn, x, k, t0s=res["t0s"], **kw))))
    want_lid, want_curves = map(np.asarray, direct(res["x"], keys))
    np.testing.assert_allclose(res["lid"], want_lid, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(res["curves"], want_curves, rtol=1e-5, atol=1e-4)
    D = res["x"].shape[1]  # mmh-jax lid passes the data's dimension to the readouts
    t_knee, v_knee = jax.jit(jax.vmap(lambda c: lid.knee(res["t0s"], c, ambient_dim=D)))(res["curves"])
    np.testing.assert_array_equal(res["t0_knee"], np.asarray(t_knee))
    np.testing.assert_array_equal(res["lid_knee"], np.asarray(v_knee))  # NaN at the same points
    t_flat, v_flat = jax.jit(jax.vmap(lambda c: lid.plateau(res["t0s"], c, window=1, ambient_dim=D)))(res["curves"])
    np.testing.assert_array_equal(res["t0_plateau"], np.asarray(t_flat))
    np.testing.assert_allclose(res["lid_plateau"], np.asarray(v_flat), rtol=1e-6)

    # The printed per-component table is that of the direct values.
    assert "on its training data (lollipop): 48 points (a seeded subsample of 200)" in text
    rows = _component_rows(text, 0)
    assert set(rows) == set(np.unique(res["component"]).tolist())
    for c, row in rows.items():
        sel = res["component"] == c
        assert int(row["count"]) == sel.sum() and int(row["truth"]) == ds.lid[idx][sel][0]
        assert float(row["mean"]) == pytest.approx(np.mean(want_lid[sel]), rel=1e-3, abs=1e-3)
        assert float(row["mae"]) == pytest.approx(np.mean(np.abs(want_lid[sel] - res["truth"][sel])), rel=1e-3,
                                                  abs=1e-3)
    knee_rows = _component_rows(text, 1)
    assert "lid_knee = FLIPD at the knee of its curve over 6 t0 in [0.001, 1]" in text
    for c, row in knee_rows.items():
        knees = res["lid_knee"][res["component"] == c]
        readable = knees[np.isfinite(knees)]  # the printed mean is over the readable knees
        if readable.size:
            assert float(row["mean"]) == pytest.approx(np.mean(readable), rel=1e-3, abs=1e-3)
        else:
            assert np.isnan(float(row["mean"]))
    assert "compiled in" in err and "estimated in" in err


def test_normal_bundle_on_training_data(run_dir, tmp_path, capsys):
    out = tmp_path / "o"
    rc, text, err = _lid(["--checkpoint", run_dir, "--estimator", "normal-bundle", "--n", "40", "--batch-size", "2",
                          "--t", "0.02", "--num-samples", "6", "--out", str(out)], capsys)
    assert rc == 0, err
    with np.load(out / "lid.npz") as f:
        assert set(f.keys()) == {"lid", "x", "index", "truth", "component"}
        est = f["lid"]
        assert est.shape == (40,) and est.dtype == np.float32
        assert set(np.unique(est)) <= {0.0, 1.0}  # an integer in {0, ..., D - 1}
        np.testing.assert_array_equal(f["truth"], synthetic.lollipop(TRAIN["n"], seed=TRAIN["seed"]).lid[f["index"]])
    assert f"mmh-jax lid: normal-bundle of the model in {run_dir}" in text
    assert "t = 0.02 with K = 6 noisy copies" in text
    assert "overall:" in text and "mae" in text and len(_component_rows(text)) == 3


def test_samples(run_dir, tmp_path, capsys):
    out = tmp_path / "s"
    rc, text, err = _lid(["--checkpoint", run_dir, "--estimator", "normal-bundle", "--data", "samples", "--n", "12",
                          "--num-steps", "5", "--sampler", "ddim", "--out", str(out)], capsys)
    assert rc == 0, err
    with np.load(out / "lid.npz") as f:
        assert set(f.keys()) == {"lid", "x", "index"}
        assert f["lid"].shape == (12,) and f["x"].shape == (12, 2) and np.all(np.isfinite(f["x"]))
        np.testing.assert_array_equal(f["index"], np.arange(12))
    assert "on its samples (ddim, 5 steps): 12 points of shape (2,)" in text
    assert "overall:" in text and "component" not in text  # no ground truth for samples


def test_fp_regress_on_a_file_with_ground_truth(run_dir, tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 2)).astype(np.float32)
    comp = (np.arange(30) % 3).astype(np.int32)
    np.savez(tmp_path / "pts.npz", x=x, lid=comp.copy(), component=comp)
    out = tmp_path / "f"
    rc, text, err = _lid(["--checkpoint", run_dir, "--estimator", "fp-regress", "--trace", "exact",
                          "--data", str(tmp_path / "pts.npz"), "--n", "20", "--out", str(out)], capsys)
    assert rc == 0, err
    with np.load(out / "lid.npz") as f:
        assert set(f.keys()) == {"lid", "x", "index", "truth", "component"}
        idx = f["index"]
        assert idx.shape == (20,) and np.all(np.diff(idx) > 0)
        np.testing.assert_array_equal(f["x"], x[idx])
        np.testing.assert_array_equal(f["truth"], comp[idx])
        np.testing.assert_array_equal(f["component"], comp[idx])
        assert f["lid"].shape == (20,) and np.all(np.isfinite(f["lid"]))
    assert f"on {tmp_path / 'pts.npz'}: 20 points (a seeded subsample of 30)" in text
    assert "lid = FPRegress" in text and len(_component_rows(text)) == 3


def test_file_loading_without_a_model(tmp_path):
    """Images go through mmh_jax.data.images (scaled to [-1, 1] as in training) and are flattened to the
    MLP's event shape; a file written by `mmh-jax lid` gives its 'truth', not its estimates 'lid', as ground
    truth. No model needed, only its event shape."""
    raw = np.arange(10 * 2, dtype=np.uint8).reshape(10, 1, 2) * 10
    np.save(tmp_path / "img.npy", raw)
    fake = types.SimpleNamespace(event_shape=(2,))
    cfg = model_estimators.ModelLidConfig(checkpoint="unused", data=str(tmp_path / "img.npy"))
    x, truth, comp, idx, n_all, _ = model_lid.load_points(cfg, fake, None)
    assert x.shape == (10, 2) and truth is None and comp is None and n_all == 10
    np.testing.assert_allclose(x, raw.reshape(10, 2) / 255.0 * 2.0 - 1.0, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"event shape \(3,\)"):
        model_lid.load_points(cfg, types.SimpleNamespace(event_shape=(3,)), None)

    np.savez(tmp_path / "out.npz", x=np.zeros((4, 2), np.float32), lid=np.full(4, 1.7, np.float32),
             truth=np.array([0, 1, 2, 2]), component=np.array([2, 1, 0, 0]))
    cfg = model_estimators.ModelLidConfig(checkpoint="unused", data=str(tmp_path / "out.npz"), n=3, seed=1)
    x, truth, comp, idx, n_all, _ = model_lid.load_points(cfg, fake, None)
    assert n_all == 4 and len(idx) == 3 and truth.dtype == np.int32
    np.testing.assert_array_equal(truth, np.array([0, 1, 2, 2])[idx])
    np.testing.assert_array_equal(comp, np.array([2, 1, 0, 0])[idx])


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--checkpoint", "{tmp}/nope"], r"--checkpoint '.*nope': no such directory.*mmh-jax train --out DIR"),
        (["--checkpoint", "{tmp}/empty"], r"--checkpoint '.*empty': no checkpoint found.*mmh-jax train --out DIR"),
        (["--checkpoint", "{run}", "--estimator", "lpca"],
         r"--estimator lpca is model-free.*use flipd, normal-bundle or fp-regress.*or drop --checkpoint"),
        (["--estimator", "flipd"], r"--estimator flipd needs a trained model: pass --checkpoint DIR"),
        (["--estimator", "normal-bundle", "--data", "lollipop"], r"needs a trained model"),
        (["--checkpoint", "{run}", "--data", "{tmp}/x3.npy"],
         r"--data '.*x3.npy': points of shape \(3,\) .* event shape \(2,\) .* pass points of shape \(N, 2\)"),
        (["--checkpoint", "{run}", "--data", "{tmp}/missing.npz"], r"--data '.*missing.npz': no such file"),
        (["--checkpoint", "{run}", "--data", "{tmp}/two.npz"], r"store the points under the key 'x'"),
        (["--checkpoint", "{run}", "--data", "{tmp}/bad_lid.npz"],
         r"'lid' \(ground truth\) must have shape \(N,\) = \(5,\)"),
        (["--checkpoint", "{run}", "--k", "10"], r"--k applies to the model-free estimators only"),
        (["--checkpoint", "{run}", "--param", "dim=2"], r"--param applies to the model-free estimators only"),
        (["--t0", "0.1"], r"--t0 applies to the model-based estimators only: add --checkpoint DIR"),
        (["--num-steps", "10"], r"--num-steps applies to the model-based estimators only"),
        (["--checkpoint", "{run}", "--t", "0.02"], r"--t applies to normal-bundle only, not to --estimator flipd"),
        (["--checkpoint", "{run}", "--estimator", "normal-bundle", "--t0", "0.1"], r"--t0 applies to flipd only"),
        (["--checkpoint", "{run}", "--sampler", "ddim"], r"--sampler applies to --data samples only"),
        (["--checkpoint", "{run}", "--t0", "2"], r"t0 must lie in \(0, T\] = \(0, 1\]"),
        (["--checkpoint", "{run}", "--t0-grid", "0.5", "0.1", "8"], r"t0_grid must be \(min, max, num\)"),
        (["--checkpoint", "{run}", "--t0-grid", "0.01", "1", "4.5"], r"--t0-grid NUM must be an integer"),
        (["--checkpoint", "{run}", "--batch-size", "0"], r"argument --batch-size: must be at least 1, got 0"),
    ],
)
def test_errors_name_argument_and_fix(run_dir, tmp_path, capsys, argv, match):
    (tmp_path / "empty").mkdir()
    np.save(tmp_path / "x3.npy", np.zeros((5, 3), np.float32))
    np.savez(tmp_path / "two.npz", a=np.zeros((4, 2)), b=np.zeros((4, 2)))
    np.savez(tmp_path / "bad_lid.npz", x=np.zeros((5, 2), np.float32), lid=np.zeros(4))
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{run}", run_dir) for a in argv]
    out = tmp_path / "o"
    rc, _, err = _lid([*argv, "--out", str(out)], capsys)
    assert rc == 2
    if err.startswith("usage: "):  # a bad flag value: argparse's usage, then its one-line error
        err = err.splitlines()[-1]
    assert err.startswith("mmh-jax lid: error: ") and "Traceback" not in err, err
    assert re.search(match, err), err
    assert not out.exists()


def test_help_explains_model_options(capsys):
    rc, text, _ = _lid(["--help"], capsys)
    assert rc == 0
    for opt in ("--checkpoint", "--estimator", "--data", "--n", "--batch-size", "--t0", "--t0-grid", "--trace",
                "--num-probes", "--t ", "--num-samples", "--sampler", "--num-steps", "--out", "--seed", "--step",
                "--overwrite"):
        assert opt in text, opt
    for word in ("flipd", "normal-bundle", "fp-regress", "train", "samples", "lid_knee", "curves", "default: 0.05",
                 "default: 0.01", "4*D"):
        assert word in text, word
