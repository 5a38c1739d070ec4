"""`mmh-jax lid`: in-process CLI runs, output files, summaries and error handling."""

import numpy as np
import pytest

from mmh_jax import cli
from mmh_jax import lid as lid_lib
from mmh_jax.data import synthetic
from mmh_jax.experiments import lid_cmd


@pytest.fixture
def fake_lid(monkeypatch):
    """Replace the estimators by an oracle-free stand-in (the number 1.5 everywhere), to test plumbing."""
    calls = []

    def fake(data, *, k, queries=None, **kw):
        calls.append({"shape": tuple(data.shape), "k": k, "queries": None if queries is None else tuple(queries.shape), **kw})
        n = data.shape[0] if queries is None else queries.shape[0]
        return np.full(n, 1.5, np.float32)

    def fake_evaluate(estimates, truth):
        e, t = np.asarray(estimates, np.float64), np.asarray(truth, np.float64)
        return {"mae": float(np.mean(np.abs(e - t)))}

    for name in lid_cmd.ESTIMATORS:
        monkeypatch.setattr(lid_lib, name, fake)
    monkeypatch.setattr(lid_lib, "evaluate", fake_evaluate)
    return calls


def test_plumbing_generated_data(tmp_path, fake_lid, capsys):
    out = tmp_path / "res"
    rc = cli.main(["lid", "--estimator", "lpca", "--data", "lollipop", "--n", "300", "--k", "20",
                   "--seed", "1", "--out", str(out)])
    assert rc == 0
    assert fake_lid == [{"shape": (300, 2), "k": 20, "queries": None, "alpha": 0.05}]
    assert sorted(p.name for p in out.iterdir()) == ["lid.npz"]  # --out is the directory lid fills
    with np.load(out / "lid.npz") as f:
        assert set(f.keys()) == {"lid", "truth", "component"}
        ds = synthetic.lollipop(300, seed=1)
        np.testing.assert_array_equal(f["truth"], ds.lid)
        np.testing.assert_array_equal(f["component"], ds.component)
        assert f["lid"].shape == (300,) and f["lid"].dtype == np.float32
    text = capsys.readouterr().out
    assert "lpca (k=20) on lollipop: 300 points in R^2" in text
    assert "overall:" in text and "mae" in text
    # One row per component, MAE = |1.5 − truth|.
    lines = [ln.split() for ln in text.splitlines()]
    header = next(ln for ln in lines if ln and ln[0] == "component")
    rows = {int(ln[0]): dict(zip(header, ln)) for ln in lines if ln and ln[0] in ("0", "1", "2")}
    assert {c: float(r["mae"]) for c, r in rows.items()} == {0: 0.5, 1: 0.5, 2: 1.5}
    assert sum(int(r["count"]) for r in rows.values()) == 300


def test_plumbing_non_finite_estimates(tmp_path, monkeypatch, capsys):
    """NaN estimates (degenerate neighbourhoods) are counted and reported per component."""
    seen = {}

    def nan_at_point_mass(data, *, k, queries=None, **kw):
        d = np.asarray(data)
        return np.where(np.all(d == 0, axis=1), np.nan, 1.0).astype(np.float32)

    def spy_evaluate(estimates, truth):
        seen["n"] = int(np.sum(np.isfinite(np.asarray(estimates))))
        return {"mae": 0.0}

    monkeypatch.setattr(lid_lib, "twonn", nan_at_point_mass)
    monkeypatch.setattr(lid_lib, "evaluate", spy_evaluate)
    summary = lid_cmd.run(lid_cmd.preset("quick", estimator="twonn", n=200, k=5), str(tmp_path / "o"))
    n_point = int(np.sum(synthetic.lollipop(200, seed=0).component == 2))
    assert summary["overall"]["non_finite"] == n_point and seen["n"] == 200 - n_point
    point_row = summary["groups"][2]
    assert point_row["non_finite"] == point_row["count"] == n_point and np.isnan(point_row["mean"])
    assert summary["groups"][0]["mae"] == 1.0 and summary["groups"][0]["non_finite"] == 0
    assert f"non_finite {n_point}" in capsys.readouterr().out


