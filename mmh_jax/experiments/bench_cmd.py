"""``mmh-jax bench``: points/s of every estimator across data dimensions D and batch sizes.

For each estimator, each D and each batch size B, one jitted function maps the single-example
estimator over B points (``jax.vmap``, the way users batch it); it is compiled ahead of time
(``compile_s``), then timed over ``repeats`` blocked calls (``median_s``; ``points_per_s`` =
B / median). ``temp_mb`` is XLA's own account of the compiled program's scratch memory
(``memory_analysis().temp_size_in_bytes``: the peak working set beyond inputs and outputs, on any
backend), and ``device_peak_mb`` the device's peak bytes in use where the backend reports it (GPU,
TPU). For the estimators that evaluate the score network, ``vs_forward`` divides by the points/s of
one forward pass of the same network and B.

Networks are untrained (throughput does not depend on the weights): score-based estimators use a
[`ScoreMLP`][mmh_jax.models.ScoreMLP] (``hidden`` units, 3 layers) on R^D; ``jacobian_spectrum`` a
decoder MLP R^D → R^D; ``cfdm`` a training set of ``cfdm_n`` points; the model-free estimators
(lpca, mle, twonn, ess) run on B points of a Gaussian on a 10-dim (or D-dim if smaller) subspace
with k = min(20, B − 1) neighbours — their unit is a whole data set, so B is N there.
Baselines: scikit-dimension's pointwise fits of the same model-free estimators, on the same data,
when it is installed (``skdim_s``, ``speedup``); PyTorch's FLIPD is in ``bench/bench_flipd.py``.

A setting whose estimated work exceeds the preset's budget on this backend is listed with
``status = "not run"`` and the reason, never silently dropped.

Examples:
  >>> cfg = preset("quick")
  >>> cfg.dims, cfg.batch_sizes
  ((2, 64), (16,))
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from mmh_jax import _interrupt, _timing, lid
from mmh_jax.experiments._outputs import output_paths
from mmh_jax.experiments._presets import from_preset
from mmh_jax.sde import VPSDE

__all__ = ["BenchConfig", "ESTIMATORS", "PRESETS", "compact_table", "preset", "run"]

#: Estimators the suite times, in table order.
ESTIMATORS = ("forward", "flipd_exact", "flipd_hutchinson", "normal_bundle", "fp_regress", "cfdm",
              "jacobian_spectrum", "lpca", "mle", "twonn", "ess")

#: Network passes per point: (per unit of D, constant). Exact traces and Jacobians cost D passes,
#: the normal bundle 4·D scores, FPRegress 8 noise scales × 4 substeps of a Hutchinson trace.
_PASSES = {"flipd_exact": (1.0, 0.0), "normal_bundle": (4.0, 0.0), "jacobian_spectrum": (1.0, 0.0),
           "fp_regress": (0.0, 32.0)}


#: Estimators that evaluate the score network (their ``vs_forward`` is meaningful).
_SCORE_NET = ("forward", "flipd_exact", "flipd_hutchinson", "normal_bundle", "fp_regress")


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """What ``mmh-jax bench`` measures.

    Attributes:
      estimators: names from `ESTIMATORS`.
      dims: data dimensions D.
      batch_sizes: points per jitted call (N for the model-free estimators).
      hidden: width of the score / decoder MLP.
      repeats: timed calls per setting (the median is reported).
      cfdm_n: training-set size of ``cfdm``.
      max_work: settings whose B·(network passes per point) exceeds this are listed as not run
        (exact traces and normal bundles cost D or 4·D passes per point).
      seed: PRNG seed of data and networks.
    """

    estimators: tuple[str, ...] = ESTIMATORS
    dims: tuple[int, ...] = (2, 64, 784, 3072)
    batch_sizes: tuple[int, ...] = (64, 512)
    hidden: int = 256
    repeats: int = 3
    cfdm_n: int = 1000
    max_work: float = 6e4
    seed: int = 0


PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"dims": (2, 64), "batch_sizes": (16,), "hidden": 64, "repeats": 2, "cfdm_n": 200},
    "default": {},
    # For an accelerator: larger batches, and settings 6x beyond the CPU budget (an exact trace at
    # D = 3072 for 64 points runs; a 4·D-score normal bundle there, 12288 × 3072 SVDs, still does not).
    "full": {"batch_sizes": (64, 512, 4096), "max_work": 3e5, "repeats": 5},
}


def preset(name: str, **overrides: Any) -> BenchConfig:
    """The named preset (``quick``, ``default``, ``full``) with ``overrides`` applied."""
    return from_preset(BenchConfig, PRESETS, name, overrides)


def _score_net(dim: int, hidden: int, key):
    from mmh_jax.models import ScoreMLP, as_score_fn

    net = ScoreMLP(hidden=hidden, num_layers=3, time_embed_dim=64, skip=False)
    params = net.init(key, jnp.zeros(dim), 0.5)
    return as_score_fn(net.apply, params, VPSDE()), lambda x: net.apply(params, x, 0.05)


def _decoder(dim: int, hidden: int, key) -> Callable:
    import flax.linen as nn

    class Decoder(nn.Module):
        @nn.compact
        def __call__(self, z):
            h = nn.silu(nn.Dense(hidden)(z))
            h = nn.silu(nn.Dense(hidden)(h))
            return nn.Dense(dim)(h)

    dec = Decoder()
    params = dec.init(key, jnp.zeros(dim))
    return lambda z: dec.apply(params, z)


def _subspace(n: int, dim: int, key) -> jax.Array:
    d = min(10, dim)
    k1, k2 = jax.random.split(key)
    basis, _ = jnp.linalg.qr(jax.random.normal(k1, (dim, d)))
    return jax.random.normal(k2, (n, d)) @ basis.T


def _work(name: str, dim: int, batch: int) -> float:
    """Network passes (or their equivalent) of one call: the budget's unit."""
    per_dim, const = _PASSES.get(name, (0.0, 1.0))
    return batch * max(1.0, per_dim * dim + const)


