"""Orbax checkpoints of training runs: atomic saves, last-k retention, exact resume, clear errors.

A run directory holds ``checkpoints/<step>/`` written by an orbax ``CheckpointManager``: each save
goes to a temporary directory (``<step>.orbax-checkpoint-tmp``) that is renamed into place only when
complete, so an interrupted save never replaces a good checkpoint (the half-written temporary is
ignored; [`Checkpointer.interrupted_saves`][mmh_jax.checkpoint.Checkpointer.interrupted_saves] lists such
leftovers). Next to the train state each
checkpoint stores ``meta`` (JSON): the format tag and the run's configuration, which is compared on
resume — a checkpoint of another model or data set is refused, never overwritten.

A state whose parameters hold NaN or inf is never saved
([`NonFiniteError`][mmh_jax.checkpoint.NonFiniteError]). A checkpoint that
cannot be read back — truncated or overwritten files, missing metadata, or (written before that
check) non-finite parameters — raises [`DamagedCheckpointError`][mmh_jax.checkpoint.DamagedCheckpointError]:
one line of at most
`MAX_MESSAGE` characters naming the damaged step and the intact ones (orbax's own text stays
in ``__cause__``).
[`Checkpointer.restore_newest_intact`][mmh_jax.checkpoint.Checkpointer.restore_newest_intact] resumes from the
newest intact step. """

from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from mmh_jax._orbax_quiet import orbax_read

__all__ = ["CheckpointError", "DamagedCheckpointError", "NonFiniteError", "FORMAT", "Checkpointer"]

FORMAT = "mmh_jax.train/1"

#: Longest error message about a damaged checkpoint (the directory is shortened from the left to fit).
MAX_MESSAGE = 300