def test_plumbing_run_returns_summary(tmp_path, fake_lid):
    cfg = lid_cmd.preset("quick", estimator="mle", data="affine_mixture", k=5,
                         params=(("dims", (1, 3)), ("ambient_dim", 6)))
    summary = lid_cmd.run(cfg, str(tmp_path / "sub" / "est"))
    # out is the directory the command fills (created, nested): lid.npz inside it.
    assert summary["out"] == str(tmp_path / "sub" / "est" / "lid.npz")
    assert (tmp_path / "sub" / "est" / "lid.npz").is_file()
    assert summary["num_points"] == 500 and summary["ambient_dim"] == 6
    assert [g["truth"] for g in summary["groups"]] == [1, 3]
    assert fake_lid[0] == {"shape": (500, 6), "k": 5, "queries": None}
    # An existing directory as out gets lid.npz inside too.
    summary = lid_cmd.run(lid_cmd.preset("quick", n=30, k=3), str(tmp_path))
    assert summary["out"] == str(tmp_path / "lid.npz")
    # A second run into the same directory is refused before any work unless overwrite=True.
    before = (tmp_path / "lid.npz").read_bytes()
    n_calls = len(fake_lid)
    with pytest.raises(ValueError, match="already holds lid.npz from an earlier run; pass --overwrite"):
        lid_cmd.run(lid_cmd.preset("quick", n=30, k=3, seed=1), str(tmp_path))
    assert len(fake_lid) == n_calls and (tmp_path / "lid.npz").read_bytes() == before
    summary = lid_cmd.run(lid_cmd.preset("quick", n=30, k=3, seed=1), str(tmp_path), overwrite=True)
    assert summary["out"] == str(tmp_path / "lid.npz") and len(fake_lid) == n_calls + 1
    # An out that names a file is refused, whether it exists or only ends like a file name.
    for bad in (tmp_path / "lid.npz", tmp_path / "new.npz"):
        with pytest.raises(ValueError, match="names a file, but --out is the directory"):
            lid_cmd.run(lid_cmd.preset("quick", n=30, k=3), str(bad), overwrite=True)
    assert not (tmp_path / "new.npz").exists() and len(fake_lid) == n_calls + 1


