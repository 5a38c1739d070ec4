"""Training: exact resume, Ctrl-C saves, corrupted or foreign checkpoints refused, load() + sampling."""

import os

import jax
import numpy as np
import pytest

import mmh_jax
from mmh_jax import cli, lid, train
from mmh_jax.checkpoint import CheckpointError, Checkpointer
from mmh_jax.experiments import training

TINY = dict(data="lollipop", n=500, model="mlp", model_kwargs={"hidden": 16, "num_layers": 2}, batch_size=32,
            steps_per_call=10, checkpoint_every=10, warmup_steps=5)


def _params(out):
    return jax.tree_util.tree_leaves(mmh_jax.load(out).params)


def _assert_same(a, b):
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_resume_equals_uninterrupted(tmp_path):
    full = str(tmp_path / "full")
    training.train_or_resume(training.TrainConfig(steps=40, **TINY), full, progress=False)
    part = str(tmp_path / "part")
    training.train_or_resume(training.TrainConfig(steps=20, **TINY), part, progress=False)
    # --steps is the total: 40 after a 20-step run trains 20 more. The LR schedule's horizon is the
    # total, so compare with a run that was interrupted at 20 rather than one configured for 20.
    part2 = str(tmp_path / "part2")
    cfg40 = training.TrainConfig(steps=40, **TINY)
    _interrupt_at(20, lambda: training.train_or_resume(cfg40, part2, progress=False))
    result = training.train_or_resume(cfg40, part2, resume=True, progress=False)
    assert result["step"] == 40 and not result["interrupted"]
    _assert_same(_params(full), _params(part2))
    extended = training.train_or_resume(cfg40, part, resume=True, progress=False)
    assert extended["step"] == 40


def test_resuming_takes_the_state_shapes_from_eval_shape_not_a_compiled_init(tmp_path, monkeypatch):
    """A fresh run compiles its initialisation; a resumed or finished one restores into shapes only.

    (Compiling the digits U-Net's init costs 14 s, for values the restore throws away.)
    """
    jitted = []
    real_jit = jax.jit

    def spy(fn, *args, **kwargs):
        jitted.append(getattr(fn, "__name__", ""))
        return real_jit(fn, *args, **kwargs)

    monkeypatch.setattr(jax, "jit", spy)
    out = str(tmp_path / "run")
    cfg = training.TrainConfig(steps=10, **TINY)
    training.train_or_resume(cfg, out, progress=False)
    assert "init" in jitted
    fresh = _params(out)
    jitted.clear()
    assert training.train_or_resume(cfg, out, resume=True, progress=False)["step"] == 10  # finished: reused
    more = training.train_or_resume(training.TrainConfig(steps=20, **TINY), out, resume=True, progress=False)
    assert more["step"] == 20 and "init" not in jitted
    assert jitted  # the spy did see the resumed run's jits (its train loop)
    assert any(np.any(np.asarray(a) != np.asarray(b)) for a, b in zip(fresh, _params(out)))


def _interrupt_at(step, fn):
    """Run ``fn`` with a train loop that raises KeyboardInterrupt once the state reaches ``step``."""
    original = train.make_train_loop

    def patched(*a, **k):
        loop = original(*a, **k)

        def wrapped(state, *args):
            if int(state.step) >= step:
                raise KeyboardInterrupt
            return loop(state, *args)

        return wrapped

    train.make_train_loop = patched
    try:
        return fn()
    finally:
        train.make_train_loop = original


def test_ctrl_c_saves_and_exits_cleanly(tmp_path):
    out = str(tmp_path / "run")
    cfg = training.TrainConfig(steps=50, **{**TINY, "checkpoint_every": 1000})
    result = _interrupt_at(30, lambda: training.train_or_resume(cfg, out, progress=False))
    assert result["interrupted"] and result["step"] == 30
    assert mmh_jax.load(out).step == 30


def test_existing_run_is_not_overwritten_without_resume(tmp_path):
    out = str(tmp_path / "run")
    training.train_or_resume(training.TrainConfig(steps=10, **TINY), out, progress=False)
    with pytest.raises(CheckpointError, match="--resume"):
        training.train_or_resume(training.TrainConfig(steps=10, **TINY), out, progress=False)


def test_foreign_checkpoint_is_refused(tmp_path):
    out = str(tmp_path / "run")
    training.train_or_resume(training.TrainConfig(steps=10, **TINY), out, progress=False)
    other = {**TINY, "model_kwargs": {"hidden": 8, "num_layers": 2}}
    with pytest.raises(CheckpointError, match="model_kwargs"):
        training.train_or_resume(training.TrainConfig(steps=20, **other), out, resume=True, progress=False)
    assert mmh_jax.load(out).step == 10


def _snapshot(folder):
    return {os.path.join(r, f): os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(folder) for f in fs}


