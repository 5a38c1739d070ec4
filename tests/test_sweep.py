"""Resumable sweeps: equal to a plain vmap, restart after a failure or a kill gives the same result,
finished chunks are not recomputed, a changed setting is refused."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmh_jax import lid, sweep
from mmh_jax.sde import VPSDE

VP = VPSDE()
N, CHUNK = 37, 8  # 5 chunks, the last one partial
pytestmark = pytest.mark.xdist_group("sweep")  # one worker builds the module fixture once
T0S = jnp.geomspace(1e-2, 1.0, 6)


def point_fn(x, key, *, t0, params):
    score = lambda y, t: -jnp.tanh(y @ params["w"]) - y  # noqa: E731
    return {"flipd": lid.flipd(score, x, key, t0=t0, sde=VP, trace="hutchinson", num_probes=2), "norm": jnp.sum(x**2)}


def inputs():
    xs = jax.random.normal(jax.random.key(1), (N, 3))
    keys = jax.random.split(jax.random.key(2), N)
    params = {"w": jnp.arange(9.0).reshape(3, 3) / 9.0}
    return xs, keys, params


def run(workdir, **kw):
    xs, keys, params = inputs()
    kw = {"grid": {"t0": T0S}, "params": params, "chunk_size": CHUNK, "batch_size": 3, "progress": False,
          "config": {"num_probes": 2}, **kw}
    return sweep.sweep(point_fn, xs, keys, workdir=workdir, **kw)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return run(tmp_path_factory.mktemp("full"))


def test_sweep_equals_vmap(uninterrupted):
    xs, keys, params = inputs()
    expected = jax.jit(jax.vmap(lambda x, k: jax.vmap(lambda t: point_fn(x, k, t0=t, params=params))(T0S)))(xs, keys)
    assert uninterrupted["flipd"].shape == (N, len(T0S))
    assert isinstance(uninterrupted["flipd"], np.ndarray)
    np.testing.assert_allclose(uninterrupted["flipd"], expected["flipd"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(uninterrupted["norm"], expected["norm"], rtol=1e-6)


def test_restart_after_failure_skips_finished_chunks(tmp_path, uninterrupted):
    calls = []

    def fail_after_two(c, done, n):
        calls.append(c)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C after two chunks

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, on_chunk=fail_after_two)
    saved = sorted(tmp_path.glob("chunk_*.npz"))
    assert [p.name for p in saved] == ["chunk_000000.npz", "chunk_000001.npz"]
    mtimes = [p.stat().st_mtime_ns for p in saved]
    calls.clear()
    out = run(tmp_path, on_chunk=lambda c, done, n: calls.append((c, done, n)))
    assert calls == [(2, 24, N), (3, 32, N), (4, N, N)]  # only the missing chunks were computed
    assert [p.stat().st_mtime_ns for p in saved] == mtimes
    for k in out:
        np.testing.assert_array_equal(out[k], uninterrupted[k])
    # a third run reads everything back
    calls.clear()
    again = run(tmp_path, on_chunk=lambda *a: calls.append(a))
    assert calls == []
    np.testing.assert_array_equal(again["flipd"], uninterrupted["flipd"])


def test_unreadable_chunk_is_recomputed(tmp_path, uninterrupted):
    run(tmp_path)
    (tmp_path / "chunk_000003.npz").write_bytes(b"truncated")
    calls = []
    out = run(tmp_path, on_chunk=lambda c, *a: calls.append(c))
    assert calls == [3]
    np.testing.assert_array_equal(out["flipd"], uninterrupted["flipd"])


def test_changed_settings_are_refused(tmp_path):
    xs, keys, params = inputs()
    run(tmp_path)
    with pytest.raises(ValueError, match=r"different settings \(differs in: grid\).*new workdir"):
        run(tmp_path, grid={"t0": T0S * 0.5})
    with pytest.raises(ValueError, match=r"differs in: config"):
        run(tmp_path, config={"num_probes": 4})
    with pytest.raises(ValueError, match=r"differs in: params"):
        run(tmp_path, params={"w": params["w"] + 1.0})
    with pytest.raises(ValueError, match=r"differs in: chunk_size"):
        run(tmp_path, chunk_size=4)
    with pytest.raises(ValueError, match=r"differs in: n_points, points"):
        sweep.sweep(point_fn, xs[:-1], keys[:-1], workdir=tmp_path, grid={"t0": T0S}, params=params,
                    chunk_size=CHUNK, config={"num_probes": 2}, progress=False)


def test_bad_arguments(tmp_path):
    xs, keys, params = inputs()
    with pytest.raises(ValueError, match="chunk_size.*0"):
        run(tmp_path, chunk_size=0)
    with pytest.raises(ValueError, match=r"grid values.*one common length.*\(6,\).*\(2,\)"):
        run(tmp_path, grid={"t0": T0S, "other": jnp.ones(2)})
    with pytest.raises(ValueError, match=r"keys_or_arrays\[0\].*\(37\)"):
        sweep.sweep(point_fn, xs, keys[:3], workdir=tmp_path)


@pytest.mark.e2e  # a child process
def test_restart_after_kill(tmp_path, uninterrupted):
    """A sweep killed (SIGKILL) after two chunks resumes to the uninterrupted result."""
    code = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import test_sweep as t
        def slow(c, done, n):
            print("chunk", c, flush=True)
            time.sleep(30 if c >= 1 else 0)  # killed while waiting here
        t.run({str(tmp_path)!r}, on_chunk=slow)
        """
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, cwd=root)
    try:
        deadline = time.monotonic() + 150
        lines = []
        while "chunk 1" not in lines:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "".join(lines)[-3000:]
            lines.append(line.strip())
            assert time.monotonic() < deadline, "the sweep never got going"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        proc.stdout.close()
    assert len(list(tmp_path.glob("chunk_*.npz"))) == 2
    calls = []
    out = run(tmp_path, on_chunk=lambda c, *a: calls.append(c))
    assert calls == [2, 3, 4]
    for k in out:
        np.testing.assert_array_equal(out[k], uninterrupted[k])
