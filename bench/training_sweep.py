"""Training sweep (issue 19): does a trained diffusion model fit the manifold well enough for FLIPD?

    python bench/training_sweep.py --data mix32 --time-sampling uniform --steps 8000 --n 20000 [--out FILE]

One run trains one ε-prediction ``ScoreMLP`` on a synthetic mixture with the library's public
training API (``mmh_jax.train.make_optimizer``, ``init_train_state``, ``make_train_step``,
``make_train_loop``; ``mmh_jax.sde.VPSDE``), then reads FLIPD (``mmh_jax.lid.flipd_curve``, exact
trace) of the EMA parameters at held-out points and scores it against the true LID. The rows of
the table in docs/benchmark.md, section "Training that fits manifolds", come from this script; the
commands are in bench/README.md ("Training sweep (issue 19)"). No numbers are kept here.

Data (``--data``; ``--seed`` draws it, default 7, the seed the MLP's defaults were developed on;
the benchmark, ``mmh-jax run benchmark``, uses seed 0):

- ``affine10``, ``squiggly10``: ``affine_mixture`` / ``squiggly_mixture`` (frequency 1) with pieces of
  dimension 2, 4, 8 in R^10;
- ``affine100``, ``squiggly100``: the same with pieces of dimension 10, 25, 50 in R^100;
- ``mix32``: in R^32, a circle (LID 1, radius 2), one 4-dimensional ``squiggly_mixture`` piece
  (frequency 1, recentred) and a 10-dimensional ``gaussian_subspace``, centred on three orthogonal
  directions 10 apart (one third of the points each, shuffled);
- ``mix32-sphere``: the same with the 4-sphere of radius 2 (in a random 5-dimensional subspace) as
  the nonlinear piece: curvature 1/2 everywhere, where the squiggly map has near-cusps.

``--n`` training points and 900 held-out points (60 with ``--quick``) are drawn together, in one
call of the generator, and split: the first ``--n`` train. ``--standardize`` maps both by the training
points' per-coordinate mean and one overall standard deviation (LID is unchanged by it).

Network and training: ``ScoreMLP(hidden=--hidden, num_layers=--layers, time_conditioning=--time-conditioning)`` initialised from key 0,
AdamW with warm-up and cosine decay over ``--steps`` (``make_optimizer(learning_rate=--lr)``), batches
of ``--batch-size`` drawn inside ``make_train_loop`` from base key 1, EMA decay ``--ema``. The network
and training keys do not depend on ``--seed``; only the data do. ``--param`` chooses what the network
outputs; the loss is always the library's ε-MSE, on ε̂ derived from the output:

- ``eps``: ε̂ = F(x_t, t) (the library's parameterisation);
- ``x0``: the network predicts x̂₀ = F, and ε̂ = (x_t − α x̂₀)/σ;
- ``mix``: x̂₀ = α x_t + σ F (a skip that makes x̂₀ ≈ x_t at small noise for unit-variance data),
  ε̂ = (x_t − α x̂₀)/σ.

``--time-sampling``: ``uniform`` and ``log-sigma`` use ``make_train_step(..., time_sampling=...)``
unchanged. ``mixed`` draws each example's time uniformly or log-σ with probability ½ each: a local
loss (this file's `mixed_loss`), the same ε-MSE as ``make_train_step``'s, calls
``mmh_jax.train.sample_times`` once per scheme and picks per example; it is stepped by the library's
``make_loss_train_step`` (same optimiser and EMA update) and ``make_train_loop``, and splits its keys
as ``make_train_step`` does, so only the choice of times differs from the other two.

Readout: the FLIPD curve of every held-out point on 24 t₀ geometrically spaced in [10⁻³, 1],
computed in chunks of 30 points (``jax.lax.map(..., batch_size=30)``), so memory stays bounded.
Reported, each as the MAE against the true LID and the per-component mean and standard deviation:

- ``t0=0.05`` and ``t0=0.1``: the curve at the grid points nearest 0.05 and 0.1 (their actual t₀ is
  in the output's ``t0`` field);
- ``best_grid_t0``: the grid t₀ with the least MAE — chosen with the truth, so for diagnosis only,
  not an estimator;
- ``knee`` and ``plateau``: ``mmh_jax.lid.knee`` / ``plateau`` of each point's curve with
  ``ambient_dim`` = D (``nan_fraction``: points whose curve has no plateau to read).

With ``--shell``, also the *shell readout* of the same model, D − σ·mean_k tr ∂ε̂/∂y at the noised
points y = α·x + σ·n_k (k = 1…`SHELL_DRAWS`, n_k ~ N(0, I), the same draws at every t₀): the trace
of FLIPD taken where training shows the network its inputs instead of at the clean point α·x (for a
flat Gaussian the exact trace is the same at every y, and this readout is d·α²/(α² + σ²)). Its
``shell t0=0.05``, ``shell t0=0.1`` and ``shell best_grid_t0`` are reported like FLIPD's, with its
mean curves (``shell_mean_curves``). A diagnostic of docs/benchmark.md, not a library estimator.

``data.median_nn_distance``: per component, the median distance from a held-out point to its
nearest training point, the finest scale at which the training set shows the manifold (compare
σ(t₀) = 0.17 at t₀ = 0.05 on the VP-SDE).

Also: the per-component mean curves, the last step's loss, and ``train_s`` (wall time of training,
the loop's compilation included) and ``flipd_s`` (the readout, compilation included).

Output: one JSON object on one line, on stdout; with ``--out FILE`` it is also appended to FILE (one
line per run, so a sweep collects into one file). ``--quick``: a smoke run (50 steps, 500 training
points, width 32, 60 held-out points); explicit options override it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` and ``mmh_jax`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax
import jax.numpy as jnp
import numpy as np

from bench._common import env_info
from mmh_jax import adapters, lid, train
from mmh_jax.data import synthetic
from mmh_jax.models import TIME_CONDITIONINGS, ScoreMLP
from mmh_jax.sde import VPSDE

NAME = "training_sweep"
DATA = ("squiggly10", "affine10", "affine100", "squiggly100", "mix32", "mix32-sphere")
PARAMS = ("eps", "x0", "mix")
TIME_SAMPLINGS = ("uniform", "log-sigma", "mixed")
#: Held-out points scored (about 300 per component).
N_TEST = 900
#: The FLIPD grid: 24 t₀ geometrically spaced in [T_MIN, T_MAX].
T_MIN, T_MAX, N_T0 = 1e-3, 1.0, 24
#: The fixed t₀ reported, each read at the nearest grid point.
FIXED_T0 = (0.05, 0.1)
#: Points per chunk of the FLIPD readout (``jax.lax.map`` batch size).
POINT_BATCH = 30
#: Noise draws per point of the shell readout (``--shell``).
SHELL_DRAWS = 2
SHELL_KEY = 2
#: Training steps per dispatch of ``make_train_loop``: gcd(--steps, this), so any --steps runs whole.
STEPS_PER_CALL = 100
INIT_KEY, TRAIN_KEY = 0, 1
DEFAULTS = dict(steps=4000, hidden=512, layers=3, n=5000, n_test=N_TEST)
QUICK = dict(steps=50, hidden=32, layers=3, n=500, n_test=60)


# -------------------------------------------------------------------------------------- data


def mix32(n: int, seed: int, D: int = 32, *, nonlinear: str = "squiggly") -> synthetic.Dataset:
    """The issue's D = 32 test case: a circle (LID 1), a nonlinear 4-d piece and a 10-d Gaussian.

    ``nonlinear``: ``squiggly`` (one ``squiggly_mixture`` piece, frequency 1, recentred) or
    ``sphere`` (the 4-sphere of radius 2 in a random 5-dimensional subspace: curvature 1/2
    everywhere, where the squiggly map has near-cusps). Centres are three orthonormal directions
    scaled to be 10 apart; sizes n//3, n//3, the rest; points shuffled.
    """
    rng = np.random.default_rng(seed)
    k = n // 3
    sizes = [k, k, n - 2 * k]
    centres = 10.0 / np.sqrt(2.0) * np.linalg.qr(rng.normal(size=(D, 3)))[0].T
    basis = synthetic.random_isometry(rng, D, 2)
    ang = rng.uniform(0, 2 * np.pi, sizes[0])
    circle = centres[0] + 2.0 * np.stack([np.cos(ang), np.sin(ang)], 1) @ basis.T
    if nonlinear == "sphere":
        u = rng.normal(size=(sizes[1], 5))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        sq = centres[1] + 2.0 * u @ synthetic.random_isometry(rng, D, 5).T
    else:
        sq = synthetic.squiggly_mixture(sizes[1], seed=seed + 1, dims=[4], ambient_dim=D).x
        sq = sq - sq.mean(0) + centres[1]
    g = synthetic.gaussian_subspace(sizes[2], seed=seed + 2, dim=10, ambient_dim=D, mean=centres[2]).x
    x = np.concatenate([circle, sq, g]).astype(np.float32)
    lids = np.repeat([1, 4, 10], sizes)
    comp = np.repeat([0, 1, 2], sizes)
    perm = rng.permutation(n)
    return synthetic.Dataset(x=x[perm], lid=lids[perm].astype(np.int32), component=comp[perm].astype(np.int32))


def make_dataset(name: str, n: int, seed: int) -> synthetic.Dataset:
    """``n`` points of the data set ``name`` (one of `DATA`) drawn with ``seed``."""
    if name == "squiggly10":
        return synthetic.squiggly_mixture(n, seed=seed, dims=[2, 4, 8], ambient_dim=10, frequency=1.0)
    if name == "affine10":
        return synthetic.affine_mixture(n, seed=seed, dims=[2, 4, 8], ambient_dim=10)
    if name == "affine100":
        return synthetic.affine_mixture(n, seed=seed, dims=[10, 25, 50], ambient_dim=100)
    if name == "squiggly100":
        return synthetic.squiggly_mixture(n, seed=seed, dims=[10, 25, 50], ambient_dim=100, frequency=1.0)
    if name in ("mix32", "mix32-sphere"):
        return mix32(n, seed, nonlinear="sphere" if name == "mix32-sphere" else "squiggly")
    raise ValueError(f"--data must be one of {DATA}, got {name!r}.")


# ---------------------------------------------------------------------------------- training


def make_eps_apply(net: ScoreMLP, sde: VPSDE, param: str):
    """``eps_apply(params, x_t, t) -> ε̂`` (batched) for the network output ``param`` (one of `PARAMS`)."""
    if param not in PARAMS:
        raise ValueError(f"--param must be one of {PARAMS}, got {param!r}.")

    def eps_apply(params, xt, t):
        out = net.apply(params, xt, t)
        if param == "eps":
            return out
        alpha, sigma = sde.marginal_coefs(t)
        alpha, sigma = alpha[:, None], sigma[:, None]
        x0 = out if param == "x0" else alpha * xt + sigma * out
        return (xt - alpha * x0) / sigma

    return eps_apply


def mixed_loss(eps_apply, sde: VPSDE, *, t_min: float = 1e-3):
    """``loss(params, batch, key)``: ``make_train_step``'s ε-MSE, each example's time uniform or log-σ (½ each).

    The keys are split as ``make_train_step`` splits them, so a run differs from a ``uniform`` or
    ``log-sigma`` run only in the training times.
    """

    def loss(params, batch, key):
        x = batch["x"]
        k_loss, _ = jax.random.split(key)  # make_train_step: (loss, monitor)
        k_t, k_eps, _ = jax.random.split(k_loss, 3)  # its loss: (times, noise, label dropout)
        k_u, k_l, k_pick = jax.random.split(k_t, 3)
        b = x.shape[0]
        uniform = train.sample_times(k_u, (b,), sde, t_min=t_min, time_sampling="uniform")
        log_sigma = train.sample_times(k_l, (b,), sde, t_min=t_min, time_sampling="log-sigma")
        t = jnp.where(jax.random.bernoulli(k_pick, 0.5, (b,)), uniform, log_sigma)
        alpha, sigma = sde.marginal_coefs(t)
        eps = jax.random.normal(k_eps, x.shape, x.dtype)
        xt = alpha[:, None] * x + sigma[:, None] * eps
        pred = eps_apply(params, xt, t)
        return jnp.mean(jnp.sum((pred - eps).reshape(b, -1) ** 2, axis=1))

    return loss


def make_step(eps_apply, optimizer, sde: VPSDE, *, time_sampling: str, ema: float):
    """The training step: the library's ``make_train_step``, or `mixed_loss` under ``make_loss_train_step``."""
    if time_sampling == "mixed":
        return train.make_loss_train_step(mixed_loss(eps_apply, sde), optimizer, ema_decay=ema)
    return train.make_train_step(eps_apply, optimizer, sde, ema_decay=ema, time_sampling=time_sampling)


