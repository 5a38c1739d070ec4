"""Bad input data and arguments (issue 16, items 6 and 7): each is refused with one clear line, or
gives the documented NaN, instead of loading, guessing or returning a finite wrong number.

Item 6, data: non-NumPy bytes and pickles named as such (never numpy's allow_pickle advice), integer
images outside 0..255 (0..65535 for uint16), ambiguous NHWC/NCHW shapes without ``layout=``, a file
given to ``load_folder``, ``mmh-jax lid`` data that is neither (N, D) nor image-shaped, and the NaN
of mle/twonn/ess at duplicated points (documented; the CLI suggests de-duplicating).
Item 7, library: traced times outside (0, T] give NaN in the score estimators, an empty FLIPD grid
(or CFG trajectory) a ValueError.
"""

import inspect
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from mmh_jax import cli, lid, sde
from mmh_jax.data import images
from mmh_jax.data.files import read_numpy
from mmh_jax.experiments import lid_cmd


def _one_line(e: BaseException) -> str:
    msg = str(e)
    assert "\n" not in msg, msg
    return msg


def _error_line(err: str) -> str:
    """The one ``mmh-jax lid: error:`` line of stderr; no traceback."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("mmh-jax lid: error: ")]
    assert len(lines) == 1, err
    return lines[0]


# ----------------------------------------------------------------------------- not NumPy files


def _zip_of_text(path):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("notes.txt", "not an array")


def _random_bytes(path):
    raw = np.random.default_rng(1).bytes(256)
    assert not raw.startswith((b"\x93NUMPY", b"PK"))
    path.write_bytes(raw)


#: (file name, writer, message fragment). Every message names the file and never mentions allow_pickle.
NOT_NUMPY_CASES = [
    ("text.npy", lambda p: p.write_text("x,y\n1,2\n3,4\n"), "is not a NumPy file"),
    ("text.npz", lambda p: p.write_text("x,y\n1,2\n3,4\n"), "is not a NumPy file"),
    ("random.npy", _random_bytes, "is not a NumPy file"),
    ("empty.npy", lambda p: p.write_bytes(b""), "is not a NumPy file (it is empty"),
    ("zip_of_text.npz", _zip_of_text, "its member 'notes.txt' is not a .npy array"),
    ("object.npy", lambda p: np.save(p, np.array([{"a": 1}, None], dtype=object), allow_pickle=True),
     "object (pickled) array, which is refused"),
    ("object.npz", lambda p: np.savez(p, x=np.array([{"a": 1}, None], dtype=object)),
     "object (pickled) array, which is refused"),
]

#: (entry point, reader, exception type): the loader and both of its callers.
READERS = [
    ("read_numpy", read_numpy, ValueError),
    ("images.load", images.load, images.ImageDataError),
    ("lid_cmd.load_array", lid_cmd.load_array, ValueError),
]


@pytest.mark.parametrize("reader_name, reader, exc", READERS, ids=[r[0] for r in READERS])
@pytest.mark.parametrize("name, write, fragment", NOT_NUMPY_CASES, ids=[c[0] for c in NOT_NUMPY_CASES])
def test_not_numpy_bytes_are_named_without_pickle_advice(tmp_path, reader_name, reader, exc, name, write,
                                                          fragment):
    path = tmp_path / name
    write(path)
    with pytest.raises(exc) as info:
        reader(str(path))
    msg = _one_line(info.value)
    assert fragment in msg and str(path) in msg, msg
    assert "allow_pickle" not in msg and "pickle.load" not in msg, msg


@pytest.mark.parametrize("name", ["text.npy", "object.npz"])
def test_cli_lid_not_numpy_exit_2(tmp_path, capsys, name):
    write = {c[0]: c[1] for c in NOT_NUMPY_CASES}[name]
    write(tmp_path / name)
    rc = cli.main(["lid", "--data", str(tmp_path / name), "--k", "3", "--out", str(tmp_path / "out")])
    line = _error_line(capsys.readouterr().err)
    assert rc == 2
    assert "allow_pickle" not in line and ("not a NumPy file" in line or "object (pickled) array" in line), line


# ----------------------------------------------------------------------------- integer image ranges


#: (array, expected error fragment or None, expected (min, max) of x when accepted).
INT_RANGE_CASES = [
    ("int32_negative_and_large", np.array([-1, 0, 1000, 7], np.int32), "got values in [-1, 1000]", None),
    ("int16_above_255", np.array([0, 10, 300, 5], np.int16), "must lie in [0, 255], got values in [0, 300]", None),
    ("int8_negative", np.array([-128, 0, 127, 5], np.int8), "got values in [-128, 127]", None),
    ("uint32_above_255", np.array([0, 1, 2, 256], np.uint32), "got values in [0, 256]", None),
    ("int64_in_0_255", np.array([0, 17, 255, 3], np.int64), None, (-1.0, 1.0)),
    ("uint8", np.array([0, 1, 255, 128], np.uint8), None, (-1.0, 1.0)),
    ("uint16_16bit", np.array([0, 1, 65535, 300], np.uint16), None, (-1.0, 1.0)),
    ("uint16_in_0_255", np.array([0, 17, 255, 3], np.uint16), None, (-1.0, 1.0)),
    ("bool_mask", np.array([0, 1, 1, 0], bool), None, (-1.0, 1.0)),
]


@pytest.mark.parametrize("case, values, fragment, expected", INT_RANGE_CASES, ids=[c[0] for c in INT_RANGE_CASES])
def test_integer_images_outside_range_refused(case, values, fragment, expected):
    a = np.tile(values, (2, 2, 1))  # (2, 2, 4) images of shape 2×4
    if fragment is None:
        x = images.from_array(a).x
        assert (float(x.min()), float(x.max())) == expected
        return
    with pytest.raises(images.ImageDataError) as info:
        images.from_array(a, source="imgs.npy")
    msg = _one_line(info.value)
    assert fragment in msg and msg.startswith("imgs.npy:") and "rescale" in msg, msg


# ----------------------------------------------------------------------------- ambiguous layouts


#: (shape, layout, expected ImageData.shape or (exception type, fragment)).
LAYOUT_CASES = [
    ((3, 4, 4, 2), None, (images.ImageDataError, "ambiguous")),
    ((3, 4, 4, 2), "NHWC", (4, 4, 2)),
    ((3, 4, 4, 2), "NCHW", (4, 2, 4)),
    ((2, 3, 3, 3), None, (images.ImageDataError, "pass layout='NHWC' or layout='NCHW'")),
    ((2, 1, 6, 1), None, (images.ImageDataError, "ambiguous")),
    ((5, 6, 6, 3), None, (6, 6, 3)),      # unambiguous NHWC, as before
    ((5, 3, 6, 6), None, (6, 6, 3)),      # unambiguous NCHW, as before
    ((2, 28, 28, 1), None, (28, 28, 1)),
    ((2, 8, 8, 2), None, (8, 8, 2)),      # grey + alpha
    ((2, 6, 6), "NCHW", (6, 6, 1)),       # (N, H, W): one channel whatever the layout
    ((3, 4, 4, 7), "NHWC", (images.ImageDataError, "reads shape (3, 4, 4, 7) as 7 channels")),
    ((3, 4, 4, 2), "HWC", (ValueError, "layout must be 'NHWC', 'NCHW' or None")),
    ((2, 5, 5, 9), None, (images.ImageDataError, "C in 1-4, got (2, 5, 5, 9)")),
]


@pytest.mark.parametrize("shape, layout, expected", LAYOUT_CASES, ids=[f"{c[0]}-{c[1]}" for c in LAYOUT_CASES])
def test_from_array_layout(shape, layout, expected):
    a = np.arange(np.prod(shape), dtype=np.float32).reshape(shape) / np.prod(shape)
    if isinstance(expected[0], type):
        exc, fragment = expected
        with pytest.raises(exc) as info:
            images.from_array(a, layout=layout)
        msg = _one_line(info.value)
        assert fragment in msg, msg
        return
    d = images.from_array(a, layout=layout)
    assert d.shape == expected
    if layout == "NCHW" and a.ndim == 4:  # the data moved with the axes
        np.testing.assert_allclose(d.x, np.transpose(a, (0, 2, 3, 1)) * 2 - 1, atol=1e-6)


def test_load_npz_layout_and_small_rgb_folder(tmp_path):
    """An ambiguous .npz reads with layout=; a folder of 4×4 RGB PNGs (shape (N, 4, 4, 3)) is NHWC."""
    np.save(tmp_path / "amb.npy", np.zeros((3, 4, 4, 2), np.uint8))
    with pytest.raises(images.ImageDataError, match="ambiguous"):
        images.load(str(tmp_path / "amb.npy"))
    assert images.load(str(tmp_path / "amb.npy"), layout="NHWC").shape == (4, 4, 2)
    folder = tmp_path / "rgb"
    folder.mkdir()
    for i in range(2):
        Image.new("RGB", (4, 4), (i * 100, 0, 0)).save(folder / f"{i}.png")
    assert images.load_folder(str(folder)).shape == (4, 4, 3)


# ----------------------------------------------------------------------------- load_folder(file)


def test_load_folder_of_a_file(tmp_path):
    path = tmp_path / "one.png"
    Image.new("L", (4, 4)).save(path)
    with pytest.raises(images.ImageDataError) as info:
        images.load_folder(str(path))
    msg = _one_line(info.value)
    assert f"path {str(path)!r} is a file, not a folder" in msg and "pass the folder" in msg, msg


# ----------------------------------------------------------------------------- mmh-jax lid data shapes


#: (shape, expected: "error" fragment, or the (N, D) read with whether a note is printed).
LID_SHAPE_CASES = [
    ((20, 1, 2, 3, 20), ("error", "got shape (20, 1, 2, 3, 20)")),
    ((20, 2, 1, 1, 1, 3), ("error", "must have shape (N, D) (one point per row) or be images")),
    ((20,), ("error", "got shape (20,)")),
    ((20, 6), ((20, 6), False)),
    ((20, 2, 3), ((20, 6), True)),
    ((20, 2, 3, 1), ((20, 6), True)),
]


@pytest.mark.parametrize("shape, expected", LID_SHAPE_CASES, ids=[str(c[0]) for c in LID_SHAPE_CASES])
def test_lid_load_array_shapes(tmp_path, capsys, shape, expected):
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).normal(size=shape).astype(np.float32))
    if expected[0] == "error":
        with pytest.raises(ValueError) as info:
            lid_cmd.load_array(str(path))
        msg = _one_line(info.value)
        assert expected[1] in msg and str(path) in msg and "reshape" in msg, msg
        return
    x, _, _ = lid_cmd.load_array(str(path))
    assert x.shape == expected[0]
    assert ("flattened to (N, D) = (20, 6)" in capsys.readouterr().err) == expected[1]


def test_cli_lid_refuses_5d_data(tmp_path, capsys):
    path = tmp_path / "five.npy"
    np.save(path, np.zeros((20, 1, 2, 3, 20), np.float32))
    rc = cli.main(["lid", "--data", str(path), "--k", "3", "--out", str(tmp_path / "out")])
    line = _error_line(capsys.readouterr().err)
    assert rc == 2 and "(20, 1, 2, 3, 20)" in line, line


# ----------------------------------------------------------------------------- NaN at duplicated points


def _duplicated(k: int) -> np.ndarray:
    """30 points in R³, the first repeated k + 1 times (all k neighbours of each copy at distance 0)."""
    x = np.random.default_rng(0).normal(size=(30, 3)).astype(np.float32)
    x[1:k + 2] = x[0]
    return x


@pytest.mark.parametrize("name", ["mle", "twonn", "ess"])
def test_model_free_nan_at_duplicates_is_documented(name):
    fn = getattr(lid, name)
    est = np.asarray(fn(jnp.asarray(_duplicated(5)), k=5))
    assert np.isnan(est[0]) and np.isfinite(est[-1])  # what the docstring says
    doc = inspect.getdoc(fn)
    returns = doc[doc.index("Returns:"):doc.index("Raises:")]
    assert "NaN" in returns and "duplicat" in returns and "np.unique(data, axis=0)" in returns, returns


def test_cli_lid_suggests_deduplicating(tmp_path, capsys):
    np.save(tmp_path / "dup.npy", _duplicated(5))
    rc = cli.main(["lid", "--estimator", "mle", "--data", str(tmp_path / "dup.npy"), "--k", "5",
                   "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    bad = int(np.sum(~np.isfinite(np.asarray(lid.mle(jnp.asarray(_duplicated(5)), k=5)))))
    assert rc == 0 and bad >= 6
    assert f"non_finite {bad}" in captured.out
    assert f"{bad} of 30 estimates are NaN" in captured.err and "np.unique(x, axis=0)" in captured.err, captured.err


# ----------------------------------------------------------------------------- traced times outside (0, T]


_VP = sde.VPSDE()
_X = jnp.zeros(4)


def _score(x, t):
    return -x


#: name -> f(t) with the time traced: each must be NaN outside (0, T] and finite inside.
TRACED_TIME = {
    "flipd": lambda t: lid.flipd(_score, _X, None, t0=t, sde=_VP),
    "flipd_curve": lambda t: lid.flipd_curve(_score, _X, None, t0s=jnp.stack([jnp.float32(0.3), t]), sde=_VP)[1],
    "fp_regress": lambda t: lid.fp_regress(_score, _X, sde=_VP, deltas=jnp.stack([_VP.delta(0.05), _VP.delta(t)])),
    "normal_bundle": lambda t: lid.normal_bundle(_score, _X, jax.random.key(0), t=t, sde=_VP),
    "cfdm": lambda t: lid.cfdm(_X, jnp.stack([_X, _X + 1.0]), t=t, sde=_VP),
    "cfg_norm": lambda t: lid.cfg_norm(_score, lambda x, s: -2.0 * x, jnp.ones((2, 4)),
                                       jnp.stack([jnp.float32(0.5), t]), sde=_VP),
}


#: (estimator, time, inside (0, T]). fp_regress takes δ, and t_from_delta maps every δ to t >= 0 (δ(−0.1)
#: is a valid δ: B(−0.1) > 0), so it has no negative-time row.
TRACED_CASES = [(name, t, inside) for name in TRACED_TIME
                for t, inside in [(0.0, False), (1.5, False), (-0.1, False), (0.2, True)]
                if not (name == "fp_regress" and t < 0)]


@pytest.mark.parametrize("name, t, inside", TRACED_CASES, ids=[f"{c[0]}-{c[1]}" for c in TRACED_CASES])
def test_traced_time_outside_range_is_nan(name, t, inside):
    value = float(jax.jit(TRACED_TIME[name])(jnp.float32(t)))
    assert np.isfinite(value) == inside, (name, t, value)


@pytest.mark.parametrize("call, fragment", [
    (lambda: lid.flipd(_score, _X, None, t0=0.0, sde=_VP), "t0 must lie in (0, T] = (0, 1.0], got 0.0"),
    (lambda: lid.flipd(_score, _X, None, t0=1.5, sde=_VP), "t0 must lie in (0, T]"),
    (lambda: lid.flipd_curve(_score, _X, None, t0s=jnp.array([0.1, 0.0]), sde=_VP), "t0s must lie in (0, T]"),
    (lambda: lid.flipd_curve(_score, _X, None, t0s=jnp.zeros((0,)), sde=_VP),
     "t0s must hold at least one time, got an empty grid"),
    (lambda: lid.cfg_norm(_score, _score, jnp.ones((0, 4)), jnp.zeros((0,)), sde=_VP),
     "xs must hold at least one point"),
    (lambda: lid.normal_bundle(_score, _X, jax.random.key(0), t=0.0, sde=_VP), "t must lie in (0, T]"),
], ids=["flipd_t0_0", "flipd_t0_above_T", "curve_t0_0", "curve_empty", "cfg_norm_empty", "normal_bundle_t_0"])
def test_concrete_bad_times_raise(call, fragment):
    with pytest.raises(ValueError) as info:
        call()
    msg = _one_line(info.value)
    assert fragment in msg, msg


def test_flipd_docstring_says_traced_t0_gives_nan():
    doc = inspect.getdoc(lid.flipd)
    assert "traced t0" in doc and "jnp.log(-1)" in doc