def _program(name: str, dim: int, batch: int, cfg: BenchConfig, key) -> tuple[Callable, tuple]:
    """(jitted fn, args) computing ``name`` for ``batch`` points in R^dim."""
    k_net, k_x, k_e, k_d = jax.random.split(key, 4)
    vp = VPSDE()
    x = _subspace(batch, dim, k_x)
    keys = jax.random.split(k_e, batch)
    if name in ("lpca", "mle", "twonn", "ess"):
        k = min(20, batch - 1)
        return jax.jit(lambda data: getattr(lid, name)(data, k=k)), (x,)
    if name == "cfdm":
        data = _subspace(cfg.cfdm_n, dim, k_d)
        return jax.jit(jax.vmap(lambda p: lid.cfdm(p, data, t=0.05, sde=vp))), (x,)
    if name == "jacobian_spectrum":
        g = _decoder(dim, cfg.hidden, k_net)
        return jax.jit(jax.vmap(lambda z: lid.jacobian_spectrum(g, z))), (x,)
    score_fn, forward = _score_net(dim, cfg.hidden, k_net)
    single: Callable
    if name == "forward":
        single = lambda p, k: forward(p)  # noqa: E731
    elif name == "flipd_exact":
        single = lambda p, k: lid.flipd(score_fn, p, k, t0=0.05, sde=vp, trace="exact")  # noqa: E731
    elif name == "flipd_hutchinson":
        single = lambda p, k: lid.flipd(score_fn, p, k, t0=0.05, sde=vp, trace="hutchinson")  # noqa: E731
    elif name == "normal_bundle":
        single = lambda p, k: lid.normal_bundle(score_fn, p, k, t=0.01, sde=vp)  # noqa: E731
    elif name == "fp_regress":
        single = lambda p, k: lid.fp_regress(score_fn, p, k, sde=vp, trace="hutchinson")  # noqa: E731
    else:
        raise ValueError(f"estimators must be among {ESTIMATORS}, got {name!r}.")
    return jax.jit(jax.vmap(single)), (x, keys)


def _device_peak_mb() -> float | None:
    stats = jax.devices()[0].memory_stats() if hasattr(jax.devices()[0], "memory_stats") else None
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return stats["peak_bytes_in_use"] / 2**20


def _skdim_seconds(name: str, x: np.ndarray) -> float | None:
    try:
        import skdim
    except ImportError:
        return None
    k = min(20, x.shape[0] - 1)
    est = {"lpca": skdim.id.lPCA(), "mle": skdim.id.MLE(), "twonn": skdim.id.TwoNN(), "ess": None}[name]
    if est is None:  # skdim's ESS takes minutes; bench/bench_model_free.py extrapolates it
        return None
    t0 = time.perf_counter()
    if name == "mle":
        est.fit(x.astype(np.float64), n_neighbors=k)
    else:
        est.fit_pw(x.astype(np.float64), n_neighbors=k, n_jobs=1)
    return time.perf_counter() - t0


def _measure(name: str, dim: int, batch: int, cfg: BenchConfig, key) -> dict[str, Any]:
    row: dict[str, Any] = {"estimator": name, "D": dim, "batch": batch}
    work = _work(name, dim, batch)
    if work > cfg.max_work:
        return {**row, "status": "not run",
                "note": f"~{work:.2g} network passes per call > max_work {cfg.max_work:.2g} (raise --max-work or "
                        "use --preset full on an accelerator)"}
    fn, args = _program(name, dim, batch, cfg, key)
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    stats = _timing.time_fn(_timing.Prepared(compiled, compile_s), *args, repeats=cfg.repeats, warmup=1)
    out = np.asarray(jax.device_get(compiled(*args)))
    row.update(status="ok", points_per_s=batch / stats["median_s"], median_s=stats["median_s"],
               compile_s=compile_s, temp_mb=(mem.temp_size_in_bytes / 2**20) if mem is not None else None,
               device_peak_mb=_device_peak_mb(), finite=bool(np.all(np.isfinite(out))))
    if name in ("lpca", "mle", "twonn", "ess"):
        sk = _skdim_seconds(name, np.asarray(args[0]))
        if sk is not None:
            row.update(skdim_s=sk, speedup=sk / stats["median_s"])
    return row


