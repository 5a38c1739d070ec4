"""Image data: scikit-learn's digits (the embedded default) and loaders for users' files.

Every loader returns an [`ImageData`][mmh_jax.data.images.ImageData] with ``x`` float32 of shape
``(N, H, W, C)`` scaled to
[−1, 1] and ``labels`` int32 of shape ``(N,)`` (−1 where the source has none). Loading is
host-side numpy; nothing is downloaded. A malformed or unreadable file raises
[`ImageDataError`][mmh_jax.data.images.ImageDataError] (a ``ValueError``) naming the file and what was wrong.

Supported sources ([`load`][mmh_jax.data.images.load] picks by path):

- ``digits``: scikit-learn's 1797 handwritten digits, 8×8×1, labels 0–9;
- ``.npz`` (array ``x`` or ``images`` or the only array; optional ``y``/``labels``) and ``.npy``;
- a folder of PNG/JPEG images (sub-folders name the classes, sorted; flat folder: no labels);
- MNIST IDX files (``*-images-idx3-ubyte`` with a sibling ``*-labels-idx1-ubyte``), optionally
  gzipped;
- CIFAR-10 python batches (``data_batch_*``/``test_batch`` files or their folder), read with a
  restricted unpickler that admits only plain containers, bytes and numpy arrays.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import os
import pickle
import struct
from typing import Any

import numpy as np

from mmh_jax.data.files import read_numpy

__all__ = ["ImageData", "ImageDataError", "digits", "from_array", "load", "load_cifar10", "load_folder",
           "load_idx", "load_npz"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class ImageDataError(ValueError):
    """A data file that cannot be read as images; the message names the file.

    Examples:
      >>> from_array(np.zeros((2, 5)))
      Traceback (most recent call last):
      ...
      mmh_jax.data.images.ImageDataError: array: images must have shape (N, H, W), (N, H, W, C) or (N, C, H, W) with C in 1-4, got (2, 5).
    """


@dataclasses.dataclass(frozen=True)
class ImageData:
    """Images in [−1, 1], shape ``(N, H, W, C)`` float32, and int32 labels (−1: unlabeled).

    Attributes:
      x: ``(N, H, W, C)`` float32 in [−1, 1].
      labels: ``(N,)`` int32, −1 where unlabeled.
      source: where the images came from (a path or ``digits``).

    Examples:
      >>> d = from_array(np.full((3, 4, 4), 255, np.uint8), [0, 1, 1])
      >>> len(d), d.shape, d.num_classes, float(d.x.max())
      (3, (4, 4, 1), 2, 1.0)
    """

    x: np.ndarray
    labels: np.ndarray
    source: str = ""

    @property
    def num_classes(self) -> int:
        """Number of classes (max label + 1), 0 when unlabeled."""
        return int(self.labels.max()) + 1 if self.labels.size and self.labels.max() >= 0 else 0

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return int(self.x.shape[0])


def _int_top(a: np.ndarray, source: str) -> float:
    """Full scale of integer images: 1 (0/1 masks), 255 (8-bit) or 65535 (uint16 above 255).

    Values outside 0..255 (0..65535 for uint16) are refused: scaling them would leave [−1, 1].
    """
    lo, hi = int(a.min()), int(a.max())
    limit = 65535 if (a.dtype.kind, a.dtype.itemsize) == ("u", 2) else 255
    if lo < 0 or hi > limit:
        raise ImageDataError(
            f"{source}: integer images ({a.dtype}) must lie in [0, {limit}], got values in [{lo}, {hi}]; "
            "rescale them to 0..255 (uint8) or to floats in [0, 1]."
        )
    return 1.0 if hi <= 1 else 255.0 if hi <= 255 else 65535.0


def _scale(images: np.ndarray, source: str) -> np.ndarray:
    """Integers (0..1, 0..255, uint16 0..65535) or floats in [0, 1] / [−1, 1] / [0, 255] → float32 in [−1, 1]."""
    a = np.asarray(images)
    if a.size == 0:
        raise ImageDataError(f"{source}: holds no images (shape {a.shape}).")
    if np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_:
        return (a.astype(np.float32) / _int_top(a, source)) * 2.0 - 1.0
    if not np.issubdtype(a.dtype, np.floating):
        raise ImageDataError(f"{source}: images must be numeric, got dtype {a.dtype}.")
    a = a.astype(np.float32)
    if not np.all(np.isfinite(a)):
        raise ImageDataError(f"{source}: images contain NaN or inf.")
    lo, hi = float(a.min()), float(a.max())
    if lo >= 0.0 and hi <= 1.0:
        return a * 2.0 - 1.0
    if lo >= -1.0 and hi <= 1.0:
        return a
    if lo >= 0.0 and hi <= 255.0:
        return a / 127.5 - 1.0
    raise ImageDataError(
        f"{source}: float images must lie in [0, 1], [-1, 1] or [0, 255], got values in [{lo:.3g}, {hi:.3g}]."
    )


#: Layouts of 4-D image arrays, and the channel counts a channel axis may have (grey, grey + alpha, RGB, RGBA).
_LAYOUTS = ("NHWC", "NCHW")
_CHANNELS = (1, 2, 3, 4)


def _shape_error(a: np.ndarray, source: str) -> ImageDataError:
    return ImageDataError(
        f"{source}: images must have shape (N, H, W), (N, H, W, C) or (N, C, H, W) with C in 1-4, got {a.shape}."
    )


def _guess_layout(a: np.ndarray, source: str) -> str:
    """The layout whose channel axis (last, or second) has 1–4 entries; refused when both do."""
    nhwc, nchw = a.shape[3] in _CHANNELS, a.shape[1] in _CHANNELS
    if nhwc and nchw:  # e.g. (3, 4, 4, 2): 4×4 images of 2 channels, or 4×2 images of 4 channels
        raise ImageDataError(
            f"{source}: images of shape {a.shape} are ambiguous, (N, H, W, C) with C={a.shape[3]} or (N, C, H, W) "
            f"with C={a.shape[1]}; pass layout='NHWC' or layout='NCHW' (from_array, load_npz) to say which."
        )
    if nhwc or nchw:
        return "NHWC" if nhwc else "NCHW"
    raise _shape_error(a, source)


def _as_nhwc(a: np.ndarray, source: str, layout: str | None = None) -> np.ndarray:
    """``(N, H, W, C)`` from ``(N, H, W)`` or a 4-D array in ``layout`` (None: guessed, if unambiguous)."""
    if a.ndim == 3:  # (N, H, W) grayscale
        return a[..., None]
    if a.ndim != 4:
        raise _shape_error(a, source)
    layout = _guess_layout(a, source) if layout is None else layout
    x = np.transpose(a, (0, 2, 3, 1)) if layout == "NCHW" else a
    if x.shape[-1] not in _CHANNELS:
        raise ImageDataError(
            f"{source}: layout={layout!r} reads shape {a.shape} as {x.shape[-1]} channels; images need 1-4 "
            "channels, so pass the other layout or reshape the array."
        )
    return x


def _check_layout(layout: str | None) -> str | None:
    if layout is not None and layout not in _LAYOUTS:
        raise ValueError(f"layout must be 'NHWC', 'NCHW' or None (read it from the shape), got layout={layout!r}.")
    return layout


def from_array(images, labels=None, *, source: str = "array", layout: str | None = None) -> ImageData:
    """Wrap an array of images (any of the layouts above) and optional labels.

    Integers are scaled from 0..255 (0..1 if all are 0 or 1; uint16 above 255 from 0..65535), floats
    from [0, 1], [−1, 1] or [0, 255], to [−1, 1].

    Args:
      images: ``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)`` with C in 1–4; numeric.
      labels: optional ``N`` integers.
      source: the name used in error messages and ``ImageData.source``.
      layout: ``"NHWC"`` or ``"NCHW"`` for a 4-D ``images``; None reads it from the shape (the axis
        of 1–4 entries is the channel axis) and refuses a shape where both axes 1 and 3 could be
        it, such as ``(3, 4, 4, 2)``. Ignored for ``(N, H, W)``.

    Returns:
      an [`ImageData`][mmh_jax.data.images.ImageData].

    Raises:
      ImageDataError: non-numeric or empty images, another layout, an ambiguous layout without
        ``layout``, NaN/inf, values outside the ranges above (integers outside 0..255, or 0..65535
        for uint16), or labels that are not N integers.
      ValueError: ``layout`` not ``"NHWC"``, ``"NCHW"`` or None.

    Examples:
      >>> d = from_array(np.zeros((2, 4, 4), np.uint8), [0, 1])
      >>> d.x.shape, float(d.x.min()), d.num_classes
      ((2, 4, 4, 1), -1.0, 2)
      >>> from_array(np.zeros((3, 4, 4, 2), np.uint8), layout="NHWC").shape
      (4, 4, 2)
    """
    layout = _check_layout(layout)
    a = np.asarray(images)
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating) or a.dtype == np.bool_):
        raise ImageDataError(f"{source}: images must be numeric (integers or floats), got dtype {a.dtype}.")
    x = _scale(_as_nhwc(a, source, layout), source)
    n = x.shape[0]
    if labels is None:
        y = np.full(n, -1, np.int32)
    else:
        y = np.asarray(labels).reshape(-1)
        if y.shape[0] != n or not np.issubdtype(y.dtype, np.integer):
            raise ImageDataError(f"{source}: labels must be {n} integers, got shape {y.shape} dtype {y.dtype}.")
        y = y.astype(np.int32)
    return ImageData(x=x, labels=y, source=source)


def digits() -> ImageData:
    """scikit-learn's 8×8 handwritten digits (1797 images, 17 grey levels), labels 0–9.

    Returns:
      an [`ImageData`][mmh_jax.data.images.ImageData] of shape ``(1797, 8, 8, 1)`` (embedded in scikit-learn:
      no download).

    Reference: Alpaydin and Kaynak, UCI "Optical Recognition of Handwritten Digits" (1998).

    Examples:
      >>> d = digits()
      >>> d.x.shape, d.num_classes, float(d.x.min()), float(d.x.max())
      ((1797, 8, 8, 1), 10, -1.0, 1.0)
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0) * 2.0 - 1.0
    return ImageData(x=x[..., None], labels=bunch.target.astype(np.int32), source="digits")


