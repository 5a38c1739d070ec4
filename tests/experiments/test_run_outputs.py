"""What `mmh-jax run` leaves in --out: files readable like a plain open() makes them, the quick preset
flagged as a smoke run, validation's report.html, and an --out holding another model's run (or another
command's report: validation's, the benchmark's) refused before any work (or, with overwrite=True, emptied
of that run first), without stale figures.

The real runs here are the cheapest there are: `run toy --preset quick` (~10 s) and the detection
experiment on the session's 3-step `tiny_run` model; the rest swaps an experiment's `run` for a stub.
"""

import json
import os
import stat

import numpy as np
import pytest

from mmh_jax import cli, report
from mmh_jax.experiments import benchmark, validation
from mmh_jax.experiments.pipeline import config as pipeline_config
from mmh_jax.experiments.pipeline import images as images_exp
from mmh_jax.experiments.pipeline import run as pipeline_run
from mmh_jax.experiments.pipeline import toy as toy_exp

SMOKE = "Smoke run (preset quick): sizes are tiny; the numbers are not meaningful."


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _files(out) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002], ids=["022", "027", "002"])
def test_report_writers_give_the_mode_of_a_plain_open(tmp_path, umask):
    before = os.umask(umask)
    try:
        with open(tmp_path / "plain.txt", "w") as fh:
            fh.write("x")
        report.write_text(str(tmp_path / "report.html"), "<html>")
        report.write_json(str(tmp_path / "metrics.json"), {"a": 1})
        (tmp_path / "old.json").write_text("{}")
        os.chmod(tmp_path / "old.json", 0o600)  # as the atomic writer left it before
        report.write_json(str(tmp_path / "old.json"), {"a": 2})
    finally:
        os.umask(before)
    want = 0o666 & ~umask
    assert _mode(tmp_path / "plain.txt") == want
    for name in ("report.html", "metrics.json", "old.json"):
        assert _mode(tmp_path / name) == want, name
    assert json.loads((tmp_path / "old.json").read_text()) == {"a": 2}
    assert sorted(os.listdir(tmp_path)) == ["metrics.json", "old.json", "plain.txt", "report.html"]  # no temporaries


def test_quick_run_report_is_as_readable_as_its_figures(quick_pipeline):
    _, out, metrics = quick_pipeline
    want = 0o666 & ~_umask()
    figures = [f for e in pipeline_config.EXPERIMENTS for f in metrics[e]["figures"]]
    for name in ["report.html", "metrics.json", *figures]:
        assert _mode(out / name) == want, name


def test_quick_preset_is_recorded_and_flagged_as_a_smoke_run(quick_pipeline):
    _, out, metrics = quick_pipeline
    assert metrics["preset"] == "quick" and metrics["config"]["preset"] == "quick"
    assert metrics["smoke_run"] is True and metrics["warning"] == SMOKE
    page = (out / "report.html").read_text()
    assert SMOKE in page and page.index(SMOKE) < page.index("<h1>")  # a banner above everything
    assert "preset quick" in page[page.index("<h1>"):page.index("</h1>")]


def test_a_default_preset_report_records_its_preset_without_a_smoke_banner(tmp_path):
    config = pipeline_config.preset("default", experiments=["toy"])
    assert config.preset == "default" and pipeline_run.smoke_warning(config) is None
    metrics = {"preset": "default", "smoke_run": False, "backend": "cpu", "devices": 1, "timing": {"total_s": 1.0}}
    pipeline_run.write_html(metrics, config, str(tmp_path))
    page = (tmp_path / "report.html").read_text()
    assert "preset default" in page and "Smoke run" not in page and "class='banner'" not in page


def test_validation_writes_a_report_html_with_its_table_and_figure(tmp_path, capsys):
    cfg = validation.ValidationConfig(
        cases=(validation.Case(6, (2,)),), decoders=(), num_points=8, t0_grid=(1e-4, 1.0, 8), cfdm_train=200,
        model_free_points=300, model_free_k=20, curves_per_case=2,
    )
    metrics = validation.run(cfg, str(tmp_path), progress=True)
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 1 and "is missing" not in page
    for row in metrics["results"]:
        assert f"<td>{row['estimator']}</td>" in page
    assert _mode(tmp_path / "report.html") == 0o666 & ~_umask()
    assert f"report: {tmp_path / 'report.html'}" in capsys.readouterr().out


def _stub(figures, reading="stub"):
    """An experiment's ``run`` that draws ``figures`` (empty files) and returns them, computing nothing."""
    def run(config, ctx):
        for f in figures:
            with open(ctx.path(f), "wb") as fh:
                fh.write(b"\x89PNG stub")
        return {"figures": list(figures), "reading": reading}
    return run


