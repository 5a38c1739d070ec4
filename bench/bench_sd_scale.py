"""FLIPD and the CFG norm at Stable Diffusion's latent scale, in bounded memory.

    python bench/bench_sd_scale.py [--channels 64] [--layers-per-block 1] [--attention-levels 1 2]
                                   [--probes 8] [--chunk 2] [--repeats 3] [--out DIR] [--quick]

A randomly initialised text-conditional U-Net (Flax Linen, written below) laid out like diffusers'
``UNet2DConditionModel`` in miniature: conv_in 4 → C (C = 64; SD: 320); four levels with channel
mults 1-2-4-4 of ``layers_per_block`` ResNet blocks each (1; SD: 2), a spatial transformer
(self-attention, cross-attention on a 77 × 768 text context, GEGLU feed-forward; 8 heads) after
each ResNet block on the levels with attention, stride-2 downsampling; a middle
ResNet-transformer-ResNet; an up path of ``layers_per_block + 1`` ResNet blocks per level on skip
concatenations with nearest upsampling; GroupNorm-SiLU-conv_out. SD has attention on its first
three levels (64×64, 32×32, 16×16); by default this bench has it at 32×32 and 16×16 only, since
self-attention over the 4096 tokens of the 64×64 level is too slow and too large for a small CPU
(``--attention-levels 0 1 2`` restores SD's layout; the run's meta records which it used).

The network runs on SD's latent shape 64 × 64 × 4 (NHWC) with SD's schedule,
``DiscreteVPSDE.scaled_linear()`` (β from 0.00085 to 0.012, 1000 steps; the network is called at
timestep k = t·N − 1), and classifier-free guidance the way SD pipelines apply it: one batched call
on [x, x] with contexts [∅, c], ε = ε_∅ + w·(ε_c − ε_∅). The contexts are random stand-ins for
CLIP's text-encoder outputs; no weights are loaded.

Rows, at one random latent (each program is compiled once, then timed: median of ``--repeats``):

- ``forward``: the CFG'd ε of the latent (one network call on a batch of 2), the reference;
- ``flipd``: FLIPD with Hutchinson probes at t0, for (P, chunk) = (1, —), (P, chunk), (P, —);
- ``cfg_norm``: ``lid.cfg_norm`` over S sampler states (the latent noised at the times of the
  first S steps of a 50-step sampler).

Each row gives the compile time, the median wall time per point, points/s, XLA's scratch memory of
the compiled program (``temp_mb`` = ``memory_analysis().temp_size_in_bytes``, as in
``bench/bench_memory.py``), its peak estimate with the inputs and outputs (``peak_mb``: arguments
+ outputs + temp − aliased), the ratios of both to the forward row, and XLA's FLOP count of the
program when ``cost_analysis()`` gives one (``gflop``; left out for probes in chunks, whose loop
body XLA counts once). FLIPD with 4·P probes in chunks is compiled but not run, for its memory
(``meta.memory_only``). ``--quick`` runs a tiny configuration (8 × 8 latent, 8 channels, two
levels, a 7 × 16 context, one repeat) for the smoke test.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import time

if __package__ in (None, ""):
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn
import jax
import jax.numpy as jnp

from bench._common import DEFAULT_OUT, Prepared, block, env_info, finish, time_fn
from mmh_jax import lid
from mmh_jax.adapters import score_from_eps, single_example
from mmh_jax.sde import DiscreteVPSDE

NAME = "sd_scale"
COLUMNS = ("row", "probes", "chunk", "states", "compile_s", "median_s", "points_per_s", "vs_forward",
           "temp_mb", "peak_mb", "temp_vs_forward", "gflop")
#: SD 1.x: attention on the first three of its four levels (64×64, 32×32, 16×16 for a 64×64 latent).
SD_ATTENTION_LEVELS = (0, 1, 2)
#: The bench's default: SD's levels but the first. Self-attention over the 4096 tokens of the 64×64
#: level holds heads × 4096² weights per example and layer (512 MiB in float32 for 8 heads), which a
#: linearized CFG batch keeps for every such layer: too slow and too large for a small CPU.
#: ``--attention-levels 0 1 2`` restores SD's layout (an accelerator's job).
DEFAULT_ATTENTION_LEVELS = (1, 2)


# ------------------------------------------------------------------------------------- network


def _groups(channels: int) -> int:
    """GroupNorm groups: SD's 32, or the largest divisor of ``channels`` below it (small configs)."""
    return math.gcd(32, channels)


