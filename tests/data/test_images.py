"""Image loaders on small files the tests write; malformed files give errors naming the file."""

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
from PIL import Image

from mmh_jax.data import images


def _idx_bytes(a: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, a.ndim]) + struct.pack(">" + "I" * a.ndim, *a.shape) + a.astype(np.uint8).tobytes()


def test_digits_default():
    d = images.digits()
    assert d.x.shape == (1797, 8, 8, 1) and d.x.dtype == np.float32
    assert d.labels.dtype == np.int32 and set(np.unique(d.labels)) == set(range(10))
    assert d.x.min() == -1.0 and d.x.max() == 1.0
    assert images.load("digits").x.shape == d.x.shape


def test_npz_and_npy(tmp_path, rng):
    x = rng.integers(0, 256, (5, 6, 6, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=x, labels=np.arange(5))
    d = images.load(str(tmp_path / "a.npz"))
    np.testing.assert_allclose(d.x, x / 127.5 - 1.0, atol=1e-6)
    np.testing.assert_array_equal(d.labels, np.arange(5))
    np.save(tmp_path / "b.npy", x.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)  # channels-first in [0, 1]
    np.testing.assert_allclose(images.load(str(tmp_path / "b.npy")).x, d.x, atol=1e-6)


def test_image_folder_with_classes(tmp_path, rng):
    arrays = {}
    for cls in ["cat", "dog"]:
        os.makedirs(tmp_path / cls)
        for i in range(2):
            a = rng.integers(0, 256, (4, 5), dtype=np.uint8)
            Image.fromarray(a).save(tmp_path / cls / f"{i}.png")
            arrays[(cls, i)] = a
    d = images.load(str(tmp_path))
    assert d.x.shape == (4, 4, 5, 1)
    np.testing.assert_array_equal(d.labels, [0, 0, 1, 1])
    np.testing.assert_allclose(d.x[2, ..., 0], arrays[("dog", 0)] / 127.5 - 1.0, atol=1e-6)


def test_image_folder_errors(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(images.ImageDataError, match="bad.png"):
        images.load(str(tmp_path))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(images.ImageDataError, match="no .png"):
        images.load(str(empty))


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx(tmp_path, rng, compress):
    x = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    y = np.array([7, 1, 4], np.uint8)
    suffix = ".gz" if compress else ""
    opener = gzip.open if compress else open

    def write(path, data):
        with opener(path, "wb") as f:
            f.write(data)

    write(tmp_path / f"train-images-idx3-ubyte{suffix}", _idx_bytes(x))
    write(tmp_path / f"train-labels-idx1-ubyte{suffix}", _idx_bytes(y))
    d = images.load(str(tmp_path / f"train-images-idx3-ubyte{suffix}"))
    assert d.x.shape == (3, 28, 28, 1)
    np.testing.assert_array_equal(d.labels, y)


def test_truncated_idx_names_the_file(tmp_path, rng):
    raw = _idx_bytes(rng.integers(0, 256, (3, 4, 4), dtype=np.uint8))
    p = tmp_path / "t-images-idx3-ubyte"
    p.write_bytes(raw[:-5])
    with pytest.raises(images.ImageDataError, match="t-images-idx3-ubyte.*truncated"):
        images.load(str(p))
    p.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(images.ImageDataError, match="magic"):
        images.load(str(p))


def test_cifar10_batches(tmp_path, rng):
    for i in (1, 2):
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        with open(tmp_path / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"data": data, b"labels": [0, 1, 2, 3]}, f)
    d = images.load(str(tmp_path))
    assert d.x.shape == (8, 32, 32, 3)
    single = images.load(str(tmp_path / "data_batch_1"))
    assert single.x.shape == (4, 32, 32, 3)
    with open(tmp_path / "data_batch_1", "rb") as f:
        first = pickle.load(f)[b"data"][0]
    # channel layout: bytes 0..1023 are the red plane, 1024.. green, 2048.. blue (row-major)
    np.testing.assert_allclose(single.x[0, 0, 1], first[[1, 1025, 2049]] / 127.5 - 1.0, atol=1e-6)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_cifar10_restricted_unpickler_refuses_code(tmp_path):
    p = tmp_path / "data_batch_1"
    with open(p, "wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": [0]}, f)
    with pytest.raises(images.ImageDataError, match="data_batch_1.*not allowed"):
        images.load(str(p))


def test_unknown_and_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        images.load(str(tmp_path / "nope.npz"))
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(images.ImageDataError, match="unknown image format"):
        images.load(str(tmp_path / "x.txt"))
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(images.ImageDataError, match="bad.npz"):
        images.load(str(tmp_path / "bad.npz"))
    np.save(tmp_path / "nan.npy", np.full((2, 3, 3), np.nan, np.float32))
    with pytest.raises(images.ImageDataError, match="NaN"):
        images.load(str(tmp_path / "nan.npy"))