def test_a_recomputed_experiment_leaves_no_stale_figures(tmp_path, monkeypatch):
    out = tmp_path / "run"
    cfg = pipeline_config.preset("quick", experiments=["toy"])
    monkeypatch.setattr(toy_exp, "run", _stub(["toy_scatter.png", "toy_extra.png"]))
    pipeline_run.run(cfg, str(out), progress=False)
    assert (out / "toy_extra.png").exists()
    monkeypatch.setattr(toy_exp, "run", _stub(["toy_scatter.png"]))
    metrics = pipeline_run.run(cfg, str(out), progress=False, recompute=True)
    assert metrics["toy"]["figures"] == ["toy_scatter.png"]
    assert (out / "toy_scatter.png").exists() and not (out / "toy_extra.png").exists()


def test_overwrite_removes_only_the_other_runs_files_inside_out(tmp_path, monkeypatch):
    """A hand-made metrics.json of another seed that lists a figure outside --out: refused; with
    overwrite its files inside --out go, the file outside stays."""
    out = tmp_path / "run"
    (out / "models" / "toy").mkdir(parents=True)
    (out / "models" / "toy" / "weights").write_bytes(b"w")
    (tmp_path / "victim.png").write_bytes(b"keep me")
    (out / "toy_scatter.png").write_bytes(b"old")
    (out / "toy_old.png").write_bytes(b"old")
    other = pipeline_config.preset("quick", experiments=["toy"], seed=5)
    report.write_json(str(out / "metrics.json"), {
        "seed": 5, "config": pipeline_run.dataclasses.asdict(other),
        "toy": {"figures": ["toy_scatter.png", "toy_old.png", "../victim.png", str(tmp_path / "victim.png")]}})
    monkeypatch.setattr(toy_exp, "run", _stub(["toy_scatter.png"]))
    cfg = pipeline_config.preset("quick", experiments=["toy"])
    with pytest.raises(ValueError, match="seed 5.*seed 0.*choose another --out, or pass --overwrite"):
        pipeline_run.run(cfg, str(out), progress=False)
    assert (out / "toy_old.png").exists() and (out / "models" / "toy" / "weights").exists()
    metrics = pipeline_run.run(cfg, str(out), progress=False, overwrite=True)
    assert metrics["seed"] == 0 and metrics["identity"] == pipeline_run.identity(cfg)
    assert not (out / "toy_old.png").exists() and not (out / "models").exists()
    assert (out / "toy_scatter.png").read_bytes() == b"\x89PNG stub"
    assert (tmp_path / "victim.png").read_bytes() == b"keep me"