def timestep_embedding(ks, dim: int):
    """SD's sinusoidal embedding of timesteps ``ks`` (B,) → (B, dim): [cos, sin] of k·10000^(−i/half)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / half)
    args = jnp.asarray(ks, jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-Conv3x3, + Dense(SiLU(time embedding)), GroupNorm-SiLU-Conv3x3, + residual."""

    out_channels: int

    @nn.compact
    def __call__(self, x, temb):
        c = self.out_channels
        h = nn.GroupNorm(_groups(x.shape[-1]), name="norm1")(x)
        h = nn.Conv(c, (3, 3), padding=1, name="conv1")(nn.silu(h))
        h = h + nn.Dense(c, name="time_emb_proj")(nn.silu(temb))[:, None, None, :]
        h = nn.GroupNorm(_groups(c), name="norm2")(h)
        h = nn.Conv(c, (3, 3), padding=1, name="conv2")(nn.silu(h))
        if x.shape[-1] != c:
            x = nn.Conv(c, (1, 1), name="conv_shortcut")(x)
        return x + h


class Attention(nn.Module):
    """Multi-head attention of tokens ``x`` (B, T, C) on ``context`` (B, T', C') (self-attention if None)."""

    heads: int

    @nn.compact
    def __call__(self, x, context=None):
        c = x.shape[-1]
        context = x if context is None else context
        q = nn.Dense(c, use_bias=False, name="to_q")(x)
        k = nn.Dense(c, use_bias=False, name="to_k")(context)
        v = nn.Dense(c, use_bias=False, name="to_v")(context)
        split = lambda a: a.reshape(*a.shape[:-1], self.heads, c // self.heads)  # noqa: E731
        out = jax.nn.dot_product_attention(split(q), split(k), split(v))
        return nn.Dense(c, name="to_out")(out.reshape(x.shape))


class SpatialTransformer(nn.Module):
    """SD's Transformer2DModel with one BasicTransformerBlock: GroupNorm, proj_in, self-attention,
    cross-attention on the context, GEGLU feed-forward, proj_out, residual."""

    heads: int

    @nn.compact
    def __call__(self, x, context):
        b, hh, ww, c = x.shape
        h = nn.GroupNorm(_groups(c), epsilon=1e-6, name="norm")(x)
        h = nn.Dense(c, name="proj_in")(h.reshape(b, hh * ww, c))  # SD 1.x: a 1×1 conv, the same map
        h = h + Attention(self.heads, name="attn1")(nn.LayerNorm(name="norm1")(h))
        h = h + Attention(self.heads, name="attn2")(nn.LayerNorm(name="norm2")(h), context)
        a, gate = jnp.split(nn.Dense(8 * c, name="ff_proj")(nn.LayerNorm(name="norm3")(h)), 2, axis=-1)
        h = h + nn.Dense(c, name="ff_out")(a * nn.gelu(gate, approximate=False))
        h = nn.Dense(c, name="proj_out")(h)
        return x + h.reshape(b, hh, ww, c)


class UNet2DCondition(nn.Module):
    """A text-conditional U-Net laid out like diffusers' UNet2DConditionModel (SD 1.x), batched:
    ``apply(params, xs (B, H, W, 4), ks (B,), ctx (B, L, E)) -> ε̂ (B, H, W, 4)``, ks the timesteps."""

    channels: int = 64
    channel_mults: tuple[int, ...] = (1, 2, 4, 4)
    layers_per_block: int = 1
    attention_levels: tuple[int, ...] = SD_ATTENTION_LEVELS
    heads: int = 8
    out_channels: int = 4

    @nn.compact
    def __call__(self, xs, ks, context):
        c0, levels = self.channels, len(self.channel_mults)
        temb = timestep_embedding(ks, c0)
        temb = nn.Dense(4 * c0, name="time_linear_1")(temb)
        temb = nn.Dense(4 * c0, name="time_linear_2")(nn.silu(temb))

        h = nn.Conv(c0, (3, 3), padding=1, name="conv_in")(xs)
        skips = [h]
        for i, mult in enumerate(self.channel_mults):
            for j in range(self.layers_per_block):
                h = ResnetBlock(c0 * mult, name=f"down_{i}_resnet_{j}")(h, temb)
                if i in self.attention_levels:
                    h = SpatialTransformer(self.heads, name=f"down_{i}_attention_{j}")(h, context)
                skips.append(h)
            if i < levels - 1:
                h = nn.Conv(h.shape[-1], (3, 3), strides=2, padding=1, name=f"down_{i}_downsample")(h)
                skips.append(h)

        c_mid = c0 * self.channel_mults[-1]
        h = ResnetBlock(c_mid, name="mid_resnet_0")(h, temb)
        h = SpatialTransformer(self.heads, name="mid_attention")(h, context)
        h = ResnetBlock(c_mid, name="mid_resnet_1")(h, temb)

        for i in reversed(range(levels)):
            for j in range(self.layers_per_block + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = ResnetBlock(c0 * self.channel_mults[i], name=f"up_{i}_resnet_{j}")(h, temb)
                if i in self.attention_levels:
                    h = SpatialTransformer(self.heads, name=f"up_{i}_attention_{j}")(h, context)
            if i > 0:
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest upsampling
                h = nn.Conv(h.shape[-1], (3, 3), padding=1, name=f"up_{i}_upsample")(h)

        h = nn.silu(nn.GroupNorm(_groups(h.shape[-1]), name="conv_norm_out")(h))
        return nn.Conv(self.out_channels, (3, 3), padding=1, name="conv_out")(h)


# -------------------------------------------------------------------------------------- scores


def timestep(t, sde: DiscreteVPSDE):
    """The 0-based timestep k = t·N − 1 of a diffusers network at the time t of ``DiscreteVPSDE``."""
    return t * sde.num_steps - 1.0


def eps_fns(apply, params, cond_ctx, null_ctx, sde: DiscreteVPSDE, guidance):
    """Single-example ε-predictions ``(cfg, cond, uncond)``, each ``eps(x, t)`` at schedule time t.

    ``cfg`` is what SD pipelines compute: one batched call on [x, x] with contexts [∅, c], then
    ε_∅ + w·(ε_c − ε_∅); ``cond`` and ``uncond`` call the network with one context each.
    """

    def batched_cfg(xs, ts):
        b = xs.shape[0]
        ctx = jnp.concatenate([jnp.broadcast_to(null_ctx, (b, *null_ctx.shape)),
                               jnp.broadcast_to(cond_ctx, (b, *cond_ctx.shape))])
        ks = timestep(ts, sde)
        eps = apply(params, jnp.concatenate([xs, xs]), jnp.concatenate([ks, ks]), ctx)
        eps_null, eps_cond = eps[:b], eps[b:]
        return eps_null + guidance * (eps_cond - eps_null)

    def batched_with(ctx):
        return lambda xs, ts: apply(params, xs, timestep(ts, sde), jnp.broadcast_to(ctx, (xs.shape[0], *ctx.shape)))

    return single_example(batched_cfg), single_example(batched_with(cond_ctx)), single_example(batched_with(null_ctx))


def score_fns(apply, params, cond_ctx, null_ctx, sde: DiscreteVPSDE, guidance):
    """Single-example scores ``(cfg, cond, uncond)`` of `eps_fns`: s = −ε̂/σ (``score_from_eps``)."""
    return tuple(score_from_eps(e, sde) for e in eps_fns(apply, params, cond_ctx, null_ctx, sde, guidance))


# ------------------------------------------------------------------------------------- measure


def _memory(compiled) -> tuple[float, float]:
    """(temp MiB, peak MiB) of a compiled program: scratch, and arguments + outputs + scratch − aliased."""
    m = compiled.memory_analysis()
    peak = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
    return m.temp_size_in_bytes / 2**20, peak / 2**20


def _gflop(compiled) -> float | None:
    """XLA's FLOP count of a compiled program in GFLOP, or None where the backend gives none."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - optional: some backends do not implement it
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    flops = (cost or {}).get("flops")
    return float(flops) / 1e9 if flops is not None and flops > 0 else None


def config(args) -> dict:
    """The network, latent and context sizes of a run (``--quick``: tiny)."""
    if args.quick:
        return {"latent": (8, 8, 4), "context": (7, 16), "channels": 8, "channel_mults": (1, 2), "heads": 2}
    return {"latent": (64, 64, 4), "context": (77, 768), "channels": args.channels, "channel_mults": (1, 2, 4, 4),
            "heads": args.heads}


def measure(args) -> tuple[list[dict], dict]:
    """Build the network and the inputs, then compile, run and time every row; returns (rows, meta)."""
    cfg = config(args)
    sde = DiscreteVPSDE.scaled_linear()
    if not 1.0 / sde.num_steps <= args.t0 <= 1.0:
        raise ValueError(f"--t0 must lie in [1/N, 1] = [{1.0 / sde.num_steps}, 1] (the network's first step "
                         f"is at t = 1/N), got {args.t0}.")
    n_levels = len(cfg["channel_mults"])
    sd_levels = tuple(range(n_levels - 1))  # SD's layout: every level but the lowest resolution
    levels = tuple(i for i in args.attention_levels if i < n_levels)
    net = UNet2DCondition(channels=cfg["channels"], channel_mults=cfg["channel_mults"],
                          layers_per_block=args.layers_per_block, attention_levels=levels, heads=cfg["heads"])
    k_init, k_x, k_c, k_0, k_eps, k_probe = jax.random.split(jax.random.key(args.seed), 6)
    x = jax.random.normal(k_x, cfg["latent"])
    cond_ctx = jax.random.normal(k_c, cfg["context"])  # stand-in for CLIP's encoding of a prompt
    null_ctx = jax.random.normal(k_0, cfg["context"])  # stand-in for CLIP's encoding of ""
    params = net.init(k_init, x[None], jnp.zeros((1,)), cond_ctx[None])
    n_params = sum(p.size for p in jax.tree.leaves(params))
    inputs = (params, cond_ctx, null_ctx)
    print(f"U-Net: {n_params / 1e6:.2f}M parameters, channels {cfg['channels']}, layers/block "
          f"{args.layers_per_block}, attention levels {levels}; latent {cfg['latent']}, "
          f"context {cfg['context']}", flush=True)

    def scores(inputs):
        params, cond_ctx, null_ctx = inputs
        return score_fns(net.apply, params, cond_ctx, null_ctx, sde, args.guidance)

    def forward(inputs, x):
        params, cond_ctx, null_ctx = inputs
        return eps_fns(net.apply, params, cond_ctx, null_ctx, sde, args.guidance)[0](x, args.t0)

    def flipd_with(probes, chunk):
        def run(inputs, x, key):
            return lid.flipd(scores(inputs)[0], x, key, t0=args.t0, sde=sde, trace="hutchinson",
                             num_probes=probes, chunk_size=chunk)
        return run

    # The sampler's first S states: the latent noised at the times of steps 1..S of 50 (t = 1, 0.98, ...).
    ts = 1.0 - jnp.arange(args.cfg_steps, dtype=jnp.float32) / 50.0
    alphas, sigmas = sde.marginal_coefs(ts)
    noise = jax.random.normal(k_eps, (args.cfg_steps, *cfg["latent"]))
    xs = alphas[:, None, None, None] * x[None] + sigmas[:, None, None, None] * noise

    def cfg_norm(inputs, xs, ts):
        _, cond, uncond = scores(inputs)
        return lid.cfg_norm(cond, uncond, xs, ts, sde=sde)

    specs = [("forward", None, None, None, forward, (inputs, x))]
    flipd_settings = [(1, None), (args.probes, args.chunk)]
    if not args.no_at_once and args.chunk is not None and args.chunk < args.probes:
        flipd_settings.append((args.probes, None))
    for p, c in dict.fromkeys(flipd_settings):  # drops a repeated setting
        specs.append(("flipd", p, c, None, flipd_with(p, c), (inputs, x, k_probe)))
    specs.append(("cfg_norm", None, None, args.cfg_steps, cfg_norm, (inputs, xs, ts)))

    rows, values = [], {}
    for name, probes, chunk, states, fn, fargs in specs:
        looped = probes is not None and chunk is not None and chunk < probes  # lax.map: XLA counts its body once
        label = f"{name}" + (f" P={probes} chunk={chunk}" if probes else "") + (f" S={states}" if states else "")
        print(f"{label}: compiling ...", flush=True)
        t_start = time.perf_counter()
        compiled = jax.jit(fn).lower(*fargs).compile()
        prepared = Prepared(compiled, time.perf_counter() - t_start)
        out = block(compiled(*fargs))  # the first run (untimed) gives the row's value
        temp_mb, peak_mb = _memory(compiled)
        print(f"{label}: compiled in {prepared.compile_s:.1f} s, temp {temp_mb:.1f} MiB, peak {peak_mb:.1f} MiB; "
              f"timing {args.repeats} call(s) ...", flush=True)
        stats = time_fn(prepared, *fargs, repeats=args.repeats, warmup=0)
        values[label] = out
        row = {"row": name, "probes": probes, "chunk": chunk, "states": states,
               "points_per_s": 1.0 / stats["median_s"], "temp_mb": temp_mb, "peak_mb": peak_mb,
               "gflop": None if looped else _gflop(compiled), **stats}
        if name != "forward":
            row["value"] = float(out)
        rows.append(row)
        print(f"{label}: {stats['median_s']:.3f} s per point ({row['points_per_s']:.3g} points/s), "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)

    ref = rows[0]
    for row in rows:
        row["vs_forward"] = row["points_per_s"] / ref["points_per_s"]
        row["temp_vs_forward"] = row["temp_mb"] / ref["temp_mb"] if ref["temp_mb"] > 0 else None

    memory_only = {}
    if args.memory_probes and args.chunk is not None:
        label = f"flipd P={args.memory_probes} chunk={args.chunk}"
        print(f"{label}: compiling (memory only) ...", flush=True)
        compiled = jax.jit(flipd_with(args.memory_probes, args.chunk)).lower(inputs, x, k_probe).compile()
        temp_mb, peak_mb = _memory(compiled)
        memory_only[label] = {"probes": args.memory_probes, "chunk": args.chunk, "temp_mb": temp_mb,
                              "peak_mb": peak_mb}
        print(f"{label}: temp {temp_mb:.1f} MiB, peak {peak_mb:.1f} MiB", flush=True)

    checks = {}
    chunked = f"flipd P={args.probes} chunk={args.chunk}"
    at_once = f"flipd P={args.probes} chunk=None"
    if chunked in values and at_once in values and chunked != at_once:
        a, b = float(values[chunked]), float(values[at_once])
        checks["flipd_chunked_vs_at_once"] = {"chunked": a, "at_once": b, "abs_diff": abs(a - b),
                                              "rel_diff": abs(a - b) / max(abs(b), 1e-12)}
    meta = {"config": {**{k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
                       "layers_per_block": args.layers_per_block,
                       "attention_levels": list(levels),
                       "attention_resolutions": [cfg["latent"][0] // 2**i for i in levels],
                       "sd_attention_layout": levels == sd_levels,
                       "guidance": args.guidance, "t0": args.t0, "probes": args.probes, "chunk": args.chunk,
                       "cfg_steps": args.cfg_steps, "cfg_times": [float(t) for t in ts], "repeats": args.repeats,
                       "seed": args.seed, "quick": args.quick, "schedule": "DiscreteVPSDE.scaled_linear()",
                       "num_steps": int(sde.num_steps)},
            "params": int(n_params), "memory_only": memory_only, "checks": checks}
    return rows, meta


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--channels", type=int, default=64, help="base channels C (SD: 320)")
    p.add_argument("--layers-per-block", type=int, default=1, help="ResNet blocks per down level (SD: 2)")
    p.add_argument("--attention-levels", type=int, nargs="*", default=list(DEFAULT_ATTENTION_LEVELS),
                   help="levels (0 = full resolution, 64×64) with spatial transformers (default 1 2: 32×32 and "
                        "16×16; SD: 0 1 2)")
    p.add_argument("--heads", type=int, default=8, help="attention heads (SD 1.x: 8)")
    p.add_argument("--guidance", type=float, default=7.5, help="CFG scale w")
    p.add_argument("--t0", type=float, default=0.05, help="FLIPD time, in [1/N, 1]")
    p.add_argument("--probes", type=int, default=8, help="Hutchinson probes P")
    p.add_argument("--chunk", type=int, default=2, help="probes per chunk")
    p.add_argument("--no-at-once", action="store_true", help="skip the row with all P probes at once")
    p.add_argument("--memory-probes", type=int, default=None,
                   help="also compile (not run) FLIPD with this many probes in chunks of --chunk and record its "
                        "temp memory in the meta (default 4·P; 0 with --quick: none)")
    p.add_argument("--cfg-steps", type=int, default=4, help="sampler states S of the CFG norm")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per row (default 3; 1 with --quick)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(DEFAULT_OUT), help="results directory (default bench/results)")
    p.add_argument("--quick", action="store_true",
                   help="tiny config (8×8 latent, 8 channels, 7×16 context, 1 repeat) for the smoke test")
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.memory_probes is None:
        args.memory_probes = 0 if args.quick else 4 * args.probes
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    start, load_before = time.perf_counter(), os.getloadavg()
    rows, meta = measure(args)
    meta = env_info(**meta, loadavg_before=list(load_before), loadavg_after=list(os.getloadavg()),
                    wall_s=time.perf_counter() - start,
                    max_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    summary = {f"temp_mb {k}": v["temp_mb"] for k, v in meta["memory_only"].items()}
    summary |= {f"{r['row']}" + (f"_P{r['probes']}_chunk{r['chunk']}" if r["probes"] else "") + "_vs_forward":
               r["vs_forward"] for r in rows[1:]}
    notes = [] if meta["config"]["sd_attention_layout"] else [
        f"attention at levels {meta['config']['attention_levels']} only (SD: every level but the last)"]
    return finish(NAME, rows, args.out, meta=meta, columns=COLUMNS, summary=summary, notes=notes)


if __name__ == "__main__":
    main()