#: What orbax appends to the name of a save in progress (``<step>.orbax-checkpoint-tmp``).
_TMP_MARK = ".orbax-checkpoint-tmp"
#: What `Checkpointer.save` appends to a damaged step it moves aside (orbax ignores the name).
_DAMAGED_MARK = ".damaged"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, unreadable, truncated, or of another run.

    Examples:
      >>> import tempfile
      >>> Checkpointer(tempfile.mkdtemp(), read_only=True).read_meta()  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      mmh_jax.checkpoint.CheckpointError: no checkpoint found in /....
    """


class DamagedCheckpointError(CheckpointError):
    """A checkpoint step that cannot be read back: truncated, overwritten or missing files, or
    non-finite parameters (written before [`Checkpointer.save`][mmh_jax.checkpoint.Checkpointer.save] refused
    them).

    The message is one line of at most `MAX_MESSAGE` characters naming the step, what is wrong
    and the intact steps of the directory; orbax's own error, when there is one, is ``__cause__``.

    Attributes:
      step: the damaged step.
      intact: the other steps of the directory that read back, oldest first (possibly empty).

    Examples:
      >>> e = DamagedCheckpointError("checkpoint step 3 in /run could not be restored", step=3, intact=[1, 2])
      >>> isinstance(e, CheckpointError), e.step, e.intact
      (True, 3, [1, 2])
    """

    def __init__(self, message: str, *, step: int, intact=()):
        super().__init__(message)
        self.step = int(step)
        self.intact = [int(s) for s in intact]


class NonFiniteError(CheckpointError):
    """[`Checkpointer.save`][mmh_jax.checkpoint.Checkpointer.save] refused a state whose parameters (or EMA
    parameters) hold NaN or
    inf; nothing was written. ``step`` is the step, ``leaf`` the path of the first non-finite leaf.

    Examples:
      >>> import jax.numpy as jnp
      >>> from mmh_jax import train
      >>> state = train.init_train_state({"w": jnp.array([1.0, jnp.nan])}, train.make_optimizer(total_steps=2))
      >>> import tempfile
      >>> Checkpointer(tempfile.mkdtemp(), read_only=True).save(2, state, {})
      Traceback (most recent call last):
      ...
      mmh_jax.checkpoint.NonFiniteError: refusing to save checkpoint step 2: params.w holds NaN or inf (training diverged); nothing was written.
    """

    def __init__(self, message: str, *, step: int, leaf: str):
        super().__init__(message)
        self.step = int(step)
        self.leaf = leaf


def _as_saved(value: Any) -> Any:
    """``value`` as it reads back from the JSON metadata (tuples become lists, and so on)."""
    return json.loads(json.dumps(value))


def _diff(saved: dict, current: dict, keys) -> list[str]:
    return [f"{k}: checkpoint has {saved.get(k)!r}, this run has {current.get(k)!r}"
            for k in keys if _as_saved(saved.get(k)) != _as_saved(current.get(k))]


def _fit(text: str, directory: str) -> str:
    """``text`` with ``{dir}`` replaced by ``directory``, shortened from the left (``...``) so the
    line is at most `MAX_MESSAGE` characters where the rest of the text allows."""
    line = text.replace("{dir}", directory)
    if len(line) <= MAX_MESSAGE:
        return line
    room = max(MAX_MESSAGE - (len(line) - len(directory)) - 3, 16)
    return text.replace("{dir}", "..." + directory[-room:]) if room < len(directory) else line


def _steps_text(steps) -> str:
    """``[100, 200]``, or ``[100, ..., 800, 900] (9 steps)`` for many."""
    steps = list(steps)
    if len(steps) <= 4:
        return str(steps)
    return f"[{steps[0]}, ..., {', '.join(map(str, steps[-2:]))}] ({len(steps)} steps)"


def _step_order(name: str):
    """Sort key of entries of a checkpoint folder: by the step their name starts with."""
    head = name.split(".", 1)[0]
    return (0, int(head), name) if head.isdigit() else (1, 0, name)


class _Unreadable(Exception):
    """A step that does not read back; ``args[0]`` says why, in a few words (internal)."""


class Checkpointer:
    """Save and restore [`mmh_jax.train.TrainState`][mmh_jax.train.TrainState] plus a JSON ``config`` under
    ``directory``.

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

      Resuming: the newest checkpoint that reads back, and the newer, damaged ones skipped.

      >>> ckpt.save(6, state, {"model": "toy"})
      >>> with open(os.path.join(ckpt.directory, "6", "state", "_METADATA"), "w") as fh:
      ...     _ = fh.write("damaged")
      >>> _, step, skipped = ckpt.restore_newest_intact(abstract_like(state), config={"model": "toy"})
      >>> step, skipped, ckpt.interrupted_saves()
      (5, [6], [])
      >>> ckpt.restore(abstract_like(state))  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      mmh_jax.checkpoint.DamagedCheckpointError: checkpoint step 6 in /... could not be restored: it is damaged (its arrays cannot be read); intact steps: [5]; pass --step 5 (or load(step=5)) to use one.
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

    def interrupted_saves(self) -> list[str]:
        """Paths of saves that were cut short (a kill during a save leaves orbax's temporary
        ``<step>.orbax-checkpoint-tmp`` next to the steps), oldest step first. They are never read
        (`all_steps` ignores them), and orbax removes one when its step is saved again."""
        try:
            names = os.listdir(self.directory)
        except OSError:
            return []
        return [os.path.join(self.directory, n) for n in sorted(names, key=_step_order) if _TMP_MARK in n]

    def damaged_kept(self) -> list[str]:
        """Paths of damaged checkpoints that [`save`][mmh_jax.checkpoint.Checkpointer.save] moved aside
        (``<step>.damaged``) to save
        that step again; they are never read, and kept for inspection (delete them at will)."""
        try:
            names = os.listdir(self.directory)
        except OSError:
            return []
        return [os.path.join(self.directory, n) for n in sorted(names, key=_step_order) if _DAMAGED_MARK in n]

    def save(self, step: int, state, config: dict[str, Any]) -> None:
        """Write ``state`` at ``step`` atomically; blocks until the checkpoint is complete.

        A damaged checkpoint already at ``step`` (one that
        [`restore_newest_intact`][mmh_jax.checkpoint.Checkpointer.restore_newest_intact] skipped, so
        training reached its step again) is moved aside to ``<step>.damaged`` (see
        [`damaged_kept`][mmh_jax.checkpoint.Checkpointer.damaged_kept]), never deleted, and the new one saved
        in its place.

        Raises:
          NonFiniteError: the parameters or EMA parameters hold NaN or inf (checked before anything
            is written).
          CheckpointError: an intact checkpoint already exists at ``step`` (nothing is overwritten).
        """
        step = int(step)
        leaf = _first_nonfinite(state)
        if leaf is not None:
            raise NonFiniteError(
                f"refusing to save checkpoint step {step}: {leaf} holds NaN or inf (training diverged); "
                "nothing was written.", step=step, leaf=leaf)
        if step in self._manager.all_steps():
            self._set_aside_damaged(step, state)
        meta = {"format": FORMAT, "step": step, "config": config}
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=True,
        )
        self._manager.wait_until_finished()

    def read_meta(self, step: int | None = None) -> dict[str, Any]:
        """The JSON metadata of a checkpoint (default: the newest).

        Raises:
          DamagedCheckpointError: the metadata cannot be read (the intact steps named are those whose
            metadata reads).
          CheckpointError: no such checkpoint, or not one of ``mmh_jax``.
        """
        step = self._require_step(step)
        try:
            meta = self._read_meta(step)
        except _Unreadable as e:
            raise self._damaged(step, e.args[0], self._intact_steps(step)) from e.__cause__
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CheckpointError(_fit(
                f"checkpoint step {step} in {{dir}} is not an mmh_jax training checkpoint "
                f"(format {meta.get('format') if isinstance(meta, dict) else None!r}, expected {FORMAT!r}).",
                self.directory))
        return meta

    def check_compatible(self, config: dict[str, Any], step: int | None = None) -> None:
        """Raise [`CheckpointError`][mmh_jax.checkpoint.CheckpointError] if the checkpoint was made by a
        different model/data set."""
        self._check_identity(self.read_meta(step)["config"], config)

    def restore(self, abstract_state, step: int | None = None):
        """Restore the train state (shapes/dtypes from ``abstract_state``) at ``step`` (default: newest).

        Raises:
          DamagedCheckpointError: the step does not read back, or its parameters are not finite; the
            message names the other steps that do (each is restored once to check it).
          CheckpointError: no such step, or its arrays do not fit ``abstract_state``.
        """
        step = self._require_step(step)
        self._refuse_mismatch(step, abstract_state)
        try:
            return self._restore_checked(step, abstract_state)
        except _Unreadable as e:
            raise self._damaged(step, e.args[0], self._intact_steps(step, abstract_state)) from e.__cause__

    def restore_newest_intact(self, abstract_state, *, config: dict[str, Any] | None = None):
        """Restore the newest checkpoint that reads back, for resuming.

        Steps are tried newest first; one whose files cannot be read (or whose parameters are not
        finite) is skipped. With ``config``, each tried step must also belong to this run (as
        [`check_compatible`][mmh_jax.checkpoint.Checkpointer.check_compatible]); one of another run or model
        is refused, never skipped.

        Returns:
          ``(state, step, skipped)``: the restored state, its step, and the newer, damaged steps that
          were skipped (newest first; empty when the newest checkpoint was restored).

        Raises:
          DamagedCheckpointError: no step reads back (``step`` is the newest, ``intact`` empty).
          CheckpointError: no checkpoint at all, or one of another run or model.
        """
        steps = self.all_steps()
        if not steps:
            raise CheckpointError(_fit("no checkpoint found in {dir}.", self.directory))
        skipped, reason = [], ""
        for step in reversed(steps):
            try:
                meta = self._read_meta(step)
                if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                    self.read_meta(step)  # raises: not an mmh_jax checkpoint
                if config is not None:
                    self._check_identity(meta["config"], config)
                self._refuse_mismatch(step, abstract_state)
                return self._restore_checked(step, abstract_state), step, skipped
            except _Unreadable as e:
                skipped.append(step)
                reason = reason or f"step {step}: {e.args[0]}"
        raise DamagedCheckpointError(_fit(
            f"no checkpoint in {{dir}} could be restored: steps {_steps_text(steps)} are all damaged ({reason}); "
            "nothing was overwritten; train into a new --out.", self.directory), step=steps[-1], intact=[])

    def close(self) -> None:
        self._manager.close()

    # ---- internals ------------------------------------------------------------------------------

    def _step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def _require_step(self, step: int | None) -> int:
        if step is None:
            step = self.latest_step()
            if step is None:
                raise CheckpointError(_fit("no checkpoint found in {dir}.", self.directory))
        elif step not in self._manager.all_steps():
            raise CheckpointError(_fit(f"no checkpoint at step {step} in {{dir}}; have {_steps_text(self.all_steps())}.",
                                       self.directory))
        return int(step)

    def _check_identity(self, saved: dict[str, Any], config: dict[str, Any]) -> None:
        diffs = _diff(saved, config, self.identity_keys)
        if diffs:
            raise CheckpointError(_fit(
                "checkpoint in {dir} belongs to a different run; refusing to resume or overwrite it ("
                + "; ".join(diffs) + "). Use a new --out directory, or the original settings.", self.directory))

    def _set_aside_damaged(self, step: int, state) -> None:
        """Move the checkpoint at ``step`` to ``<step>.damaged`` if it does not read back into the
        shapes of ``state``; raise [`CheckpointError`][mmh_jax.checkpoint.CheckpointError] if it does (it is
        not overwritten)."""
        abstract = abstract_like(state)
        try:
            self._read_meta(step)
            if not self._mismatch(step, abstract):
                self._restore_checked(step, abstract)
                raise CheckpointError(_fit(
                    f"checkpoint step {step} already exists in {{dir}} and is intact; nothing was overwritten.",
                    self.directory))
        except _Unreadable:
            pass
        target, n = self._step_dir(step) + _DAMAGED_MARK, 1
        while os.path.exists(target):
            n += 1
            target = f"{self._step_dir(step)}{_DAMAGED_MARK}.{n}"
        os.rename(self._step_dir(step), target)
        self._manager.reload()

    def _damaged(self, step: int, reason: str, intact: list[int]) -> DamagedCheckpointError:
        if intact:
            hint = (f"intact steps: {_steps_text(intact)}; pass --step {intact[-1]} (or load(step={intact[-1]})) "
                    "to use one")
        else:
            hint = "no other step here is intact"
        return DamagedCheckpointError(
            _fit(f"checkpoint step {step} in {{dir}} could not be restored: {reason}; {hint}.", self.directory),
            step=step, intact=intact)

    def _read_meta(self, step: int):
        """The ``meta`` item of ``step``; raises `_Unreadable` (orbax's error as its cause)."""
        try:
            args = ocp.args.Composite(meta=ocp.args.JsonRestore())
            return orbax_read(lambda: self._manager.restore(step, args=args))["meta"]
        except Exception as e:  # orbax raises many types for unreadable files
            raise _Unreadable("it is damaged (its metadata cannot be read)") from e

    def _restore_checked(self, step: int, abstract_state):
        """The state at ``step``, its parameters finite; raises `_Unreadable` otherwise."""
        # A failed orbax restore leaves its reads behind; orbax_read finishes them quietly (see
        # mmh_jax/_orbax_quiet.py): the error raised says what went wrong.
        try:
            out = orbax_read(lambda: self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))))
        except Exception as e:
            raise _Unreadable("it is damaged (its arrays cannot be read)") from e
        state = out["state"]
        leaf = _first_nonfinite(state)
        if leaf is not None:
            raise _Unreadable(f"{leaf} holds NaN or inf (it was saved after training diverged)")
        return state

    def _metadata_problem(self, step: int) -> str:
        """Why the metadata of ``step`` (its ``meta`` and the stored array shapes) does not read ('' if it does)."""
        try:
            self._read_meta(step)
        except _Unreadable as e:
            return e.args[0]
        try:
            orbax_read(lambda: self._manager.item_metadata(step))["state"].tree
        except Exception:  # orbax raises many types for unreadable metadata
            return "it is damaged (its array metadata cannot be read)"
        return ""

    def _intact_steps(self, damaged: int, abstract_state=None) -> list[int]:
        """The steps other than ``damaged`` that read back: restored (into ``abstract_state``) and
        finite, or without ``abstract_state`` with readable metadata."""
        intact = []
        for step in self.all_steps():
            if step == damaged:
                continue
            if abstract_state is None:
                if not self._metadata_problem(step):
                    intact.append(step)
                continue
            try:
                self._read_meta(step)
                if self._mismatch(step, abstract_state):  # reads the array metadata (a step of another model)
                    continue
                self._restore_checked(step, abstract_state)
            except _Unreadable:
                continue
            intact.append(step)
        return intact

    def _refuse_mismatch(self, step: int, abstract_state) -> None:
        # Shapes and dtypes are checked against the stored metadata first: a checkpoint of another
        # model is then refused by name, before orbax starts any reads (see mmh_jax/_orbax_quiet.py).
        mismatch = self._mismatch(step, abstract_state)
        if mismatch:
            raise CheckpointError(
                f"checkpoint {self._step_dir(step)} could not be restored: its arrays do not fit the "
                f"model its config describes ({mismatch}). It is from another model, or its config was "
                f"edited; other checkpoints here: {self.all_steps()}. Nothing was overwritten."
            )

    def _mismatch(self, step: int, abstract_state) -> str:
        """What differs between the stored arrays and ``abstract_state`` ('' if nothing does, or if
        the metadata cannot be read: the restore itself then says what is wrong)."""
        try:
            stored = orbax_read(lambda: self._manager.item_metadata(step))["state"].tree
        except Exception:  # orbax raises many types for unreadable metadata
            return ""
        stored, expected = _by_name(stored), _by_name(abstract_state)
        problems = [f"{k}: expected, not stored" for k in sorted(expected.keys() - stored.keys())]
        problems += [f"{k}: stored, not expected" for k in sorted(stored.keys() - expected.keys())]
        problems += [f"{k}: stored {stored[k]}, expected {expected[k]}"
                     for k in sorted(stored.keys() & expected.keys()) if stored[k] != expected[k]]
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        return "; ".join(problems[:3]) + more


