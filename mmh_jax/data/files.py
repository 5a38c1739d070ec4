"""Reading ``.npy``/``.npz`` data files safely: no pickles, every file handle closed, one error type.

[`read_points`][mmh_jax.data.files.read_points] is the one reader of a data file of points (the commands
``lid`` and ``train``
use it): the points, and the arrays stored beside them (``lid``, ``component``, ``labels``, ...).

``numpy.load`` given a path leaks its file handle when a ``.npz`` is damaged (``BadZipFile``) and
reports damaged files with several exception types (``ValueError`` about pickles or format
versions, ``OSError``, ``EOFError``, ``zipfile.BadZipFile``). [`read_numpy`][mmh_jax.data.files.read_numpy]
opens the file
itself, reads every array eagerly and turns all of these into one ``ValueError`` that names the file.
Bytes that are not NumPy's at all (text, random bytes) are named as such: ``numpy.load`` takes any
file without the ``.npy``/zip magic for a pickle and advises ``allow_pickle``, which would be wrong
and risky here.
"""

from __future__ import annotations

import dataclasses
import zipfile

import numpy as np

__all__ = ["PointsFile", "read_numpy", "read_points"]


#: First bytes of a ``.npy`` file, and of a ``.npz`` (a zip archive: a member's header, or an empty archive's end).
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")


def _not_numpy(path: str, head: bytes) -> ValueError:
    """The error for bytes that are neither ``.npy`` nor ``.npz`` (no pickle advice: loading never runs code)."""
    seen = f"starts with {head[:8]!r}" if head else "is empty"
    return ValueError(
        f"{path!r} is not a NumPy file (it {seen}, not the .npy magic {_NPY_MAGIC!r} or a .npz zip header); "
        "save the array with np.save or np.savez."
    )


def _pickled(path: str) -> ValueError:
    """The error for an object array: its items are pickles, which are never loaded."""
    return ValueError(
        f"{path!r} holds an object (pickled) array, which is refused because loading it could run code; "
        "save a numeric array instead, e.g. np.save(path, np.asarray(x, np.float32))."
    )


def _load(fh) -> np.ndarray | dict:
    """Every array of an open ``.npy``/``.npz``, read eagerly so the file can be closed."""
    fh.seek(0)
    loaded = np.load(fh, allow_pickle=False)
    if isinstance(loaded, np.ndarray):
        return loaded
    with loaded:
        return {name: loaded[name] for name in loaded.files}


def _check_members(path: str, arrays: dict) -> dict[str, np.ndarray]:
    """A zip whose members are not all ``.npy`` arrays is not an ``.npz`` (NpzFile returns their raw bytes)."""
    for name, value in arrays.items():
        if not isinstance(value, np.ndarray):
            raise ValueError(f"{path!r} is not a NumPy .npz file: its member {name!r} is not a .npy array; "
                             "save the arrays with np.savez.")
    return arrays


def read_numpy(path: str) -> np.ndarray | dict[str, np.ndarray]:
    """The array of a ``.npy`` file, or ``{name: array}`` of a ``.npz`` file (read by content, not name).

    Object arrays (pickles) are refused: loading data never executes code.

    Args:
      path: the file to read.

    Returns:
      the array of a ``.npy``, or ``{name: array}`` of a ``.npz`` (all members loaded).

    Raises:
      FileNotFoundError: no such file.
      ValueError: a directory, a damaged or truncated file, a pickle, or not a numpy file at all
        (text, random bytes: "not a NumPy file").

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
      >>> with open(path, "w") as fh:
      ...     _ = fh.write("x,y\\n1,2\\n")
      >>> read_numpy(path)  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      ValueError: '...a.npz' is not a NumPy file (it starts with b'x,y\\n1,2\\n', not the .npy magic ...
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            loaded = _load(fh) if head.startswith((_NPY_MAGIC, *_ZIP_MAGICS)) else None
    except FileNotFoundError:
        raise
    except ValueError as e:
        if "allow_pickle" in str(e):  # numpy's words for an object array: never pass its advice on
            raise _pickled(path) from None
        raise ValueError(f"{path!r} is not a readable numpy .npy/.npz file ({type(e).__name__}: {e}).") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path!r} is not a readable numpy .npy/.npz file ({type(e).__name__}: {e}).") from None
    if loaded is None:
        raise _not_numpy(path, head)
    return loaded if isinstance(loaded, np.ndarray) else _check_members(path, loaded)


@dataclasses.dataclass(frozen=True)
class PointsFile:
    """The arrays of a ``.npy``/``.npz`` data file: the points and what is stored beside them.

    Attributes:
      x: the points as stored (any shape and dtype: the caller checks what it needs).
      key: the ``.npz`` key of the points; None for a ``.npy``.
      arrays: every array of a ``.npz`` by name (the points included); empty for a ``.npy``.

    Examples:
      >>> f = PointsFile(x=np.zeros((2, 3)), key="x", arrays={"x": np.zeros((2, 3)), "lid": np.ones(2)})
      >>> f.beside("lid").tolist(), f.beside("labels")
      ([1.0, 1.0], None)
    """

    x: np.ndarray
    key: str | None
    arrays: dict[str, np.ndarray]

    def beside(self, name: str) -> np.ndarray | None:
        """The array ``name`` stored beside the points (e.g. ``lid``, ``component``, ``labels``, ``repeats``);
        None when the file has none, or when ``name`` holds the points themselves."""
        return self.arrays[name] if name in self.arrays and name != self.key else None


def read_points(path: str, *, keys: tuple[str, ...] = ("x",)) -> PointsFile:
    """The points of a ``.npy`` file, or of a ``.npz`` under the first of ``keys`` it has (else its only array).

    Args:
      path: a ``.npy``/``.npz`` file (read by content, as [`read_numpy`][mmh_jax.data.files.read_numpy]).
      keys: the ``.npz`` keys that may hold the points, in order of preference.

    Returns:
      a [`PointsFile`][mmh_jax.data.files.PointsFile].

    Raises:
      FileNotFoundError: no such file.
      ValueError: what [`read_numpy`][mmh_jax.data.files.read_numpy] refuses, or a ``.npz`` with several
        arrays and none under ``keys``
        (the message starts with the quoted path, so a caller can prefix the flag that named it).

    Examples:
      >>> import os, tempfile
      >>> path = os.path.join(tempfile.mkdtemp(), "a.npz")
      >>> np.savez(path, x=np.zeros((2, 3)), lid=np.array([1, 2]))
      >>> f = read_points(path)
      >>> f.x.shape, f.beside("lid").tolist(), f.beside("component")
      ((2, 3), [1, 2], None)
    """
    loaded = read_numpy(path)
    if isinstance(loaded, np.ndarray):
        return PointsFile(loaded, None, {})
    names = list(loaded)
    key = next((k for k in keys if k in names), names[0] if len(names) == 1 else None)
    if key is None:
        raise ValueError(f"{path!r} holds arrays {names}; store the points under the key 'x'.")
    return PointsFile(loaded[key], key, loaded)
