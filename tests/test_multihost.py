"""Two processes on 127.0.0.1, 2 emulated CPU devices each (gloo collectives): map_points_global.

Each process runs tests/multihost_worker.py in a subprocess (JAX's multi-controller runtime needs
fresh processes); every wait is bounded by a timeout, so a hang fails the test instead of stalling.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from mmh_jax import parallel

sys.path.insert(0, str(Path(__file__).parent))
import multihost_worker as worker  # noqa: E402

pytestmark = pytest.mark.e2e  # two processes on 127.0.0.1

WORKER = Path(__file__).with_name("multihost_worker.py")
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp_path, mode: str, num_processes: int = 2):
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    procs = []
    for i in range(num_processes):
        cmd = [sys.executable, str(WORKER), str(i), str(num_processes), str(port), mode, str(tmp_path / f"out{i}.npz")]
        with open(tmp_path / f"log{i}.txt", "w") as log:  # the child keeps its own descriptor
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT))
    return procs


def _log(tmp_path, i) -> str:
    return (tmp_path / f"log{i}.txt").read_text()


def _reap(procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=30)


def test_two_processes_equal_one(tmp_path):
    procs = _launch(tmp_path, "once")
    try:
        for i, p in enumerate(procs):
            rc = p.wait(timeout=180)
            assert rc == 0, f"process {i} exited with {rc}:\n{_log(tmp_path, i)[-3000:]}"
    finally:
        _reap(procs)
    xs, keys = worker.points()
    expected = jax.vmap(worker.point_fn)(xs, keys)  # one process, one call over all points
    for i in range(2):
        got = np.load(tmp_path / f"out{i}.npz")
        assert got["flipd"].shape == (worker.N_POINTS,)
        np.testing.assert_allclose(got["flipd"], expected[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got["twice"], expected[1], rtol=1e-6)
        mine = worker.share(i, 2)
        np.testing.assert_allclose(got["local_flipd"], expected[0][mine], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got["local_twice"], expected[1][mine], rtol=1e-6)
    assert "joined (0, 2, 2, 4)" in _log(tmp_path, 0)  # (process_index, process_count, local, global devices)


@pytest.mark.slow  # ~35 s on 2 busy cores: two JAX start-ups and compiles, then the kill
def test_killed_process_gives_clear_error_not_hang(tmp_path):
    procs = _launch(tmp_path, "loop")
    try:
        deadline = time.monotonic() + 180
        while "iteration 2" not in _log(tmp_path, 1):  # both are mid-run, mapping in a loop
            assert procs[1].poll() is None, _log(tmp_path, 1)[-3000:]
            assert time.monotonic() < deadline, "the workers never got going:\n" + _log(tmp_path, 1)[-3000:]
            time.sleep(0.2)
        procs[1].send_signal(signal.SIGKILL)
        t = time.monotonic()
        rc = procs[0].wait(timeout=90)  # bounded: a hang fails here with TimeoutExpired
        waited = time.monotonic() - t
    finally:
        _reap(procs)
    log = _log(tmp_path, 0)
    assert rc != 0, log[-3000:]
    clear = ("another process most likely died", "another task died", "heartbeat")
    assert any(c in log for c in clear), log[-3000:]
    print(f"survivor stopped {waited:.1f} s after the kill, rc={rc}")


def test_single_process_global_equals_map_points():
    xs, keys = worker.points()
    expected = jax.vmap(worker.point_fn)(xs, keys)
    out = parallel.map_points_global(worker.point_fn, xs, keys, batch_size=3)
    np.testing.assert_allclose(out[0], expected[0], rtol=1e-5, atol=1e-5)
    local = parallel.map_points_global(worker.point_fn, xs[:0], keys[:0], gather=False)
    assert local[0].shape == (0,) and local[1].shape == (0, worker.DIM)


def test_initialize_bad_arguments():
    with pytest.raises(ValueError, match="coordinator_address.*'localhost'"):
        parallel.initialize("localhost", num_processes=2, process_id=0)
    with pytest.raises(ValueError, match=r"process_id.*\[0, 2\).*5"):
        parallel.initialize("127.0.0.1:1234", num_processes=2, process_id=5)
    with pytest.raises(ValueError, match="num_processes.*0"):
        parallel.initialize("127.0.0.1:1234", num_processes=0, process_id=0)
    with pytest.raises(ValueError, match="cpu_collectives"):
        parallel.initialize(num_processes=1, cpu_collectives="nccl")
    assert parallel.initialize(num_processes=1) == (0, 1, 4, 4)
