"""`mmh-jax train --model flow|lidl` and `mmh-jax lid --estimator lidl|flow-jacobian|fast-flow-lidl`."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mmh_jax
from mmh_jax import cli, lid
from mmh_jax.checkpoint import CheckpointError
from mmh_jax.data import synthetic
from mmh_jax.experiments import training
from mmh_jax.trained import TrainedFlow

pytestmark = pytest.mark.xdist_group("flow_cli")  # one worker: the module fixture trains once

TINY = dict(data="lollipop", n=200, model="lidl", model_kwargs={"num_coupling": 2, "hidden": 8, "num_bins": 4},
            batch_size=32, steps=20, steps_per_call=10, checkpoint_every=10, warmup_steps=2, seed=3,
            deltas=(0.01, 0.03, 0.1))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 3-member LIDL ensemble of tiny flows, 20 steps on 200 lollipop points (checkpoints at 10 and 20)."""
    out = str(tmp_path_factory.mktemp("lidl") / "run")
    training.train_or_resume(training.TrainConfig(**TINY), out, progress=False)
    return out


def _leaves(out):
    return jax.tree_util.tree_leaves(mmh_jax.load(out).params)


def test_resume_from_a_checkpoint_equals_the_uninterrupted_run(run_dir, tmp_path):
    """Resume from the step-10 checkpoint of the run: the same parameters at step 20, bit for bit."""
    copy = str(tmp_path / "copy")
    shutil.copytree(run_dir, copy)
    shutil.rmtree(os.path.join(copy, "checkpoints", "20"))
    assert mmh_jax.load(copy).step == 10
    result = training.train_or_resume(training.TrainConfig(**TINY), copy, resume=True, progress=False)
    assert result["step"] == 20 and not result["interrupted"]
    for a, b in zip(_leaves(run_dir), _leaves(copy), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_load_gives_the_flows_and_their_lidl(run_dir):
    model = mmh_jax.load(run_dir)
    assert isinstance(model, TrainedFlow) and model.step == 20 and model.num_members == 3
    np.testing.assert_allclose(model.deltas, TINY["deltas"], rtol=1e-6)
    with open(os.path.join(run_dir, "config.json")) as fh:
        cfg = json.load(fh)
    assert cfg["model"] == "lidl" and len(cfg["flow_stats"]["scale"]) == 2
    assert cfg["kind"] == model.kind == "flow"
    # a pytree of its parameters and noise scales: jit takes the model as an argument
    assert len(jax.tree.leaves(model)) == len(jax.tree.leaves(model.params)) + 1
    log_p = jax.jit(lambda m, x: m.log_prob(x, member=1))(model, jnp.array([3.0, 3.2]))
    assert float(log_p) == pytest.approx(float(model.log_prob(jnp.array([3.0, 3.2]), member=1)), rel=1e-5)
    x = jnp.array([3.0, 3.2])

    @jax.jit  # eager Flax dispatches many small ops
    def calls(x):
        want = lid.lidl(model.log_prob_fn, model.params, x, deltas=jnp.asarray(TINY["deltas"]))
        return model.lidl(x), want, model.decoder(1)(model.encoder(1)(x))

    got, want, back = calls(x)
    assert float(got) == pytest.approx(float(want), rel=1e-6)
    np.testing.assert_allclose(back, x, atol=1e-4)  # the decoder inverts the encoder
    assert model.sample(jax.random.key(0), 5).shape == (5, 2)
    with pytest.raises(ValueError, match=r"member must be an int in \[0, 3\), got 3"):
        model.member_params(3)


def test_a_checkpoint_of_another_model_is_refused(run_dir, capsys):
    with pytest.raises(CheckpointError, match="deltas: checkpoint has"):
        training.train_or_resume(training.TrainConfig(**{**TINY, "deltas": (0.01, 0.1)}), run_dir, resume=True, progress=False)
    rc = cli.main(["train", "--model", "mlp", "--data", "lollipop", "--n", "200", "--seed", "3", "--out", run_dir,
                   "--resume", "--steps", "30"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "belongs to a different run" in err and "model: checkpoint has 'lidl', this run has 'mlp'" in err
    assert mmh_jax.load(run_dir).step == 20  # untouched


def _lid(argv, capsys):
    rc = cli.main(["lid", *argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_lid_lidl_matches_direct_calls(run_dir, tmp_path, capsys):
    out = tmp_path / "lidl"
    rc, text, err = _lid(["--checkpoint", run_dir, "--estimator", "lidl", "--n", "24", "--seed", "1", "--out",
                          str(out)], capsys)
    assert rc == 0, err
    with np.load(out / "lid.npz") as f:
        res = dict(f)
    assert set(res) == {"lid", "x", "index", "truth", "component", "deltas", "log_probs"}
    assert res["lid"].shape == (24,) and res["log_probs"].shape == (24, 3)
    ds = synthetic.lollipop(TINY["n"], seed=TINY["seed"])
    np.testing.assert_array_equal(res["x"], ds.x[res["index"]])
    model = mmh_jax.load(run_dir)
    want = jax.jit(jax.vmap(model.lidl))(res["x"])
    np.testing.assert_allclose(res["lid"], want, rtol=1e-5, atol=1e-4)
    direct_lp = jax.jit(jax.vmap(lambda x: jax.vmap(model.log_prob_fn, in_axes=(0, None))(model.params, x)))(res["x"])
    np.testing.assert_allclose(res["log_probs"], direct_lp, rtol=1e-5, atol=1e-4)
    assert "lid = LIDL: D = 2 + slope" in text and "component" in text


@pytest.mark.parametrize("estimator", ["flow-jacobian", "fast-flow-lidl"])
def test_lid_jacobian_estimators_match_direct_calls(run_dir, tmp_path, capsys, estimator):
    out = tmp_path / "jac"
    rc, text, err = _lid(["--checkpoint", run_dir, "--estimator", estimator, "--n", "16", "--tau", "-2.5",
                          "--tau-grid", "-8", "2", "21", "--out", str(out)], capsys)
    assert rc == 0, err
    with np.load(out / "lid.npz") as f:
        res = dict(f)
    assert res["curves"].shape == (16, 21) and res["lid_plateau"].shape == (16,)
    np.testing.assert_allclose(res["taus"], np.linspace(-8, 2, 21), rtol=1e-6)
    model = mmh_jax.load(run_dir)
    assert int(res["member"]) == 0  # the smallest delta
    taus = jnp.asarray(res["taus"])

    def direct(x):
        g, z = model.decoder(0), model.encoder(0)(x)
        if estimator == "flow-jacobian":
            sv = lid.jacobian_spectrum(g, z)
            return lid.lid_from_spectrum(sv, tau=-2.5), lid.lid_from_spectrum(sv, tau=taus)
        return lid.fast_flow_lidl(g, z, delta=-2.5), lid.fast_flow_lidl(g, z, delta=taus)

    want_lid, want_curves = jax.jit(jax.vmap(direct))(res["x"])
    np.testing.assert_allclose(res["lid"], want_lid, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(res["curves"], want_curves, rtol=1e-4, atol=1e-4)
    # The plateau lies in the decade above the training noise, at a level the curve takes there.
    lo = np.log(0.01)
    assert np.all((res["tau_plateau"] >= lo - 1e-4) & (res["tau_plateau"] <= lo + np.log(10) + 1e-4))
    assert np.all(res["lid_plateau"] >= res["curves"].min(1) - 1e-5)
    assert np.all(res["lid_plateau"] <= res["curves"].max(1) + 1e-5)
    assert "lid_plateau" in text


def test_lid_errors_name_the_fix(run_dir, tmp_path, capsys):
    rc, _, err = _lid(["--checkpoint", run_dir, "--estimator", "flipd", "--out", str(tmp_path / "a")], capsys)
    assert rc == 2 and "needs a diffusion model" in err and "lidl, flow-jacobian, fast-flow-lidl" in err
    rc, _, err = _lid(["--checkpoint", run_dir, "--estimator", "lidl", "--tau", "-3", "--out",
                       str(tmp_path / "b")], capsys)
    assert rc == 2 and "--tau applies to flow-jacobian and fast-flow-lidl only" in err
    rc, _, err = _lid(["--checkpoint", run_dir, "--estimator", "flow-jacobian", "--tau-grid", "1", "0", "5",
                       "--out", str(tmp_path / "c")], capsys)
    assert rc == 2 and "tau_grid must be (min, max, num) with min < max" in err
    assert not any((tmp_path / d).exists() for d in "abc")  # refused before writing anything


def test_train_flow_errors_name_the_fix(tmp_path, capsys):
    rc = cli.main(["train", "--model", "mlp", "--deltas", "0.1", "--out", str(tmp_path / "a")])
    assert rc == 2 and "deltas (noise scales of flows) apply to --model flow or lidl" in capsys.readouterr().err
    rc = cli.main(["train", "--model", "lidl", "--deltas", "0.1", "--out", str(tmp_path / "b")])
    assert rc == 2 and "--model lidl needs at least 2 positive deltas" in capsys.readouterr().err
    rc = cli.main(["train", "--model", "flow", "--deltas", "-1", "--out", str(tmp_path / "c")])
    assert rc == 2 and "finite noise scales >= 0, got (-1.0,)" in capsys.readouterr().err