# ----------------------------------------------------------------------------------- scoring


def _mean(values) -> float | None:
    """Mean of the finite entries (None when there are none), rounded for the JSON line."""
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    return round(float(values.mean()), 4) if values.size else None


def summarize(est, truth, comp) -> dict:
    """MAE against ``truth`` and per-component mean/std of the finite estimates (NaN: unread)."""
    est = np.asarray(est, np.float64)
    ok = np.isfinite(est)
    comps = sorted(set(comp.tolist()))
    out = {"mae": _mean(np.abs(est - truth)),
           "means": [_mean(est[comp == c]) for c in comps],
           "stds": [round(float(est[ok & (comp == c)].std()), 4) if (ok & (comp == c)).any() else None
                    for c in comps]}
    if not ok.all():
        out["nan_fraction"] = round(float(1.0 - ok.mean()), 4)
    return out


def flipd_curves(eps_apply, params, x, t0s, sde: VPSDE) -> np.ndarray:
    """``(len(x), len(t0s))`` FLIPD curves, exact trace, `POINT_BATCH` points at a time."""

    def curves(params, xs):
        def eps_fn(y, t):
            return eps_apply(params, y[None], jnp.reshape(t, (1,)))[0]

        score = adapters.score_from_eps(eps_fn, sde)
        return jax.lax.map(lambda y: lid.flipd_curve(score, y, t0s=t0s, sde=sde, trace="exact"), xs,
                           batch_size=POINT_BATCH)

    return np.asarray(jax.jit(curves)(params, jnp.asarray(x)))


