"""LIDL ensemble training: M flows trained as one vmapped step against the same flows one by one.

    python bench/bench_lidl.py [--quick] [--out DIR] [--steps N] [--repeats N] [--data NAME]

Setting: ``mmh-jax train --model lidl`` with its defaults (``train_flow.FLOW_PRESETS["full"]``:
rational-quadratic spline flows with 8 couplings, conditioner width 64, 12 bins; batch 256; AdamW,
lr 2e-3, EMA 0.99) on the lollipop (n = 20000), M = 8 noise scales geomspace(0.01, 0.1, 8).

Rows:

- ``ensemble``: the library path — ``make_ensemble_step`` vmaps the member step over the 8 flows
  inside one ``make_train_loop`` (``lax.scan`` of ``--steps`` steps, batches drawn in the jit): one
  compile, one dispatch per call.
- ``one_by_one``: the same 8 flows trained separately, one after the other: member m runs
  ``--steps`` steps of ``train_step(state_m, {**batch, "delta": delta_m}, fold_in(key, m))`` through
  its own ``make_train_loop`` (the computation the ensemble's member m does, as checked in
  ``tests/lid/test_lidl.py``). Its loop is compiled once with δ_m and m traced, so it pays one compile,
  not eight — the fairest sequential baseline. A timed call is the 8 member runs in a row.

Timing (``bench._common``): compiled first (``compile_s``), warmed up, then the two rows are
timed in ``--repeats`` interleaved rounds. ``ratio`` in the summary is the one-by-one median wall time
divided by the ensemble's (> 1: the vmapped ensemble is faster); ``*_best`` from the fastest rounds.
``max_param_diff`` compares the parameters after one call (``--steps`` steps from the same state):
the batched and the single matmuls round differently in float32 and Adam's normalised updates
amplify such differences over many steps, so expect ~1e-8 after a few steps (``--quick``) and up to
~lr·steps after 100; exact agreement over 12 steps is what ``tests/lid/test_lidl.py`` checks.
On a busy machine (load averages are recorded) wall times are noisy; the interleaving keeps the ratio
fair.

Results: a markdown table on stdout and ``{out}/bench_lidl.{json,md}`` (default ``bench/results``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` and ``mmh_jax`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax
import jax.numpy as jnp
import numpy as np

from bench._common import DEFAULT_OUT, env_info, finish, prepare, time_many
from mmh_jax import train, train_flow
from mmh_jax.data import synthetic
from mmh_jax.experiments import training
from mmh_jax.models import make_nll_loss

NAME = "bench_lidl"
COLUMNS = ["impl", "members", "steps", "median_s", "min_s", "steps_per_s", "compile_s", "cpu_median_s"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny flows, few steps and repeats (smoke run)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (default: bench/results)")
    p.add_argument("--steps", type=int, default=None, help="training steps per timed call (default: 100; quick 5)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved timed rounds (default: 3; quick 1)")
    p.add_argument("--data", default="lollipop", help="synthetic data set (default: lollipop)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.steps = args.steps or (5 if args.quick else 100)
    args.repeats = args.repeats or (1 if args.quick else 3)
    if args.steps < 1 or args.repeats < 1:
        p.error("--steps and --repeats must be >= 1")
    return args


def setup(args: argparse.Namespace):
    """(config dict, ensemble loop, one-by-one runner, their arguments)."""
    overrides = {"model": "lidl", "data": args.data, "seed": args.seed}
    if args.quick:
        overrides.update(n=500, batch_size=32, model_kwargs={"num_coupling": 2, "hidden": 8, "num_bins": 4})
    config = training.preset("full", **overrides)
    x = np.asarray(synthetic.GENERATORS[config.data](config.n, seed=config.seed).x, np.float32)
    cfg = {"model": "lidl", "event_shape": [x.shape[1]], "model_kwargs": dict(config.model_kwargs),
           **train_flow.config_entries("lidl", config.deltas, x)}
    optimizer = train.make_optimizer(learning_rate=config.learning_rate, total_steps=config.steps,
                                     warmup_steps=config.warmup_steps)
    flow, state, ens_step = train_flow.init_state(cfg, optimizer, jax.random.key(args.seed),
                                                  ema_decay=config.ema_decay)
    deltas = jnp.asarray(cfg["deltas"], jnp.float32)
    data, base = jnp.asarray(x), jax.random.key(args.seed + 1)
    ens_loop = train.make_train_loop(ens_step, batch_size=config.batch_size, steps_per_call=args.steps)
    step = train.make_loss_train_step(make_nll_loss(flow), optimizer, ema_decay=config.ema_decay)

    @jax.jit
    def member_run(state_m, delta_m, m):
        def member_step(s, batch, key):
            return step(s, {**batch, "delta": delta_m}, jax.random.fold_in(key, m))

        loop = train.make_train_loop(member_step, batch_size=config.batch_size, steps_per_call=args.steps)
        return loop(state_m, data, None, None, base)

    members = [train.TrainState(step=state.step, params=jax.tree.map(lambda a: a[m], state.params),
                                ema_params=jax.tree.map(lambda a: a[m], state.ema_params),
                                opt_state=jax.tree.map(lambda a: a[m], state.opt_state))
               for m in range(deltas.shape[0])]

    def one_by_one(members):
        return [member_run(s, deltas[m], m) for m, s in enumerate(members)]

    return cfg, config, (ens_loop, (state, data, None, None, base)), (one_by_one, (members,))


def check_equal(ens, seq) -> float:
    """Largest |difference| between the ensemble's members and the one-by-one runs after one call."""
    (e_state, _), runs = ens, seq
    diffs = [float(jnp.max(jnp.abs(a[m] - b))) for m, (s, _) in enumerate(runs)
             for a, b in zip(jax.tree.leaves(e_state.params), jax.tree.leaves(s.params))]
    return max(diffs)


