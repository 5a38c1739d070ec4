"""Orbax checkpoints of training runs: atomic saves, last-k retention, exact resume, clear errors.

A run directory holds ``checkpoints/<step>/`` written by an orbax ``CheckpointManager``: each save
goes to a temporary directory that is renamed into place only when complete, so an interrupted save
never replaces a good checkpoint (the half-written temporary is ignored). Next to the train state
each checkpoint stores ``meta`` (JSON): the format tag and the run's configuration, which is
compared on resume — a checkpoint of another model or data set is refused, never overwritten.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import sys
import warnings
from typing import Any

import jax
import orbax.checkpoint as ocp

__all__ = ["CheckpointError", "FORMAT", "Checkpointer"]

FORMAT = "mmh_jax.train/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, unreadable, truncated, or of another run.

    Examples:
      >>> import tempfile
      >>> Checkpointer(tempfile.mkdtemp(), read_only=True).read_meta()  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      mmh_jax.checkpoint.CheckpointError: no checkpoint found in /....
    """


def _as_saved(value: Any) -> Any:
    """``value`` as it reads back from the JSON metadata (tuples become lists, and so on)."""
    return json.loads(json.dumps(value))


def _diff(saved: dict, current: dict, keys) -> list[str]:
    return [f"{k}: checkpoint has {saved.get(k)!r}, this run has {current.get(k)!r}"
            for k in keys if _as_saved(saved.get(k)) != _as_saved(current.get(k))]


class Checkpointer:
    """Save and restore :class:`mmh_jax.train.TrainState` plus a JSON ``config`` under ``directory``.

    Args:
      directory: the run's checkpoint folder (created when saving).
      max_to_keep: how many recent checkpoints to keep.
      identity_keys: config entries that must match on resume (model, data, ...).
      read_only: do not create ``directory`` (for loading).

    The metadata is JSON (orbax ``JsonSave``) and the state arrays are orbax/tensorstore files:
    nothing in a checkpoint directory is unpickled or executed when it is read.

    Examples:
      >>> import os, tempfile
      >>> import jax.numpy as jnp
      >>> from mmh_jax import train
      >>> opt = train.make_optimizer(total_steps=10)
      >>> state = train.init_train_state({"w": jnp.arange(3.0)}, opt)
      >>> ckpt = Checkpointer(os.path.join(tempfile.mkdtemp(), "checkpoints"))
      >>> ckpt.save(5, state, {"model": "toy"})
      >>> ckpt.latest_step(), ckpt.read_meta()["config"]
      (5, {'model': 'toy'})
      >>> ckpt.restore(abstract_like(state)).params["w"].tolist()
      [0.0, 1.0, 2.0]
      >>> ckpt.close()
    """

    def __init__(self, directory: str, *, max_to_keep: int = 3, identity_keys=(), read_only: bool = False):
        self.directory = os.path.abspath(directory)
        self.identity_keys = tuple(identity_keys)
        # read_only only stops us from creating the folder (orbax's own read-only mode logs a warning
        # on every use and we never save through a reader anyway).
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=not read_only, enable_async_checkpointing=False,
        )
        handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def latest_step(self) -> int | None:
        """Step of the newest complete checkpoint (temporaries of interrupted saves are ignored)."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state, config: dict[str, Any]) -> None:
        """Write ``state`` at ``step`` atomically; blocks until the checkpoint is complete."""
        meta = {"format": FORMAT, "step": int(step), "config": config}
        self._manager.save(
            int(step),
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=True,
        )
        self._manager.wait_until_finished()

    def read_meta(self, step: int | None = None) -> dict[str, Any]:
        """The JSON metadata of a checkpoint (default: the newest)."""
        step = self._require_step(step)
        try:
            meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as e:  # orbax raises many types for unreadable files
            raise CheckpointError(
                f"checkpoint {self._step_dir(step)} has no readable metadata ({type(e).__name__}: {e}); "
                "it is not a complete mmh_jax checkpoint."
            ) from e
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CheckpointError(
                f"checkpoint {self._step_dir(step)} is not an mmh_jax training checkpoint "
                f"(format {meta.get('format') if isinstance(meta, dict) else None!r}, expected {FORMAT!r})."
            )
        return meta

    def check_compatible(self, config: dict[str, Any], step: int | None = None) -> None:
        """Raise :class:`CheckpointError` if the checkpoint was made by a different model/data set."""
        saved = self.read_meta(step)["config"]
        diffs = _diff(saved, config, self.identity_keys)
        if diffs:
            raise CheckpointError(
                f"checkpoint in {self.directory} belongs to a different run; refusing to resume or overwrite it:\n  "
                + "\n  ".join(diffs)
                + "\nUse a new --out directory, or the original settings."
            )

    def restore(self, abstract_state, step: int | None = None):
        """Restore the train state (shapes/dtypes from ``abstract_state``) at ``step`` (default: newest)."""
        step = self._require_step(step)
        # Shapes and dtypes are checked against the stored metadata first: a checkpoint of another
        # model is then refused by name, before orbax starts any reads (see _leftover_reads_quiet).
        mismatch = self._mismatch(step, abstract_state)
        if mismatch:
            raise CheckpointError(
                f"checkpoint {self._step_dir(step)} could not be restored: its arrays do not fit the "
                f"model its config describes ({mismatch}). It is from another model, or its config was "
                f"edited; other checkpoints here: {self.all_steps()}. Nothing was overwritten."
            )
        # A failed orbax restore leaves its reads behind; they are collected here, quietly (see
        # _leftover_reads_quiet): the CheckpointError below says what went wrong.
        with _leftover_reads_quiet():
            try:
                out = self._manager.restore(
                    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
                )
            except Exception as e:
                reason = f"{type(e).__name__}: {e}"
            else:
                return out["state"]
            gc.collect()
        _quiet_closed_loop_reports()
        raise CheckpointError(
            f"checkpoint {self._step_dir(step)} could not be restored ({reason}). "
            f"It may be truncated or from another model; other checkpoints here: {self.all_steps()}. "
            "Nothing was overwritten."
        )

    def _mismatch(self, step: int, abstract_state) -> str:
        """What differs between the stored arrays and ``abstract_state`` ('' if nothing does, or if
        the metadata cannot be read: the restore itself then says what is wrong)."""
        try:
            stored = self._manager.item_metadata(step)["state"].tree
        except Exception:  # orbax raises many types for unreadable metadata
            return ""
        stored, expected = _by_name(stored), _by_name(abstract_state)
        problems = [f"{k}: expected, not stored" for k in sorted(expected.keys() - stored.keys())]
        problems += [f"{k}: stored, not expected" for k in sorted(stored.keys() - expected.keys())]
        problems += [f"{k}: stored {stored[k]}, expected {expected[k]}"
                     for k in sorted(stored.keys() & expected.keys()) if stored[k] != expected[k]]
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        return "; ".join(problems[:3]) + more

    def close(self) -> None:
        self._manager.close()

    def _step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def _require_step(self, step: int | None) -> int:
        if step is None:
            step = self.latest_step()
            if step is None:
                raise CheckpointError(f"no checkpoint found in {self.directory}.")
        elif step not in self._manager.all_steps():
            raise CheckpointError(f"no checkpoint at step {step} in {self.directory}; have {self.all_steps()}.")
        return int(step)


def _by_name(tree) -> dict[str, str]:
    """``{'params.Dense_0.kernel': 'float32[2,128]', ...}`` for a state or orbax's metadata of it
    (orbax stores dataclasses and named tuples as dicts, so only the names along the path count)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path, simple=True, separator="."):
            f"{jax.numpy.dtype(leaf.dtype).name}{list(leaf.shape)}" for path, leaf in leaves}


