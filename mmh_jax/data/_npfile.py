"""Reading ``.npy``/``.npz`` files safely: no pickles, every file handle closed, one error type.

``numpy.load`` given a path leaks its file handle when a ``.npz`` is damaged (``BadZipFile``) and
reports damaged files with several exception types (``ValueError`` about pickles or format
versions, ``OSError``, ``EOFError``, ``zipfile.BadZipFile``). :func:`read_numpy` opens the file
itself, reads every array eagerly and turns all of these into one ``ValueError`` that names the file.
"""

from __future__ import annotations

import zipfile

import numpy as np

__all__ = ["read_numpy"]


def read_numpy(path: str) -> np.ndarray | dict[str, np.ndarray]:
    """The array of a ``.npy`` file, or ``{name: array}`` of a ``.npz`` file (read by content, not name).

    Object arrays (pickles) are refused: loading data never executes code.

    Raises:
      FileNotFoundError: no such file.
      ValueError: a directory, a damaged or truncated file, a pickle, or not a numpy file at all.

    Examples:
      >>> import os, tempfile
      >>> path = os.path.join(tempfile.mkdtemp(), "a.npz")
      >>> np.savez(path, x=np.zeros((2, 3)))
      >>> {k: v.shape for k, v in read_numpy(path).items()}
      {'x': (2, 3)}
      >>> with open(path, "wb") as fh:
      ...     _ = fh.write(b"PK" + bytes([3, 4]) + b" damaged")
      >>> read_numpy(path)  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      ValueError: '...a.npz' is not a readable numpy .npy/.npz file (BadZipFile: File is not a zip file).
    """
    try:
        with open(path, "rb") as fh:
            loaded = np.load(fh, allow_pickle=False)
            if isinstance(loaded, np.ndarray):
                return loaded
            with loaded:
                return {name: loaded[name] for name in loaded.files}
    except FileNotFoundError:
        raise
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path!r} is not a readable numpy .npy/.npz file ({type(e).__name__}: {e}).") from None