def grid_readouts(curves, grid, truth, comp, *, prefix: str = "") -> dict:
    """The readouts of ``(N, len(grid))`` curves at the grid points nearest `FIXED_T0` and at the grid
    t₀ of least MAE (``best_grid_t0``, chosen with the truth), keys prefixed by ``prefix``."""
    out = {}
    for t in FIXED_T0:
        i = int(np.argmin(np.abs(grid - t)))
        out[f"{prefix}t0={t}"] = {"t0": round(float(grid[i]), 5), **summarize(curves[:, i], truth, comp)}
    per_t0 = [summarize(curves[:, i], truth, comp) for i in range(len(grid))]
    best = int(np.argmin([r["mae"] if r["mae"] is not None else np.inf for r in per_t0]))
    out[f"{prefix}best_grid_t0"] = {"t0": round(float(grid[best]), 5), "chosen_with_truth": True, **per_t0[best]}
    return out


def nn_spacing(x_train: np.ndarray, x_test: np.ndarray, comp_test: np.ndarray, comps) -> list[float]:
    """Per component, the median distance from a held-out point to its nearest training point: the
    finest scale at which the training set shows the manifold (compare σ(t₀))."""
    nearest = np.asarray(lid.knn(jnp.asarray(x_train), k=1, queries=jnp.asarray(x_test))[0][:, 0])
    return [round(float(np.median(nearest[comp_test == c])), 4) for c in comps]


