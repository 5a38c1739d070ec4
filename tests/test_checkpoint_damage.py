"""Damaged checkpoints: one short error line naming the damaged and the intact steps, resuming from
the newest intact step, leftovers of interrupted saves listed, no stray orbax tracebacks, and no
checkpoint with NaN/inf parameters written or loaded.

One tiny training run (checkpoints at steps 2, 4 and 6) serves every test; each test damages a copy.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mmh_jax import train, trained
from mmh_jax.checkpoint import (
    FORMAT, MAX_MESSAGE, CheckpointError, Checkpointer, DamagedCheckpointError, NonFiniteError, abstract_like,
)
from mmh_jax.experiments import training

pytestmark = pytest.mark.e2e  # real training runs, damaged on disk, and child processes


@pytest.fixture(scope="module")
def three_steps(tmp_path_factory):
    """A run of the quick MLP with checkpoints at steps 2, 4 and 6 (two steps per dispatch)."""
    out = tmp_path_factory.mktemp("three_steps") / "run"
    config = training.preset("quick", steps=6, n=64, seed=7, checkpoint_every=2, steps_per_call=2)
    training.train_or_resume(config, str(out), progress=False)
    assert sorted(os.listdir(out / "checkpoints")) == ["2", "4", "6"]
    return out


@pytest.fixture
def run(three_steps, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(three_steps, copy)
    return copy


def _state_files(run, step):
    root = os.path.join(run, "checkpoints", str(step), "state")
    return [os.path.join(r, f) for r, _, fs in os.walk(root) for f in fs]


def damage(run, step, how):
    """Damage checkpoint ``step`` of ``run`` the way a failing disk, a full disk or a stray ``rm`` would."""
    step_dir = os.path.join(run, "checkpoints", str(step))
    if how == "garbage":  # one array file overwritten with random bytes of the same size
        victim = max(_state_files(run, step), key=os.path.getsize)
        garbage = np.random.default_rng(0).bytes(os.path.getsize(victim))
        with open(victim, "wb") as fh:
            fh.write(garbage)
    elif how == "truncated":  # every array and metadata file cut to a third
        for path in _state_files(run, step):
            if os.path.basename(path) not in ("commit_success.txt", "_CHECKPOINT_METADATA"):
                with open(path, "r+b") as fh:
                    fh.truncate(max(os.path.getsize(path) // 3, 1))
    elif how == "no_METADATA":
        os.remove(os.path.join(step_dir, "state", "_METADATA"))
    elif how == "no_ocdbt":  # the array database gone
        os.remove(os.path.join(step_dir, "state", "manifest.ocdbt"))
        shutil.rmtree(os.path.join(step_dir, "state", "ocdbt.process_0"))
    elif how == "meta":  # the run's JSON metadata overwritten
        with open(os.path.join(step_dir, "meta", "metadata"), "w") as fh:
            fh.write("{not json")
    else:
        raise AssertionError(how)


def assert_short_line(msg):
    assert "\n" not in msg and len(msg) <= MAX_MESSAGE, (len(msg), msg)
    for orbax_text in ("TensorStore", "tensorstore", "zarr", "ocdbt", "Traceback", "Error:"):
        assert orbax_text not in msg, msg


def _abstract(run):
    """The shapes of the run's train state, as [`mmh_jax.trained.load`][mmh_jax.trained.load] builds them."""
    with open(os.path.join(run, "config.json")) as fh:
        config = json.load(fh)
    module, _ = trained.make_batched_eps_apply(config)
    optimizer = train.make_optimizer(total_steps=int(config["steps"]))
    x = jnp.zeros((1, *config["event_shape"]))
    return abstract_like(jax.eval_shape(
        lambda: train.init_train_state(module.init(jax.random.key(0), x, jnp.zeros((1,))), optimizer)))


DAMAGE = ["garbage", "truncated", "no_METADATA", "no_ocdbt", "meta"]