def load_npz(path: str, *, layout: str | None = None) -> ImageData:
    """Images from ``.npz`` (key ``x``/``images``/the only array; labels ``y``/``labels``) or ``.npy``.

    Read without pickles ([`mmh_jax.data.files.read_numpy`][mmh_jax.data.files.read_numpy]), scaled as in
    [`from_array`][mmh_jax.data.images.from_array]; ``layout`` as there.

    Returns:
      an [`ImageData`][mmh_jax.data.images.ImageData].

    Raises:
      FileNotFoundError: no such file.
      ImageDataError: a damaged file or one that is not a NumPy file, an object (pickled) array, an
        ambiguous ``.npz``, or arrays [`from_array`][mmh_jax.data.images.from_array] refuses.

    Examples:
      >>> import os, tempfile
      >>> path = os.path.join(tempfile.mkdtemp(), "imgs.npz")
      >>> np.savez(path, x=np.zeros((5, 6, 6), np.uint8), y=np.arange(5))
      >>> d = load_npz(path)
      >>> d.shape, d.labels.tolist()
      ((6, 6, 1), [0, 1, 2, 3, 4])
    """
    try:
        f = read_numpy(path)
    except ValueError as e:
        raise ImageDataError(str(e)) from None  # "'<path>' is not a readable numpy .npy/.npz file (...)"
    if isinstance(f, np.ndarray):
        return from_array(f, source=path, layout=layout)
    keys = list(f)
    key = next((k for k in ("x", "images") if k in keys), keys[0] if len(keys) == 1 else None)
    if key is None:
        raise ImageDataError(f"{path}: expected an array named 'x' or 'images', found {keys}.")
    lab = next((k for k in ("y", "labels") if k in keys), None)
    return from_array(f[key], None if lab is None else f[lab], source=path, layout=layout)


