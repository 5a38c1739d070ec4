"""A checkpoint whose arrays do not fit the model is refused by name, before orbax reads anything."""

import gc
import logging
import warnings

import jax
import jax.numpy as jnp
import pytest

from mmh_jax import _orbax_quiet, train
from mmh_jax.checkpoint import CheckpointError, Checkpointer, abstract_like


def _state(params):
    return train.init_train_state(params, train.make_optimizer(total_steps=10))


def test_mismatched_arrays_are_named(tmp_path, caplog):
    ckpt = Checkpointer(str(tmp_path / "checkpoints"))
    ckpt.save(4, _state({"w": jnp.zeros(3), "b": jnp.zeros((2, 2))}), {"model": "toy"})
    other = abstract_like(_state({"w": jnp.zeros(5), "b": jnp.zeros((2, 2)), "extra": jnp.zeros(1)}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no stray-coroutine warnings: nothing was read
        with pytest.raises(CheckpointError) as info:
            ckpt.restore(other)
        gc.collect()
    msg = str(info.value)
    assert "could not be restored: its arrays do not fit" in msg
    assert "ema_params.extra: expected, not stored" in msg
    assert "and 5 more" in msg  # 'extra' missing and 'w' resized in params, ema_params, mu, nu: 8
    other = abstract_like(_state({"w": jnp.zeros(5), "b": jnp.zeros((2, 2))}))
    with pytest.raises(CheckpointError, match=r"ema_params\.w: stored float32\[3\], expected float32\[5\]"):
        ckpt.restore(other)
    assert not [r for r in caplog.records if r.name == "asyncio"]
    # the same checkpoint still restores into the model it belongs to
    same = ckpt.restore(abstract_like(_state({"w": jnp.zeros(3), "b": jnp.zeros((2, 2))})))
    assert jax.tree_util.tree_structure(same.params) == jax.tree_util.tree_structure({"w": 0, "b": 0})
    ckpt.close()


def test_leftover_reads_quiet_drops_only_its_own_reports(caplog):
    log = logging.getLogger("asyncio")

    async def never_awaited():
        pass

    with _orbax_quiet.leftover_reads_quiet(), warnings.catch_warnings(record=True) as seen:
        log.error("Future exception was never retrieved")
        log.error("something else")
        coro = never_awaited()
        del coro
        gc.collect()
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == ["something else"]
    assert not [w for w in seen if "never awaited" in str(w.message)]
    log.error("Future exception was never retrieved")  # outside the context: reported as before
    assert caplog.records[-1].getMessage() == "Future exception was never retrieved"