@contextlib.contextmanager
def _leftover_reads_quiet():
    """Silence, while a restore runs and what it left behind is collected, the reports of reads a
    failed orbax restore abandons: coroutines created but never awaited (a RuntimeWarning, or an
    unraisable exception from their finalizer) and gathered futures whose error nobody retrieved
    (an ``asyncio`` log record). The CheckpointError raised afterwards says what went wrong."""
    asyncio_log = logging.getLogger("asyncio")
    drop = _DropUnretrieved()
    asyncio_log.addFilter(drop)
    hook, sys.unraisablehook = sys.unraisablehook, _ignore_unraisable
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
            yield
    finally:
        sys.unraisablehook = hook
        asyncio_log.removeFilter(drop)


class _DropUnretrieved(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "exception was never retrieved" not in record.getMessage()


def _ignore_unraisable(unraisable) -> None:
    """``sys.unraisablehook`` that drops the report (see :meth:`Checkpointer.restore`)."""


def _is_closed_loop_error(exc_type, exc, tb) -> bool:
    """``RuntimeError('Event loop is closed')`` raised by asyncio's ``_check_closed``."""
    if exc_type is not RuntimeError or str(exc) != "Event loop is closed":
        return False
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_name == "_check_closed"


def _quiet_closed_loop_reports() -> None:
    """After a failed restore, reads that orbax had in flight finish on tensorstore's threads and try
    to wake the event loop orbax already closed; each prints a "RuntimeError: Event loop is closed"
    traceback at some later moment. Drop exactly those reports (unraisable or excepthook); every
    other error is reported as before. Installed once per process."""
    if getattr(sys.unraisablehook, "_mmh_quiet", False):
        return
    unraisable_hook, except_hook = sys.unraisablehook, sys.excepthook

    def unraisable(u):
        if not _is_closed_loop_error(u.exc_type, u.exc_value, u.exc_traceback):
            unraisable_hook(u)

    def excepthook(exc_type, exc, tb):
        if not _is_closed_loop_error(exc_type, exc, tb):
            except_hook(exc_type, exc, tb)

    unraisable._mmh_quiet = True
    sys.unraisablehook, sys.excepthook = unraisable, excepthook


def abstract_like(tree):
    """ShapeDtypeStructs of a pytree (what orbax restores into)."""
    return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)