def load_folder(path: str) -> ImageData:
    """A folder of PNG/JPEG images; sub-folders (sorted) are classes, a flat folder is unlabeled.

    All images must share one size; they are converted to grayscale if every image is grayscale,
    RGB otherwise.

    Returns:
      an [`ImageData`][mmh_jax.data.images.ImageData] (labels: the index of the sorted class folder, or −1).

    Raises:
      FileNotFoundError: no such folder.
      ImageDataError: ``path`` is a file, no images, an unreadable image, or images of different sizes.

    Examples:
      >>> import os, tempfile
      >>> from PIL import Image
      >>> root = tempfile.mkdtemp()
      >>> for cls in ("cats", "dogs"):
      ...     os.makedirs(os.path.join(root, cls))
      ...     Image.new("L", (5, 4)).save(os.path.join(root, cls, "a.png"))
      >>> d = load_folder(root)
      >>> d.x.shape, d.labels.tolist()
      ((2, 4, 5, 1), [0, 1])
    """
    from PIL import Image, UnidentifiedImageError

    if os.path.isfile(path):  # os.listdir would raise a bare NotADirectoryError
        raise ImageDataError(
            f"load_folder: path {path!r} is a file, not a folder; pass the folder that holds the PNG/JPEG images "
            f"(e.g. {os.path.dirname(os.path.abspath(path))!r}), or read a .npz/.npy, IDX or CIFAR-10 file with "
            "images.load(path)."
        )
    entries = sorted(os.listdir(path))
    classes = [e for e in entries if os.path.isdir(os.path.join(path, e))]
    files: list[tuple[str, int]] = []
    if classes:
        for ci, c in enumerate(classes):
            for f in sorted(os.listdir(os.path.join(path, c))):
                if f.lower().endswith(IMAGE_SUFFIXES):
                    files.append((os.path.join(path, c, f), ci))
    else:
        files = [(os.path.join(path, f), -1) for f in entries if f.lower().endswith(IMAGE_SUFFIXES)]
    if not files:
        raise ImageDataError(f"{path}: no .png/.jpg/.jpeg images found (nor in class sub-folders).")
    images = []
    for f, _ in files:
        try:
            with Image.open(f) as im:
                im.load()
                images.append(im.copy())
        except (UnidentifiedImageError, OSError) as e:
            raise ImageDataError(f"{f}: not a readable image ({e}).") from e
    mode = "L" if all(im.mode in ("L", "1", "I;16", "I") for im in images) else "RGB"
    arrays = [np.asarray(im.convert(mode)) for im in images]
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        raise ImageDataError(f"{path}: images have different sizes {sorted(sizes)[:4]}; resize them to one size.")
    labels = [c for _, c in files] if classes else None
    return from_array(np.stack(arrays), labels, source=path, layout="NHWC")  # PIL arrays are (H, W[, C])