def test_resume_skips_a_corrupted_checkpoint_says_so_and_keeps_its_files(tmp_path, capsys):
    out = str(tmp_path / "run")
    training.train_or_resume(training.TrainConfig(steps=20, **TINY), out, progress=False)
    step_dir = os.path.join(out, "checkpoints", "20", "state")
    victims = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs if os.path.getsize(os.path.join(r, f)) > 64]
    assert victims
    for v in victims:  # truncate every data file of the newest checkpoint
        with open(v, "r+b") as fh:
            fh.truncate(16)
    before = {k: v for k, v in _snapshot(out).items() if os.sep + "20" + os.sep in k}
    with pytest.raises(CheckpointError, match="step 20 .* damaged.*intact steps: \\[10\\]"):
        mmh_jax.load(out)
    capsys.readouterr()
    res = training.train_or_resume(training.TrainConfig(steps=30, **TINY), out, resume=True, progress=False)
    err = capsys.readouterr().err
    assert "from its checkpoint at step 10" in err and "step 20 are damaged and were skipped" in err, err
    assert res["step"] == 30 and mmh_jax.load(out).step == 30
    # the damaged files are kept aside (same names and sizes) when step 20 is saved again
    after = _snapshot(out)
    assert {k.replace(os.sep + "20.damaged" + os.sep, os.sep + "20" + os.sep): v for k, v in after.items()
            if "20.damaged" in k} == before


def test_interrupted_save_leaves_previous_checkpoint_in_use(tmp_path, capsys):
    out = str(tmp_path / "run")
    training.train_or_resume(training.TrainConfig(steps=20, **TINY), out, progress=False)
    # what a save killed with SIGKILL leaves: orbax's temporary folder, never renamed into place
    os.makedirs(os.path.join(out, "checkpoints", "30.orbax-checkpoint-tmp", "state"))
    assert mmh_jax.load(out).step == 20
    capsys.readouterr()
    res = training.train_or_resume(training.TrainConfig(steps=30, **TINY), out, resume=True, progress=False)
    assert res["step"] == 30
    err = capsys.readouterr().err  # the resume says where it starts and what it ignored, not silently
    assert "from its checkpoint at step 20" in err and "1 save(s) cut short (e.g. by kill -9) are ignored" in err


def test_load_gives_score_fn_and_samples(tmp_path):
    out = str(tmp_path / "run")
    training.train_or_resume(training.TrainConfig(steps=20, **TINY), out, progress=False)
    model = mmh_jax.load(out)
    x = np.zeros(2, np.float32)
    val = lid.flipd(model.score_fn, x, t0=0.05, sde=model.sde)
    assert np.isfinite(float(val))
    xs = model.sample(jax.random.key(0), 5, num_steps=10)
    assert xs.shape == (5, 2) and np.all(np.isfinite(xs))
    assert model.kind == "diffusion" and model.config["kind"] == "diffusion"


def test_trained_model_is_an_immutable_pytree_of_its_params():
    """A model passes through jit as an argument: its leaves are the parameters, the rest is static,
    so one compiled program serves other parameters of the same model."""
    import dataclasses

    import jax.numpy as jnp

    from mmh_jax.sde import VPSDE
    from mmh_jax.trained import TrainedModel, make_batched_eps_apply

    config = {"model": "mlp", "model_kwargs": {"hidden": 16, "num_layers": 2}, "event_shape": [2], "kind": "diffusion"}
    module, _ = make_batched_eps_apply(config)
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 2)), jnp.zeros((1,)))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: rng.standard_normal(a.shape).astype(a.dtype), shapes)
    model = TrainedModel(module=module, params=params, sde=VPSDE(), config=config, step=3)
    leaves, params = jax.tree.leaves(model), jax.tree.leaves(model.params)
    assert len(leaves) == len(params) and all(a is b for a, b in zip(leaves, params))
    xs = jnp.array([[0.1, -0.2], [0.5, 0.3], [-1.0, 0.0]])
    f = jax.jit(lambda m, xs: jax.vmap(m.score_fn, in_axes=(0, None))(xs, 0.5))
    np.testing.assert_allclose(f(model, xs), jax.vmap(model.score_fn, in_axes=(0, None))(xs, 0.5), rtol=1e-5)
    doubled = jax.tree.map(lambda a: 2 * a, model)
    assert type(doubled) is type(model) and doubled.config == model.config and doubled.step == model.step
    f(doubled, xs)
    assert f._cache_size() == 1  # the static part (module, sde, config, step) is hashable and equal
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.params = None


def test_in_loop_flipd_monitoring_reports_every_n_steps(tmp_path):
    out = str(tmp_path / "run")
    training.train_or_resume(training.TrainConfig(steps=30, monitor_every=10, **TINY), out, progress=False)
    import json

    with open(os.path.join(out, "train_log.jsonl")) as fh:
        rows = [json.loads(line) for line in fh]
    assert [r["step"] for r in rows] == [10, 20, 30]
    assert all(np.isfinite(r["flipd_probe"]) for r in rows)