def run(args: argparse.Namespace) -> dict:
    """Run the benchmark; returns ``{"name", "meta", "rows", "summary", "paths"}``."""
    load_before = os.getloadavg()
    cfg, config, ens, seq = setup(args)
    m = len(cfg["deltas"])
    print(f"{NAME}: {m} flows on {args.data}, {args.steps} steps per timed call, {args.repeats} rounds; load "
          f"average {load_before}", flush=True)
    prep_ens = prepare(ens[0], *ens[1])
    prep_seq = prepare(seq[0], *seq[1])
    max_diff = check_equal(prep_ens.call(*ens[1]), prep_seq.call(*seq[1]))
    stats = time_many({"ensemble": (prep_ens, ens[1]), "one_by_one": (prep_seq, seq[1])}, repeats=args.repeats,
                      warmup=0)
    rows = [{"impl": name, "members": m, "steps": args.steps, "steps_per_s": args.steps / st["median_s"], **st}
            for name, st in stats.items()]
    summary = {
        "ratio": stats["one_by_one"]["median_s"] / stats["ensemble"]["median_s"],
        "ratio_best": stats["one_by_one"]["min_s"] / stats["ensemble"]["min_s"],
        "compile_ratio": stats["one_by_one"]["compile_s"] / stats["ensemble"]["compile_s"],
        "max_param_diff": max_diff,
    }
    load_after = os.getloadavg()
    meta = env_info(config={"steps": args.steps, "repeats": args.repeats, "data": args.data, "n": config.n,
                            "batch_size": config.batch_size, "model_kwargs": cfg["model_kwargs"],
                            "deltas": cfg["deltas"]},
                    load_average_before=load_before, load_average_after=load_after)
    return finish(NAME, rows, args.out, meta=meta, columns=COLUMNS, summary=summary,
                  notes=[f"one-by-one / ensemble wall time: {summary['ratio']:.2f} (best rounds "
                         f"{summary['ratio_best']:.2f}); params after {args.steps} steps differ by <= {max_diff:.2g} "
                         "(float32 round-off amplified by Adam)",
                         f"load average before {load_before}, after {load_after}"])


def main(argv=None) -> dict:
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
