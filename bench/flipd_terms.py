"""Where a trained model's FLIPD goes wrong at D = 100: its terms against the exact ones.

    python bench/flipd_terms.py [--out DIR] [--checkpoint DIR] [--quick]

Data: 20000 draws of a standard Gaussian on a random 10-dimensional subspace of R^100 (the
subspace from seed 7, the points from seed 1), whose noised marginals have an exact ε. Unless
``--checkpoint`` names a run, it trains the default MLP on them (`mmh-jax train`'s defaults, into
``OUT/run``). Then, at 200 fresh points x of the subspace and ten times t, it compares the network
with the exact ε:

- FLIPD = D − σ·tr ∂ε̂/∂y + ‖ε̂‖² at y = α·x, and its two terms, for the network and exactly;
- σ·tr ∂ε̂/∂y on the training "shell" y = α·x + σ·n (n ~ N(0, I)), where the network was trained
  (for this Gaussian the exact trace is the same at every y);
- the mean squared ε error at the data and on the shell.

``--quick`` is a smoke run (the quick preset's 300 steps on 2000 points, 20 test points, width 64):
its numbers mean nothing. Rows are printed as JSON lines and written to ``OUT/flipd_terms.jsonl``; docs/benchmark.md keeps the table.
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

import mmh_jax
from mmh_jax.experiments import training

D, d = 100, 10
TIMES = (0.01, 0.02, 0.035, 0.05, 0.07, 0.09, 0.12, 0.16, 0.22, 0.3)


def subspace() -> np.ndarray:
    return np.linalg.qr(np.random.default_rng(7).normal(size=(D, d)))[0]


def train_default(out: str, *, quick: bool = False) -> str:
    path = os.path.join(out, "g100.npz")
    x = np.random.default_rng(1).normal(size=(2000 if quick else 20000, d)) @ subspace().T
    np.savez(path, x=x.astype(np.float32))
    run = os.path.join(out, "run")
    config = training.preset("quick" if quick else "full", data=path, model="mlp")
    if quick:
        config = training.with_width(config, 64)
    training.train_or_resume(config, run, resume=training.newest_step(os.path.join(run, "checkpoints")) is not None)
    return run


def measure(run: str, *, points: int = 200) -> list[dict]:
    model = mmh_jax.load(run)
    vp, eps_fn = model.sde, model.eps_fn_for()
    u = subspace()
    proj = jnp.asarray(u @ u.T, jnp.float32)

    def eps_exact(y, t):  # σ Σ⁻¹ y, Σ = α² P + σ² I
        a, s = vp.marginal_coefs(t)
        py = proj @ y
        return s * ((y - py) / s**2 + py / (a**2 + s**2))

    rng = np.random.default_rng(11)
    x = jnp.asarray(rng.normal(size=(points, d)) @ u.T, jnp.float32)
    n = jnp.asarray(rng.normal(size=(points, D)), jnp.float32)

    def terms(f, y, t):
        _, s = vp.marginal_coefs(t)
        e = f(y, t)
        tr = s * jnp.trace(jax.jacfwd(lambda z: f(z, t))(y))
        return jnp.stack([D - tr + jnp.sum(e**2), tr, jnp.sum(e**2)])

    @jax.jit
    def at(t):
        a, s = vp.marginal_coefs(t)
        data, shell = a * x, a * x + s * n
        mean = lambda f, ys: jax.vmap(lambda y: terms(f, y, t))(ys).mean(0)  # noqa: E731
        err = lambda ys: jnp.mean(jnp.sum((jax.vmap(lambda y: eps_fn(y, t))(ys)  # noqa: E731
                                           - jax.vmap(lambda y: eps_exact(y, t))(ys)) ** 2, -1))
        return mean(eps_fn, data), mean(eps_exact, data), mean(eps_fn, shell)[1], err(data), err(shell), s

    rows = []
    for t in TIMES:
        model_terms, exact_terms, tr_shell, err_data, err_shell, s = at(jnp.float32(t))
        r = lambda v: round(float(v), 3)  # noqa: E731
        rows.append({"t": t, "sigma": r(s), "flipd_model": r(model_terms[0]), "flipd_exact": r(exact_terms[0]),
                     "sigma_trace_model_at_data": r(model_terms[1]), "sigma_trace_exact": r(exact_terms[1]),
                     "sigma_trace_model_on_shell": r(tr_shell), "eps_sq_model": r(model_terms[2]),
                     "eps_sq_exact": r(exact_terms[2]), "eps_mse_at_data": r(err_data),
                     "eps_mse_on_shell": r(err_shell)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench/results/flipd_terms", help="directory for the data, run and rows")
    p.add_argument("--checkpoint", default=None, help="a trained run on this data (skips the training)")
    p.add_argument("--quick", action="store_true", help="smoke run: a 300-step model of width 64, 20 points")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    run = args.checkpoint or train_default(args.out, quick=args.quick)
    rows = measure(run, points=20 if args.quick else 200)
    with open(os.path.join(args.out, "flipd_terms.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return rows


if __name__ == "__main__":
    main()