def shell_curves(eps_apply, params, x, t0s, sde: VPSDE, key) -> np.ndarray:
    """``(len(x), len(t0s))`` shell readouts (``--shell``): D − σ·mean_k tr ∂ε̂/∂y at α·x + σ·n_k."""
    D = x.shape[1]

    def curves(params, xs, keys):
        eps_fn = adapters.single_example(lambda ys, ts: eps_apply(params, ys, ts))

        def one(point_and_key):
            point, k = point_and_key
            noise = jax.random.normal(k, (SHELL_DRAWS, D))

            def at(t):
                a, s = sde.marginal_coefs(t)
                trace = jax.vmap(lambda y: jnp.trace(jax.jacfwd(lambda z: eps_fn(z, t))(y)))(a * point[None] + s * noise)
                return D - s * jnp.mean(trace)

            return jax.vmap(at)(t0s)

        return jax.lax.map(one, (xs, keys), batch_size=POINT_BATCH)

    keys = jax.random.split(key, len(x))
    return np.asarray(jax.jit(curves)(params, jnp.asarray(x), keys))


# -------------------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="squiggly10", choices=DATA, help="the synthetic mixture")
    p.add_argument("--seed", type=int, default=7,
                   help="seed of the data (default 7, the development seed; the benchmark uses 0)")
    p.add_argument("--param", default="eps", choices=PARAMS, help="what the network outputs (ε, x̂₀, or a skip)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default 4000; 50 with --quick)")
    p.add_argument("--hidden", type=int, default=None, help="MLP width (default 512; 32 with --quick)")
    p.add_argument("--layers", type=int, default=None, help="MLP hidden layers (default 3)")
    p.add_argument("--time-scale", type=float, default=1000.0,
                   help="ScoreMLP's time_scale: t is embedded as sinusoids of time_scale·t (default 1000)")
    p.add_argument("--time-conditioning", default="add", choices=TIME_CONDITIONINGS,
                   help="ScoreMLP's time conditioning: added before the first layer, or FiLM in every layer")
    p.add_argument("--time-sampling", default="uniform", choices=TIME_SAMPLINGS,
                   help="training times: uniform, log-sigma, or mixed (each example one of the two, ½ each)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--batch-size", type=int, default=256, help="examples per step")
    p.add_argument("--n", type=int, default=None, help="training points (default 5000; 500 with --quick)")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the parameters")
    p.add_argument("--standardize", action="store_true",
                   help="centre the data and scale it to unit overall variance (training points' statistics)")
    p.add_argument("--shell", action="store_true",
                   help="also the shell readout: FLIPD's trace at noised copies of each point (a diagnostic)")
    p.add_argument("--out", default=None, help="append the JSON line to this file (it is always printed)")
    p.add_argument("--quick", action="store_true", help="smoke run: 50 steps, n 500, width 32, 60 held-out points")
    args = p.parse_args(argv)
    base = QUICK if args.quick else DEFAULTS
    for k in ("steps", "hidden", "layers", "n"):
        if getattr(args, k) is None:
            setattr(args, k, base[k])
    args.n_test = base["n_test"]
    for k in ("steps", "hidden", "layers", "n", "batch_size"):
        if getattr(args, k) < 1:
            p.error(f"--{k.replace('_', '-')} must be >= 1, got {getattr(args, k)}")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        p.error(f"--lr must be a positive number, got {args.lr}")
    if not 0.0 <= args.ema < 1.0:
        p.error(f"--ema must be in [0, 1), got {args.ema}")
    return args


