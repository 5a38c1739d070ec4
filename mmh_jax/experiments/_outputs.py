"""One ``--out`` rule for every command: a directory that the command fills, never overwritten unasked.

Examples:
  >>> import os, tempfile
  >>> out = os.path.join(tempfile.mkdtemp(), "lid")
  >>> output_paths(out, ("lid.npz",), command="lid")["lid.npz"] == os.path.join(out, "lid.npz")
  True
  >>> output_paths("runs/lid.npz", ("lid.npz",), command="lid")  # doctest: +ELLIPSIS
  Traceback (most recent call last):
  ...
  ValueError: --out 'runs/lid.npz' names a file, ...
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["OutputExistsError", "output_paths", "write_npz"]

#: Endings that mark a file name, not a directory, in ``--out``.
FILE_SUFFIXES = (".npz", ".npy", ".json", ".png", ".html", ".md", ".csv", ".txt")


class OutputExistsError(ValueError):
    """``--out`` already holds outputs of an earlier run (pass ``overwrite=True`` to replace them)."""


def output_paths(out: str, names: tuple[str, ...], *, command: str, overwrite: bool = False) -> dict[str, str]:
    """The paths of ``names`` inside the directory ``out``, checked before any work.

    Args:
      out: the directory the command fills (created later, by whoever writes).
      names: the files the command writes there.
      command: the ``mmh-jax`` subcommand, for messages.
      overwrite: replace files an earlier run left (default: refuse).

    Returns:
      ``{name: path}``.

    Raises:
      ValueError: ``out`` is an existing file or ends like a file name.
      OutputExistsError: one of the files exists and ``overwrite`` is False.
    """
    if os.path.isfile(out) or out.lower().endswith(FILE_SUFFIXES):
        parent = os.path.dirname(out.rstrip(os.sep)) or "."
        raise ValueError(
            f"--out {out!r} names a file, but --out is the directory that `mmh-jax {command}` fills (it writes "
            f"{', '.join(names)} there); pass a directory, e.g. --out {os.path.join(parent, command)}."
        )
    paths = {name: os.path.join(out, name) for name in names}
    existing = [name for name, path in paths.items() if os.path.exists(path)]
    if existing and not overwrite:
        raise OutputExistsError(
            f"--out {out!r} already holds {', '.join(existing)} from an earlier run; pass --overwrite to replace "
            "it, or choose another --out. Nothing was written."
        )
    return paths


def write_npz(path: str, **arrays) -> None:
    """``np.savez`` atomically (a temporary file beside ``path``, then ``os.replace``), with the mode a
    plain ``open`` gives (0666 less the umask), so colleagues can read it as they can a PNG."""
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