@pytest.mark.parametrize("how", DAMAGE)
def test_damaged_newest_step_is_one_short_line_naming_the_intact_steps(run, how):
    damage(run, 6, how)
    with pytest.raises(DamagedCheckpointError) as info:
        trained.load(str(run))
    msg = str(info.value)
    assert_short_line(msg)
    assert msg.startswith("checkpoint step 6 in ") and "could not be restored" in msg, msg
    assert "intact steps: [2, 4]; pass --step 4 (or load(step=4))" in msg, msg
    assert info.value.step == 6 and info.value.intact == [2, 4]
    assert info.value.__cause__ is not None  # orbax's own error, for --debug
    # the same through the Checkpointer, and the step it names loads
    if how != "meta":
        ckpt = Checkpointer(str(run / "checkpoints"), read_only=True)
        with pytest.raises(DamagedCheckpointError, match="intact steps: \\[2, 4\\]"):
            ckpt.restore(_abstract(run))
        ckpt.close()
    assert trained.load(str(run), step=4).step == 4


def test_a_damaged_older_step_names_the_newer_intact_ones(run):
    damage(run, 2, "garbage")
    with pytest.raises(DamagedCheckpointError) as info:
        trained.load(str(run), step=2)
    assert_short_line(str(info.value))
    assert "checkpoint step 2 in" in str(info.value) and "intact steps: [4, 6]; pass --step 6" in str(info.value)
    assert trained.load(str(run)).step == 6


def test_a_long_directory_is_shortened_to_fit_the_line(run, tmp_path):
    deep = tmp_path.joinpath(*["a_rather_long_folder_name_" + "x" * 60] * 4, "run")
    shutil.copytree(run, deep)
    damage(deep, 6, "garbage")
    damage(deep, 4, "meta")
    with pytest.raises(DamagedCheckpointError) as info:
        trained.load(str(deep))
    msg = str(info.value)
    assert_short_line(msg)
    assert msg.startswith("checkpoint step 6 in ...") and "intact steps: [2]; pass --step 2" in msg, msg
    assert msg.count("x" * 60) < 4  # the folder was shortened from the left


def test_restore_newest_intact_skips_damaged_steps(run):
    abstract = _abstract(run)
    ckpt = Checkpointer(str(run / "checkpoints"), read_only=True, identity_keys=training.IDENTITY_KEYS)
    config = ckpt.read_meta(2)["config"]
    state, step, skipped = ckpt.restore_newest_intact(abstract, config=config)
    assert (step, skipped) == (6, [])
    damage(run, 6, "garbage")
    damage(run, 4, "meta")
    state, step, skipped = ckpt.restore_newest_intact(abstract, config=config)
    assert (step, skipped) == (2, [6, 4])
    want = ckpt.restore(abstract, 2)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    # a checkpoint of another run is refused (one line), never skipped
    other = {**config, "model_kwargs": {**config["model_kwargs"], "hidden": 64}}
    with pytest.raises(CheckpointError) as info:
        ckpt.restore_newest_intact(abstract, config=other)
    assert not isinstance(info.value, DamagedCheckpointError)
    assert "belongs to a different run" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(CheckpointError) as info:
        ckpt.check_compatible(other, step=2)
    assert "model_kwargs: checkpoint has" in str(info.value) and "\n" not in str(info.value)

    damage(run, 2, "no_ocdbt")
    with pytest.raises(DamagedCheckpointError) as info:
        ckpt.restore_newest_intact(abstract, config=config)
    assert_short_line(str(info.value))
    assert "steps [2, 4, 6] are all damaged" in str(info.value) and info.value.intact == []
    ckpt.close()