def _open_maybe_gzip(path: str) -> bytes:
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ImageDataError(f"{path}: corrupt gzip stream ({e}).") from e
    return raw


def _read_idx(path: str) -> np.ndarray:
    raw = _open_maybe_gzip(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ImageDataError(f"{path}: not an IDX file (bad magic number).")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    code, ndim = raw[2], raw[3]
    if code not in dtypes:
        raise ImageDataError(f"{path}: unknown IDX data type code 0x{code:02x}.")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ImageDataError(f"{path}: truncated IDX header.")
    shape = struct.unpack(">" + "I" * ndim, raw[4:header])
    dtype = np.dtype(dtypes[code])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ImageDataError(
            f"{path}: IDX body has {len(raw) - header} bytes, the header {shape} needs {expected} (truncated?)."
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(shape)


def load_idx(images_path: str, labels_path: str | None = None) -> ImageData:
    """MNIST-style IDX images (optionally gzipped) and, if found or given, their labels.

    The labels file defaults to the images file's name with ``images-idx3`` → ``labels-idx1``.

    Returns:
      an [`ImageData`][mmh_jax.data.images.ImageData] of shape ``(N, H, W, 1)``.

    Raises:
      ImageDataError: a bad magic number or data type, a truncated file, a corrupt gzip stream,
        images that are not 3-D, or a label count that differs from the image count.

    Reference: LeCun et al., the MNIST database (the IDX format).

    Examples:
      >>> import os, struct, tempfile
      >>> path = os.path.join(tempfile.mkdtemp(), "t-images-idx3-ubyte")
      >>> with open(path, "wb") as fh:
      ...     _ = fh.write(struct.pack(">HBB3I", 0, 0x08, 3, 2, 3, 3) + bytes(18))
      >>> load_idx(path).x.shape
      (2, 3, 3, 1)
    """
    images = _read_idx(images_path)
    if images.ndim != 3:
        raise ImageDataError(f"{images_path}: IDX images must be 3-D (N, H, W), got shape {images.shape}.")
    if labels_path is None:
        guess = images_path.replace("images-idx3", "labels-idx1").replace("images.idx3", "labels.idx1")
        labels_path = guess if guess != images_path and os.path.exists(guess) else None
    labels = None
    if labels_path is not None:
        labels = _read_idx(labels_path)
        if labels.shape != images.shape[:1]:
            raise ImageDataError(f"{labels_path}: {labels.shape[0]} labels for {images.shape[0]} images.")
    return from_array(images, labels, source=images_path)


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits only plain containers, bytes, strings, numbers and numpy arrays (no code execution)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("builtins", "list"), ("builtins", "dict"),
        ("builtins", "tuple"), ("builtins", "bytes"), ("builtins", "str"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a data file")


def _read_cifar_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _RestrictedUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise ImageDataError(f"{path}: not a CIFAR-10 python batch ({e}).") from e
    if not isinstance(batch, dict):
        raise ImageDataError(f"{path}: expected a dict with b'data' and b'labels', got {type(batch).__name__}.")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise ImageDataError(f"{path}: CIFAR-10 batch lacks 'data' or 'labels' (keys {list(batch)[:6]}).")
    data = np.asarray(data)
    if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != len(labels):
        raise ImageDataError(f"{path}: CIFAR-10 data must be (N, 3072) with N labels, got {data.shape}.")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.asarray(labels, np.int32)


def load_cifar10(path: str) -> ImageData:
    """One CIFAR-10 python batch file, or every ``data_batch_*`` (plus ``test_batch``) in a folder.

    The batches are pickles; they are read with a restricted unpickler that admits only plain
    containers, bytes and numpy arrays, so a batch file cannot run code.

    Returns:
      an [`ImageData`][mmh_jax.data.images.ImageData] of shape ``(N, 32, 32, 3)`` with labels 0–9.

    Raises:
      ImageDataError: no batch files, a file that is not a CIFAR-10 batch, or one that names any
        other Python object.

    Reference: Krizhevsky, "Learning Multiple Layers of Features from Tiny Images" (2009).

    Examples:
      >>> import os, pickle, tempfile
      >>> path = os.path.join(tempfile.mkdtemp(), "data_batch_1")
      >>> with open(path, "wb") as fh:
      ...     pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [3, 7]}, fh)
      >>> d = load_cifar10(path)
      >>> d.x.shape, d.labels.tolist()
      ((2, 32, 32, 3), [3, 7])
    """
    if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if f.startswith("data_batch") or f == "test_batch")
        if not files:
            raise ImageDataError(f"{path}: no CIFAR-10 'data_batch_*' or 'test_batch' files here.")
        parts = [_read_cifar_batch(os.path.join(path, f)) for f in files]
        x, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    else:
        x, y = _read_cifar_batch(path)
    return from_array(x, y, source=path, layout="NHWC")


def load(source: str, *, layout: str | None = None) -> ImageData:
    """Load images by name or path: ``digits``, ``.npz``/``.npy``, an image folder, IDX, or CIFAR-10.

    ``layout`` (``"NHWC"``/``"NCHW"``) says how to read a 4-D ``.npz``/``.npy`` whose shape is
    ambiguous (see [`from_array`][mmh_jax.data.images.from_array]); the other sources have a known layout.

    Returns:
      an [`ImageData`][mmh_jax.data.images.ImageData]: ``x`` float32 ``(N, H, W, C)`` in [−1, 1], ``labels``
      int32 ``(N,)``.

    Raises:
      FileNotFoundError: no such path.
      ImageDataError: the file exists but cannot be read as images (the message names it).
      ValueError: ``layout`` not ``"NHWC"``, ``"NCHW"`` or None.

    Examples:
      >>> load("digits").shape
      (8, 8, 1)
      >>> load("no/such/file.npz")
      Traceback (most recent call last):
      ...
      FileNotFoundError: data: no such file or folder 'no/such/file.npz' (or use the built-in 'digits').
    """
    _check_layout(layout)
    if source == "digits":
        return digits()
    if not os.path.exists(source):
        raise FileNotFoundError(f"data: no such file or folder {source!r} (or use the built-in 'digits').")
    name = os.path.basename(source.rstrip("/"))
    if os.path.isdir(source):
        if any(f.startswith("data_batch") or f == "test_batch" for f in os.listdir(source)):
            return load_cifar10(source)
        return load_folder(source)
    if name.endswith((".npz", ".npy")):
        return load_npz(source, layout=layout)
    if "idx3" in name:
        return load_idx(source)
    if name.startswith(("data_batch", "test_batch")):
        return load_cifar10(source)
    raise ImageDataError(
        f"{source}: unknown image format; expected .npz/.npy, a folder of PNG/JPEG, an MNIST "
        "'*-images-idx3-ubyte[.gz]' file or a CIFAR-10 python batch."
    )