def test_plumbing_files_and_queries(tmp_path, fake_lid, capsys):
    x = np.random.default_rng(0).normal(size=(120, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "q.npz", x=x[:7], lid=np.full(7, 4, np.int32))
    np.savez(tmp_path / "only.npz", points=x)
    np.savez(tmp_path / "img.npz", x=x.reshape(120, 2, 2, 1), component=np.arange(120) % 2)
    out = tmp_path / "o"
    assert cli.main(["lid", "--data", str(tmp_path / "x.npy"), "--k", "10", "--out", str(out)]) == 0
    with np.load(out / "lid.npz") as f:
        assert set(f.keys()) == {"lid"} and f["lid"].shape == (120,)
    assert cli.main(["lid", "--data", str(tmp_path / "only.npz"), "--k", "10", "--n", "50",
                     "--queries", str(tmp_path / "q.npz"), "--out", str(out), "--overwrite"]) == 0
    assert fake_lid[-1]["shape"] == (50, 4) and fake_lid[-1]["queries"] == (7, 4)
    with np.load(out / "lid.npz") as f:
        assert set(f.keys()) == {"lid", "truth"} and f["lid"].shape == (7,)
    assert cli.main(["lid", "--data", str(tmp_path / "img.npz"), "--k", "10", "--out", str(out), "--overwrite"]) == 0
    assert fake_lid[-1]["shape"] == (120, 4)
    with np.load(out / "lid.npz") as f:
        np.testing.assert_array_equal(f["component"], np.arange(120) % 2)
    assert "at 7 query points" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--data", "missing.npz"], "data file not found"),
        (["--data", "nonsense"], "data must be a generator name"),
        (["--data", "{tmp}/vec.npy"], r"must have shape \(N, D\)"),
        (["--data", "{tmp}/two.npz"], "store the points under the key 'x'"),
        (["--data", "{tmp}/x.npy", "--queries", "{tmp}/bad_q.npy"], "queries must have the data's dimension"),
        (["--data", "{tmp}/x.npy", "--queries", "{tmp}/none.npy"], "queries file not found"),
        (["--data", "{tmp}/x.txt"], "must end in .npz or .npy"),
        (["--n", "30", "--k", "30"], "k must be at most 29 with 30 data points"),
        (["--data", "{tmp}/x.npy", "--queries", "{tmp}/q3.npy", "--k", "41"], "k must be at most 40"),
        (["--k", "0"], "argument --k: must be at least 1, got 0"),  # refused by argparse, before any work
        (["--n", "50", "--param", "bogus"], "--param must look like KEY=VALUE"),
        (["--n", "50", "--param", "colour=3"], "unexpected keyword argument 'colour'"),
        (["--data", "affine_mixture", "--n", "50", "--param", "dims=(2, 40)"], "dims must be <= ambient_dim"),
        (["--data", "{tmp}/x.npy", "--param", "dim=2"], "--param applies to generated data only"),
    ],
)
def test_errors_are_messages_not_tracebacks(tmp_path, fake_lid, capsys, argv, match):
    np.save(tmp_path / "vec.npy", np.zeros(10, np.float32))
    np.save(tmp_path / "x.npy", np.zeros((40, 3), np.float32))
    np.save(tmp_path / "bad_q.npy", np.zeros((5, 2), np.float32))
    np.save(tmp_path / "q3.npy", np.zeros((5, 3), np.float32))
    np.savez(tmp_path / "two.npz", a=np.zeros((4, 2)), b=np.zeros((4, 2)))
    (tmp_path / "x.txt").write_text("1 2\n")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    rc = cli.main(["lid", "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err
    assert rc == 2
    if err.startswith("usage: "):  # a bad flag value: argparse's usage, then its one-line error
        err = err.splitlines()[-1]
    assert err.startswith("mmh-jax lid: error: ") and "Traceback" not in err, err
    import re

    assert re.search(match, err), err
    assert not fake_lid  # nothing was estimated
    assert not (tmp_path / "o").exists()  # nor written


def test_help_explains_options(capsys):
    assert cli.main(["lid", "--help"]) == 0  # argparse's exit code, returned by main
    text = capsys.readouterr().out
    for opt in ("--estimator", "--data", "--k", "--n", "--out", "--seed", "--queries", "--preset", "--param",
                "--overwrite", "--step"):
        assert opt in text
    for name in synthetic.GENERATORS:
        assert name in text


@pytest.mark.parametrize("estimator", lid_cmd.ESTIMATORS)
def test_real_estimators_on_lollipop(tmp_path, capsys, estimator):
    out = tmp_path / estimator
    rc = cli.main(["lid", "--estimator", estimator, "--data", "lollipop", "--n", "300", "--k", "20",
                   "--out", str(out)])
    assert rc == 0
    with np.load(out / "lid.npz") as f:
        est, truth = f["lid"], f["truth"]
    assert est.shape == truth.shape == (300,)
    # NaN is allowed where a neighbourhood is degenerate (the point mass: all neighbours at 0).
    assert np.mean(np.isfinite(est[truth > 0])) > 0.9
    text = capsys.readouterr().out
    assert "overall:" in text and "component" in text


def test_real_lpca_separates_components(tmp_path):
    summary = lid_cmd.run(lid_cmd.preset("quick", n=300, k=20, data="affine_mixture",
                                         params=(("dims", (1, 4)), ("ambient_dim", 8))),
                          str(tmp_path / "a"))
    means = [g["mean"] for g in summary["groups"]]
    assert means[0] < means[1]
    assert summary["groups"][0]["mae"] < 0.5  # a flat line: local PCA sees one direction