def run(args: argparse.Namespace) -> dict:
    load_before = _loadavg()
    ds = make_dataset(args.data, args.n + args.n_test, args.seed)
    x = np.asarray(ds.x, np.float32)
    if args.standardize:
        x = (x - x[:args.n].mean(0)) / x[:args.n].std()
    x_train, x_test = x[:args.n], x[args.n:]
    lid_test, comp_test = np.asarray(ds.lid[args.n:]), np.asarray(ds.component[args.n:])
    D = x.shape[1]
    comps = sorted(set(comp_test.tolist()))
    truth = [int(np.unique(lid_test[comp_test == c])[0]) for c in comps]

    sde = VPSDE()
    net = ScoreMLP(hidden=args.hidden, num_layers=args.layers, time_scale=args.time_scale,
                   time_conditioning=args.time_conditioning)
    params = net.init(jax.random.key(INIT_KEY), jnp.zeros(D), 0.5)
    eps_apply = make_eps_apply(net, sde, args.param)
    optimizer = train.make_optimizer(learning_rate=args.lr, total_steps=args.steps)
    step = make_step(eps_apply, optimizer, sde, time_sampling=args.time_sampling, ema=args.ema)
    per_call = math.gcd(args.steps, STEPS_PER_CALL)  # the run does not depend on it (keys follow the step)
    loop = train.make_train_loop(step, batch_size=args.batch_size, steps_per_call=per_call)
    state = train.init_train_state(params, optimizer)
    data, key = jnp.asarray(x_train), jax.random.key(TRAIN_KEY)

    start = time.perf_counter()
    for _ in range(args.steps // per_call):
        state, metrics = loop(state, data, None, None, key)
    jax.block_until_ready(state)
    train_s = time.perf_counter() - start

    t0s = jnp.geomspace(T_MIN, T_MAX, N_T0)
    grid = np.asarray(t0s)
    start = time.perf_counter()
    curves = flipd_curves(eps_apply, state.ema_params, x_test, t0s, sde)
    flipd_s = time.perf_counter() - start
    knee_v = np.asarray(jax.vmap(lambda c: lid.knee(t0s, c, ambient_dim=D)[1])(jnp.asarray(curves)))
    plateau_v = np.asarray(jax.vmap(lambda c: lid.plateau(t0s, c, ambient_dim=D)[1])(jnp.asarray(curves)))

    results = grid_readouts(curves, grid, lid_test, comp_test)
    results["knee"] = summarize(knee_v, lid_test, comp_test)
    results["plateau"] = summarize(plateau_v, lid_test, comp_test)

    shell = {}
    if args.shell:
        start = time.perf_counter()
        sh = shell_curves(eps_apply, state.ema_params, x_test, t0s, sde, jax.random.key(SHELL_KEY))
        shell["shell_s"] = round(time.perf_counter() - start, 2)
        results.update(grid_readouts(sh, grid, lid_test, comp_test, prefix="shell "))
        shell["shell_mean_curves"] = [[_mean(v) for v in sh[comp_test == c].T] for c in comps]

    config = {k: getattr(args, k) for k in ("data", "seed", "param", "steps", "hidden", "layers", "time_scale",
                                            "time_sampling", "lr", "batch_size", "n", "ema", "standardize", "quick",
                                            "shell")}
    config["n_test"] = args.n_test
    return {
        "name": NAME,
        "config": config,
        "data": {"ambient_dim": D, "components": len(comps), "truth": truth,
                 "median_nn_distance": nn_spacing(x_train, x_test, comp_test, comps),
                 "test_per_component": [int((comp_test == c).sum()) for c in comps]},
        "train_s": round(train_s, 2),
        "flipd_s": round(flipd_s, 2),
        "final_loss": _mean(metrics["loss"][-1:]),  # None if it diverged
        "results": results,
        "t0_grid": [round(float(v), 5) for v in grid],
        "mean_curves": [[_mean(v) for v in curves[comp_test == c].T] for c in comps],
        **shell,
        "env": env_info(load_average_before=load_before, load_average_after=_loadavg()),
    }


def _loadavg() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):  # pragma: no cover - not Unix
        return []


def main(argv=None) -> dict:
    args = parse_args(argv)
    result = run(args)
    line = json.dumps(result, allow_nan=False)
    print(line)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as f:
            f.write(line + "\n")
    return result


if __name__ == "__main__":
    main()