def test_saving_a_skipped_damaged_step_again_keeps_the_damaged_one_aside(run):
    """Resumed from step 4 past a damaged step 6, training saves step 6 again: the damaged files
    are moved to ``6.damaged`` (not deleted), and an intact step is never overwritten."""
    damage(run, 6, "garbage")
    damaged_files = {os.path.relpath(p, run / "checkpoints" / "6"): os.path.getsize(p)
                     for p in _state_files(run, 6)}
    abstract = _abstract(run)
    ckpt = Checkpointer(str(run / "checkpoints"), identity_keys=training.IDENTITY_KEYS)
    config = ckpt.read_meta(4)["config"]
    state, step, skipped = ckpt.restore_newest_intact(abstract, config=config)
    assert (step, skipped) == (4, [6])
    ckpt.save(6, state, config)
    aside = str(run / "checkpoints" / "6.damaged")
    assert ckpt.damaged_kept() == [aside] and ckpt.all_steps() == [2, 4, 6] and ckpt.interrupted_saves() == []
    assert {os.path.relpath(os.path.join(r, f), aside): os.path.getsize(os.path.join(r, f))
            for r, _, fs in os.walk(os.path.join(aside, "state")) for f in fs} == damaged_files
    for a, b in zip(jax.tree.leaves(ckpt.restore(abstract, 6)), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(CheckpointError, match="checkpoint step 6 already exists in .* and is intact"):
        ckpt.save(6, state, config)
    ckpt.close()


_KILLED_SAVE = textwrap.dedent("""
    import os, sys
    import jax.numpy as jnp
    from orbax.checkpoint._src.path import atomicity
    from mmh_jax import train
    from mmh_jax.checkpoint import Checkpointer

    state = train.init_train_state({"w": jnp.arange(3.0)}, train.make_optimizer(total_steps=10))
    ckpt = Checkpointer(sys.argv[1])
    ckpt.save(1, state, {"model": "toy"})

    async def killed(*args, **kwargs):  # the process dies (kill -9) before the save is renamed into place
        os._exit(9)

    atomicity.AtomicRenameTemporaryPath.finalize = killed
    ckpt.save(2, state, {"model": "toy"})
""")


def test_an_interrupted_save_is_listed_and_ignored(tmp_path):
    directory = str(tmp_path / "checkpoints")
    proc = subprocess.run([sys.executable, "-c", _KILLED_SAVE, directory], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr[-3000:]
    ckpt = Checkpointer(directory, read_only=True)
    leftovers = ckpt.interrupted_saves()
    assert leftovers == [os.path.join(directory, "2" + ".orbax-checkpoint-tmp")], os.listdir(directory)
    assert ckpt.all_steps() == [1]
    abstract = abstract_like(train.init_train_state({"w": jnp.zeros(3)}, train.make_optimizer(total_steps=10)))
    state, step, skipped = ckpt.restore_newest_intact(abstract, config={"model": "toy"})
    assert (step, skipped, state.params["w"].tolist()) == (1, [], [0.0, 1.0, 2.0])
    ckpt.close()
    # saving that step again replaces the leftover
    ckpt = Checkpointer(directory)
    ckpt.save(2, state, {"model": "toy"})
    assert ckpt.interrupted_saves() == [] and ckpt.all_steps() == [1, 2]
    ckpt.close()
    assert Checkpointer(str(tmp_path / "nowhere"), read_only=True).interrupted_saves() == []


_RESTORE_MANY = textwrap.dedent("""
    import gc, json, sys, time
    import numpy as np
    from mmh_jax import train, trained
    from mmh_jax.checkpoint import Checkpointer, DamagedCheckpointError, abstract_like

    wide, run = sys.argv[1:]
    params = {f"layer_{i}": np.zeros((512, 512), np.float32) for i in range(16)}
    abstract = abstract_like(train.init_train_state(params, train.make_optimizer(total_steps=10)))
    messages = []
    for i in range(8):
        try:
            if i % 4 == 3:
                trained.load(run)
            else:
                ckpt = Checkpointer(wide, read_only=True)
                try:
                    ckpt.restore(abstract)
                finally:
                    ckpt.close()
        except DamagedCheckpointError as e:
            messages.append(str(e))
        time.sleep(0.05)  # the reads orbax abandoned finish on tensorstore's threads ...
        gc.collect()      # ... and are collected after the restore returned
    print(json.dumps(messages))
""")


def test_failed_restores_leave_no_stray_reports(run, tmp_path):
    """Restoring damaged checkpoints again and again in a fresh process prints nothing on stderr
    from the reads orbax abandons when one fails (before: dozens of "Exception ignored in:
    <coroutine object _read_array_index_and_device_put>" tracebacks and "exception was never
    retrieved" logs, at a later garbage collection or at exit)."""
    # Many wide arrays, the first tenth of their data overwritten: some reads fail while others
    # are still in flight, every time.
    wide = tmp_path / "wide"
    rng = np.random.default_rng(0)
    params = {f"layer_{i}": rng.standard_normal((512, 512)).astype(np.float32) for i in range(16)}
    Checkpointer(str(wide)).save(1, train.init_train_state(params, train.make_optimizer(total_steps=10)), {})
    data = [os.path.join(r, f) for r, _, fs in os.walk(wide / "1" / "state") for f in fs
            if os.path.getsize(os.path.join(r, f)) > 100_000]
    assert data
    for path in data:
        garbage = rng.bytes(os.path.getsize(path) // 10)
        with open(path, "r+b") as fh:
            fh.write(garbage)
    damage(run, 6, "truncated")
    damage(run, 4, "garbage")
    try:
        proc = subprocess.run([sys.executable, "-c", _RESTORE_MANY, str(wide), str(run)],
                              capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(wide)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for bad in ("Traceback", "Exception ignored", "never retrieved", "was destroyed", "Event loop is closed"):
        assert bad not in proc.stderr, proc.stderr[-3000:]
    messages = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(messages) == 8
    for msg in messages:
        assert_short_line(msg)
    assert "checkpoint step 1 in" in messages[0] and "no other step here is intact" in messages[0], messages[0]
    assert "checkpoint step 6 in" in messages[3] and "intact steps: [2]" in messages[3], messages[3]


def _toy_state(w=(1.0, 2.0), ema=None):
    params = {"Dense_0": {"kernel": jnp.asarray(w), "bias": jnp.zeros(2)}}
    state = train.init_train_state(params, train.make_optimizer(total_steps=10))
    if ema is not None:
        state = train.TrainState(step=state.step, params=state.params, opt_state=state.opt_state,
                                 ema_params={"Dense_0": {"kernel": jnp.asarray(ema), "bias": jnp.zeros(2)}})
    return state


def test_save_refuses_non_finite_parameters(tmp_path):
    ckpt = Checkpointer(str(tmp_path / "checkpoints"))
    with pytest.raises(NonFiniteError) as info:
        ckpt.save(7, _toy_state(w=(1.0, float("nan"))), {})
    msg = str(info.value)
    assert isinstance(info.value, CheckpointError) and info.value.step == 7
    assert info.value.leaf == "params.Dense_0.kernel" and "step 7" in msg and "params.Dense_0.kernel" in msg, msg
    assert_short_line(msg)
    with pytest.raises(NonFiniteError, match="ema_params.Dense_0.kernel holds NaN or inf"):
        ckpt.save(8, _toy_state(ema=(float("inf"), 0.0)), {})
    assert os.listdir(ckpt.directory) == [] and ckpt.all_steps() == []  # nothing written, not even a temporary
    ckpt.save(9, _toy_state(), {})
    assert ckpt.all_steps() == [9]
    ckpt.close()


def test_load_refuses_non_finite_parameters_of_an_old_checkpoint(run):
    """A checkpoint with NaN parameters written before save refused them (here: with the orbax
    manager directly) is refused by load, by name, and skipped when resuming."""
    abstract = _abstract(run)
    ckpt = Checkpointer(str(run / "checkpoints"))
    meta = ckpt.read_meta(6)
    state = ckpt.restore(abstract, 6)
    leaf = "ema_params.params.hidden_1.kernel"
    ema = jax.tree.map(lambda x: x, state.ema_params)
    ema["params"]["hidden_1"]["kernel"] = ema["params"]["hidden_1"]["kernel"].at[3, 5].set(jnp.nan)
    bad = train.TrainState(step=state.step, params=state.params, ema_params=ema, opt_state=state.opt_state)
    ckpt.close()
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    keep3 = ocp.CheckpointManagerOptions(max_to_keep=3)  # as the run's own Checkpointer
    with ocp.CheckpointManager(str(run / "checkpoints"), options=keep3, item_handlers=handlers) as manager:
        manager.save(8, args=ocp.args.Composite(
            state=ocp.args.StandardSave(bad), meta=ocp.args.JsonSave({**meta, "format": FORMAT, "step": 8})))
        manager.wait_until_finished()
    assert Checkpointer(str(run / "checkpoints"), read_only=True).all_steps() == [4, 6, 8]  # three kept

    with pytest.raises(DamagedCheckpointError) as info:
        trained.load(str(run))
    msg = str(info.value)
    assert_short_line(msg)
    assert "checkpoint step 8 in" in msg and f"{leaf} holds NaN or inf" in msg, msg
    assert "intact steps: [4, 6]; pass --step 6" in msg, msg
    assert trained.load(str(run), step=6).step == 6
    ckpt = Checkpointer(str(run / "checkpoints"), read_only=True)
    _, step, skipped = ckpt.restore_newest_intact(abstract)
    assert (step, skipped) == (6, [8])
    ckpt.close()