def test_train_and_sample_cli(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert cli.main(["train", "--preset", "quick", "--steps", "20", "--n", "300", "--out", out]) == 0
    assert cli.main(["train", "--preset", "quick", "--steps", "20", "--out", out]) == 2
    assert "--resume" in capsys.readouterr().err
    samples = tmp_path / "s"  # --out is the directory sample fills: samples.npz inside
    assert cli.main(["sample", "--checkpoint", out, "--n", "4", "--num-steps", "5", "--out", str(samples)]) == 0
    assert np.load(samples / "samples.npz")["x"].shape == (4, 2)
    capsys.readouterr()
    assert cli.main(["sample", "--checkpoint", str(tmp_path / "nope"), "--out", str(samples), "--overwrite"]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_identity_check_compares_configs_as_saved(tmp_path):
    """A tuple in the current config equals the list it was saved as (JSON); real differences still count."""
    ckpt = Checkpointer(str(tmp_path / "checkpoints"), identity_keys=("m",))
    ckpt.save(1, train.init_train_state({"w": np.zeros(2, np.float32)}, train.make_optimizer(total_steps=2)),
              {"m": {"mults": (1, 2)}, "steps": 1})
    ckpt.check_compatible({"m": {"mults": (1, 2)}, "steps": 5})  # only identity keys count
    ckpt.check_compatible({"m": {"mults": [1, 2]}})
    with pytest.raises(CheckpointError, match=r"m: checkpoint has \{'mults': \[1, 2\]\}, this run has "
                                              r"\{'mults': \(1, 4\)\}"):
        ckpt.check_compatible({"m": {"mults": (1, 4)}})
    ckpt.close()


@pytest.mark.parametrize("model, key, data", [("mlp", "hidden", "lollipop"), ("lidl", "hidden", "lollipop")])
def test_width_sets_the_networks_width_and_the_run_loads(tmp_path, model, key, data):
    out = str(tmp_path / "run")
    assert cli.main(["train", "--preset", "quick", "--model", model, "--data", data, "--steps", "2", "--n", "64",
                     "--width", "24", "--out", out]) == 0
    loaded = mmh_jax.load(out)
    assert loaded.config["model_kwargs"][key] == 24
    assert sum(24 in leaf.shape for leaf in jax.tree.leaves(loaded.params)) >= 4  # the layers are 24 wide


@pytest.mark.parametrize("flag, film", [([], True), (["--time-conditioning", "add"], False)])
def test_time_conditioning_is_film_by_default_and_add_on_request(tmp_path, capsys, flag, film):
    """`mmh-jax train`'s MLP is FiLM-conditioned unless --time-conditioning add; the run records it,
    loads as the network it was, and a resume with the other conditioning is refused by name."""
    out = str(tmp_path / "run")
    base = ["train", "--preset", "quick", "--steps", "2", "--n", "64", "--width", "16", "--out", out]
    assert cli.main([*base, *flag]) == 0
    loaded = mmh_jax.load(out)
    assert loaded.config["model_kwargs"]["time_conditioning"] == ("film" if film else "add")
    assert ("film_0" in loaded.params["params"]) is film
    assert np.isfinite(np.asarray(loaded.eps_fn_for()(np.zeros(2, np.float32), 0.3))).all()
    capsys.readouterr()
    other = [] if flag else ["--time-conditioning", "add"]
    assert cli.main([*base, "--steps", "4", "--resume", *other]) == 2
    assert "model_kwargs" in capsys.readouterr().err


def test_time_conditioning_applies_to_the_mlp_only():
    assert training.preset("full", model="mlp").model_kwargs == {"time_conditioning": "film"}
    assert "time_conditioning" not in training.preset("full", model="unet").model_kwargs
    with pytest.raises(ValueError, match="applies to --model mlp, not 'unet'; drop --time-conditioning"):
        training.with_time_conditioning(training.preset("full", model="unet"), "film")
    with pytest.raises(ValueError, match="time_conditioning must be one of .* got 'scale'"):
        training.with_time_conditioning(training.preset("full"), "scale")


def test_mlp_steps_double_on_vector_data_of_64_coordinates_or_more(tmp_path):
    """Under the full preset the MLP trains MLP_HIGH_DIM_STEPS on (N, D) data with D >= 64, the
    default steps below; explicit steps, the quick preset and other models are left alone."""
    paths = {}
    for d in (32, 63, 64, 100):
        paths[d] = str(tmp_path / f"x{d}.npz")
        np.savez(paths[d], x=np.zeros((5, d), np.float32))
    high, low = training.MLP_HIGH_DIM_STEPS["steps"], training.MLP_DEFAULTS["steps"]
    assert high > low
    assert [training.preset("full", data=paths[d]).steps for d in (32, 63, 64, 100)] == [low, low, high, high]
    assert training.preset("full", data=paths[100], steps=123).steps == 123
    assert training.preset("quick", data=paths[100]).steps == training.PRESETS["quick"]["steps"]
    assert training.preset("full", data=paths[100], model="lidl").steps != high
    assert training.preset("full", data="lollipop").steps == low
    assert training.preset("full", dim=100, data="lollipop").steps == high  # a given dim is not read again