@jax.jit
def _finite_flags(leaves):
    """One bool per leaf: all of it finite (one program for all leaves, one transfer to the host)."""
    return jax.numpy.stack([jax.numpy.all(jax.numpy.isfinite(x)) for x in leaves])


def _first_nonfinite(state) -> str | None:
    """The path (``params.Dense_0.kernel``) of the first leaf of the parameters or EMA parameters
    of ``state`` holding NaN or inf, or None (every leaf of a state without them is checked)."""
    named = [(jax.tree_util.keystr(path, simple=True, separator="."), leaf)
             for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]
             if hasattr(leaf, "dtype") and jax.numpy.issubdtype(leaf.dtype, jax.numpy.inexact)]
    params = [(n, x) for n, x in named if n.split(".", 1)[0] in ("params", "ema_params")]
    named = params or named
    if not named:
        return None
    leaves = [x for _, x in named]
    try:
        flags = jax.device_get(_finite_flags(leaves))
    except ValueError:  # leaves committed to different devices: one reduction each, one transfer
        flags = jax.device_get([jax.numpy.all(jax.numpy.isfinite(x)) for x in leaves])
    bad = [n for (n, _), ok in zip(named, flags) if not ok]
    return bad[0] if bad else None


def _by_name(tree) -> dict[str, str]:
    """``{'params.Dense_0.kernel': 'float32[2,128]', ...}`` for a state or orbax's metadata of it
    (orbax stores dataclasses and named tuples as dicts, so only the names along the path count)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path, simple=True, separator="."):
            f"{jax.numpy.dtype(leaf.dtype).name}{list(leaf.shape)}" for path, leaf in leaves}


def abstract_like(tree):
    """ShapeDtypeStructs of a pytree (what orbax restores into)."""
    return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)