def test_run_and_validation_refuse_each_others_out(tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setattr(toy_exp, "run", _stub(["toy_scatter.png"]))
    pipeline_run.run(pipeline_config.preset("quick", experiments=["toy"]), str(out), progress=False)
    before = _files(out)
    with pytest.raises(ValueError, match="holds an `mmh-jax run` experiments report.*--overwrite"):
        validation.run(validation.preset("quick"), str(out), progress=False)
    assert _files(out) == before
    val = tmp_path / "val"
    val.mkdir()
    report.write_json(str(val / "metrics.json"), {"seed": 0, "config": {"cases": []}, "results": []})
    (val / "table.md").write_text("| a |")
    with pytest.raises(ValueError, match="holds an `mmh-jax run validation` report"):
        pipeline_run.run(pipeline_config.preset("quick", experiments=["toy"]), str(val), progress=False)
    pipeline_run.run(pipeline_config.preset("quick", experiments=["toy"]), str(val), progress=False, overwrite=True)
    assert not (val / "table.md").exists() and "toy" in json.loads((val / "metrics.json").read_text())


def test_run_refuses_an_out_holding_another_models_run_and_overwrite_replaces_it(tmp_path, tiny_run, monkeypatch,
                                                                                   capsys):
    out = tmp_path / "digits"
    assert cli.main(["run", "toy", "--preset", "quick", "--out", str(out)]) == 0
    assert SMOKE in capsys.readouterr().out  # the terminal summary says it too
    before = _files(out)
    assert "toy_scatter.png" in before and any(k.startswith("models/toy/") for k in before)

    x = np.random.default_rng(0).normal(size=(48, 2)).astype(np.float32)
    data = tmp_path / "points.npy"
    np.save(data, np.concatenate([x, x[:4]]))  # four repeated points
    mine = ["--preset", "quick", "--checkpoint", str(tiny_run), "--data", str(data)]

    def no_work(config, ctx):
        raise AssertionError("an experiment ran before the --out was checked")

    monkeypatch.setattr(images_exp, "run", no_work)
    monkeypatch.setattr(toy_exp, "run", no_work)
    rc = cli.main(["run", *mine, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1, err
    for part in ("preset's own toy and digits models", os.path.realpath(tiny_run), os.path.realpath(data),
                 "choose another --out, or pass --overwrite to replace it"):
        assert part in err, (part, err)
    for other in (pipeline_config.preset("quick", experiments=["toy"], seed=1),
                  pipeline_config.preset("default", experiments=["toy"])):
        with pytest.raises(ValueError, match="holds a run of preset quick, seed 0"):
            pipeline_run.run(other, str(out), progress=False)
    assert _files(out) == before  # nothing written, nothing removed

    # the same models: a rerun keeps toy, another selection combines with it in one report
    assert cli.main(["run", "toy", "--preset", "quick", "--out", str(out)]) == 0
    assert "[toy] finished by an earlier run" in capsys.readouterr().err
    monkeypatch.setattr(images_exp, "run", _stub(["images_lid_hist.png"], reading="stub images"))
    both = pipeline_run.run(pipeline_config.preset("quick", experiments=["images"]), str(out), progress=False)
    assert {"toy", "images"} <= set(both) and "stub images" in (out / "report.html").read_text()

    monkeypatch.undo()
    config = pipeline_config.preset("quick", checkpoint=str(tiny_run), data=str(data))
    metrics = pipeline_run.run(config, str(out), progress=False, overwrite=True)
    saved = json.loads((out / "metrics.json").read_text())
    assert [e for e in pipeline_config.EXPERIMENTS if e in saved] == ["images"]
    assert saved["identity"]["checkpoint"] == os.path.realpath(tiny_run) and saved["preset"] == "quick"
    left = {p.name for p in out.iterdir()}
    assert not left & {"toy_scatter.png", "toy.npz", "models", "data"}, left
    assert {p.name for p in out.glob("*.png")} == set(metrics["images"]["figures"])  # no stale digits figure
    page = (out / "report.html").read_text()
    assert "1. Toy" not in page and "stub images" not in page and str(tiny_run) in page


def _benchmark_out(out):
    """A real benchmark report in ``out``, of the cheapest kind (model-free estimators: nothing trained),
    with a model planted where the benchmark trains each of its data set's models."""
    benchmark.run(benchmark.preset("quick", datasets=("lollipop",), estimators=("lpca",)), str(out), progress=False)
    for kind in ("diffusion", "lidl"):
        model = out / "models" / "lollipop" / kind  # the benchmark's layout, as a user sees it
        model.mkdir(parents=True)
        (model / "weights").write_bytes(b"w")
    files = set(_files(out))
    assert {"metrics.json", "table.md", "estimates.png", "report.html", "data/lollipop_train.npz",
            "estimates/lollipop.npz", "models/lollipop/diffusion/weights", "models/lollipop/lidl/weights"} <= files
    return files


@pytest.mark.parametrize("command", ["run", "validation"])
def test_run_and_validation_refuse_a_benchmarks_out_and_overwrite_removes_it(tmp_path, monkeypatch, command):
    out = tmp_path / "bench"
    _benchmark_out(out)
    before = _files(out)
    monkeypatch.setattr(toy_exp, "run", _stub(["toy_scatter.png"]))
    if command == "run":
        def go(**kw):
            return pipeline_run.run(pipeline_config.preset("quick", experiments=["toy"]), str(out), progress=False,
                                    **kw)
        written = {"metrics.json", "report.html", "toy_scatter.png"}
    else:
        def go(**kw):
            cfg = validation.ValidationConfig(cases=(validation.Case(6, (2,)),), decoders=(), num_points=4,
                                              t0_grid=(1e-4, 1.0, 4), cfdm_train=100, model_free_points=100,
                                              model_free_k=10, curves_per_case=1)
            return validation.run(cfg, str(out), progress=False, **kw)
        written = {"metrics.json", "report.html", "table.md", "flipd_curves.png"}
    with pytest.raises(pipeline_run.OtherRunError) as err:
        go()
    msg = str(err.value)
    for part in (f"--out {str(out)!r} holds an `mmh-jax run benchmark` report of lollipop",
                 "choose another --out, or pass --overwrite to replace it"):
        assert part in msg, (part, msg)
    assert _files(out) == before  # refused before any work: nothing written, nothing removed

    go(overwrite=True)
    assert set(_files(out)) == written  # the benchmark's results, data, estimates and models are gone
    assert not {"data", "estimates", "models"} & {p.name for p in out.iterdir()}
    assert json.loads((out / "metrics.json").read_text()).get("kind") != "benchmark"


def test_removing_a_benchmark_keeps_the_paths_this_run_reads(tmp_path):
    out = tmp_path / "bench"
    _benchmark_out(out)
    previous = pipeline_run.previous_metrics(str(out))
    assert pipeline_run.run_kind(previous) == "benchmark"
    (tmp_path / "elsewhere.npz").write_bytes(b"x")
    previous["datasets"]["lollipop"]["estimates"] = "../elsewhere.npz"  # a path outside --out stays
    mine = out / "models" / "lollipop" / "diffusion"
    data = out / "data" / "lollipop_train.npz"
    pipeline_run.remove_run(str(out), previous, "benchmark", keep=(str(mine), str(data)))
    left = {"models/lollipop/diffusion/weights", "data/lollipop_train.npz", "estimates/lollipop.npz"}
    assert set(_files(out)) == left
    assert (tmp_path / "elsewhere.npz").exists()