COLUMNS = ("estimator", "D", "batch", "status", "points_per_s", "vs_forward", "median_s", "compile_s", "temp_mb",
           "device_peak_mb", "skdim_s", "speedup", "note")


def compact_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: points/s per estimator (rows) and D (columns) at the largest batch that ran.

    Examples:
      >>> rows = [{"estimator": "mle", "D": 2, "batch": 8, "status": "ok", "points_per_s": 1234.5},
      ...         {"estimator": "mle", "D": 64, "batch": 8, "status": "not run"}]
      >>> print(compact_table(rows))
      | estimator | D=2 | D=64 |
      |---|---|---|
      | mle | 1,234 (B=8) | not run |
    """
    dims = sorted({r["D"] for r in rows})
    names = list(dict.fromkeys(r["estimator"] for r in rows))
    lines = ["| estimator | " + " | ".join(f"D={d}" for d in dims) + " |", "|---|" + "---|" * len(dims)]
    for name in names:
        cells = []
        for d in dims:
            ok = [r for r in rows if r["estimator"] == name and r["D"] == d and r["status"] == "ok"]
            if not ok:
                cells.append("not run")
                continue
            best = max(ok, key=lambda r: r["batch"])
            v = best["points_per_s"]
            cells.append((f"{v:,.0f}" if v >= 100 else f"{v:.3g}") + f" (B={best['batch']})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot(rows: list[dict[str, Any]], path: str) -> None:
    from mmh_jax._plotting import pyplot

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 4.5))
    batch = max(r["batch"] for r in rows)
    for name in dict.fromkeys(r["estimator"] for r in rows):
        pts = sorted((r["D"], r["points_per_s"]) for r in rows
                     if r["estimator"] == name and r["status"] == "ok" and r["batch"] == batch)
        if pts:
            ax.plot(*zip(*pts), marker="o", label=name)
    ax.set(xscale="log", yscale="log", xlabel="data dimension D", ylabel="points / s",
           title=f"Estimator throughput (batch {batch}, {jax.default_backend()})")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(cfg: BenchConfig, out: str, *, progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Measure every (estimator, D, batch) of ``cfg``; write ``bench.json``, ``bench.md`` and
    ``throughput.png`` into ``out`` (refused before any work when they exist, unless ``overwrite``).
    Returns ``{"rows", "paths"}``."""
    from tqdm.auto import tqdm

    from mmh_jax.provenance import provenance

    output_paths(out, ("bench.json", "bench.md", "throughput.png"), command="bench", overwrite=overwrite)

    bad = [e for e in cfg.estimators if e not in ESTIMATORS]
    if bad:
        raise ValueError(f"estimators must be among {ESTIMATORS}, got {bad}.")
    if any(d < 1 for d in cfg.dims) or any(b < 3 for b in cfg.batch_sizes):
        raise ValueError(f"dims must be >= 1 and batch_sizes >= 3, got dims={cfg.dims}, "
                         f"batch_sizes={cfg.batch_sizes}.")
    os.makedirs(out, exist_ok=True)
    names = ("forward",) + tuple(e for e in cfg.estimators if e != "forward")
    grid = [(n, d, b) for d in cfg.dims for b in cfg.batch_sizes for n in names]
    key = jax.random.key(cfg.seed)
    rows = []
    bar = tqdm(grid, desc="bench", disable=not progress)
    for name, dim, batch in bar:
        _interrupt.check()
        bar.set_postfix_str(f"{name} D={dim} B={batch}")
        rows.append(_measure(name, dim, batch, cfg, key))
    fwd = {(r["D"], r["batch"]): r["points_per_s"] for r in rows if r["estimator"] == "forward" and r["status"] == "ok"}
    for r in rows:
        if r["status"] == "ok" and r["estimator"] in _SCORE_NET and (r["D"], r["batch"]) in fwd:
            r["vs_forward"] = r["points_per_s"] / fwd[(r["D"], r["batch"])]
    meta = _timing.env_info(config=dataclasses.asdict(cfg), provenance=provenance())
    paths = _timing.write_results("bench", rows, out, meta=meta, columns=COLUMNS, summary={})
    png = os.path.join(out, "throughput.png")
    _plot(rows, png)
    print(_timing.markdown_table(rows, COLUMNS))
    print("\npoints/s at the largest batch that ran:\n")
    print(compact_table(rows))
    print(f"\nwrote {paths['json']}, {paths['md']} and {png}")
    return {"rows": rows, "paths": {**{k: str(v) for k, v in paths.items()}, "png": png}}


def load_rows(path: str) -> list[dict[str, Any]]:
    """The rows of a ``bench.json`` written by `run`."""
    with open(path) as f:
        return json.load(f)["rows"]
