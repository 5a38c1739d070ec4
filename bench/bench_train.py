"""Training throughput (optimisation steps/s): ``mmh_jax.train`` against the same step in PyTorch.

    python bench/bench_train.py [--quick] [--out DIR] [--repeats N] [--models mlp,unet]

Models and settings are the defaults of ``mmh-jax train`` (``training.preset("full", ...)``):

- ``mlp``: ``make_model("mlp")`` (hidden 512, 3 layers, long skips, time embedding 128) on the
  lollipop (2-D, n = 20000), batch 256, lr 1e-3;
- ``unet``: ``make_model("unet", ...)`` with the U-Net defaults of the CLI (16 base channels) on the
  8×8×1 digits, batch 128, lr 5e-4.

Both: denoising score matching on ε under the VP-SDE (β 0.1 → 20), t ~ U(10⁻³, 1), AdamW
(weight decay 10⁻⁴) with linear warm-up (100 steps) and cosine decay over 4000 steps, global-norm
clipping at 1, EMA of the parameters after every step (decay min(0.999, (1+s)/(10+s))).

Rows (per model):

- ``jax``, ``steps_per_call`` = k (default 50 and 1): the library itself — ``make_optimizer``,
  ``init_train_state``, ``make_train_step`` and ``make_train_loop(step, batch_size,
  steps_per_call=k)``, which runs k steps per dispatch in a ``lax.scan`` and draws the batches
  inside the jit. A timed call is ``--steps`` steps, i.e. ``--steps``/k dispatches.
- ``torch``: the same step written the straightforward way in PyTorch (the ``bench`` extra):
  an identical network (parameter counts asserted equal), ``torch.optim.AdamW`` with a ``LambdaLR``
  warm-up + cosine schedule, ``torch.nn.utils.clip_grad_norm_``, an EMA ``lerp_`` over the
  parameters, batches drawn by ``torch.randint`` index into a data tensor; a plain Python loop
  of ``--steps`` steps, eager mode. ``compile_s`` is the wall time of its first step.
- ``torch.compile`` (only with ``--torch-compile``): the same loop with ``torch.compile(net)``
  (forward and backward compiled by inductor; optimizer and EMA eager). ``compile_s`` is its first
  step, compilation included.

Equivalence: before anything is timed, the JAX initial weights are copied into each torch network
once and the forward outputs (random inputs, random t) must agree to 1e-4; the torch learning-rate
schedule is checked against optax's. Weights are not shared during timing: this measures training
throughput, not numerics.

Timing (``bench._common``): JAX loops are compiled once (``compile_s``, tracing + XLA),
torch runs one step; then every row is warmed up and all rows of a model are timed in
``--repeats`` interleaved rounds, so they see the same background load. ``steps_per_s`` uses the
median wall time of a round; ``vs_torch`` is the throughput ratio to the eager torch row of the
same model (``*_best`` in the summary: from the fastest round).

Threads: XLA uses one intra-op thread per core. torch gets ``torch.set_num_threads(cores)`` on a
quiet machine; with ``--torch-threads auto`` (default) a few training steps per model compare
``cores`` with 1 thread and keep the faster, because on a busy machine OpenMP with every core can be
100× slower (measured: a tiny U-Net step 26 ms on 1 thread, 3.9 s on 2, with two other jobs
running) and the baseline should be torch at its best. ``--torch-threads N`` forces N. The chosen
count and the probe go into the results, as do the load averages before and after the run
(timings on a busy machine are noisy).

Results: a markdown table on stdout and ``{out}/bench_train.{json,md}`` (default ``bench/results``).
"""

from __future__ import annotations

import argparse
import dataclasses
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

from bench._common import DEFAULT_OUT, Prepared, env_info, finish, prepare, time_many
from mmh_jax import train
from mmh_jax.experiments import training
from mmh_jax.models import make_model
from mmh_jax.sde import VPSDE

NAME = "bench_train"
MODELS = ("mlp", "unet")
DATA = {"mlp": "lollipop", "unet": "digits"}
#: Issue target: JAX (default steps per dispatch) against the straightforward PyTorch step.
TARGET = 2.0
#: Forward outputs of the two networks with the same weights must agree to this (max |diff|).
FORWARD_TOL = 1e-4
COLUMNS = ["impl", "model", "steps_per_call", "steps_per_s", "ms_per_step", "compile_s", "vs_torch",
           "median_s", "min_s", "cpu_median_s"]


def num_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _int_list(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v.strip()]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer steps and repeats (smoke run)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="output directory for JSON + markdown")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of mlp,unet")
    p.add_argument("--steps", type=int, default=None,
                   help="optimisation steps per timed call (default 50; 10 with --quick)")
    p.add_argument("--steps-per-call", default=None,
                   help="JAX steps per dispatch (lax.scan), comma-separated; each must divide --steps "
                        "(default '<steps>,1')")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 3; 2 with --quick)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per row before the rounds")
    p.add_argument("--batch", type=int, default=None, help="batch size of every model (default: the CLI's)")
    p.add_argument("--n", type=int, default=None, help="lollipop points (default: the CLI's, 20000)")
    p.add_argument("--hidden", type=int, default=None, help="MLP width (default 512)")
    p.add_argument("--layers", type=int, default=None, help="MLP hidden layers (default 3)")
    p.add_argument("--embed", type=int, default=None, help="MLP time-embedding size (default 128)")
    p.add_argument("--channels", type=int, default=None, help="U-Net base channels (default: the CLI's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-torch", action="store_true", help="JAX rows only")
    p.add_argument("--torch-threads", default="auto",
                   help="torch intra-op threads, or 'auto' (default): the faster of <cores> and 1 on a few "
                        "training steps, per model")
    p.add_argument("--torch-compile", action="store_true",
                   help="add a torch.compile row (inductor; needs a C++ compiler, compiles for ~a minute)")
    args = p.parse_args(argv)
    if args.steps is None:
        args.steps = 10 if args.quick else 50
    if args.repeats is None:
        args.repeats = 2 if args.quick else 3
    args.steps_per_call = _int_list(args.steps_per_call) if args.steps_per_call else [args.steps, 1]
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in args.models:
        if m not in MODELS:
            p.error(f"--models: unknown model {m!r}; choose from {MODELS}")
    for k in args.steps_per_call:
        if k < 1 or args.steps % k:
            p.error(f"--steps-per-call {k} must be >= 1 and divide --steps {args.steps}")
    return args


def model_config(name: str, args: argparse.Namespace) -> training.TrainConfig:
    """The CLI's default training config of ``name``, with the size overrides of ``args``."""
    cfg = training.preset("full", data=DATA[name], model=name)
    kw = dict(cfg.model_kwargs)
    if name == "mlp":
        kw.update({k: v for k, v in (("hidden", args.hidden), ("num_layers", args.layers),
                                      ("time_embed_dim", args.embed)) if v is not None})
    elif args.channels is not None:
        kw["channels"] = args.channels
    overrides = {"model_kwargs": kw, "seed": args.seed}
    if args.batch is not None:
        overrides["batch_size"] = args.batch
    if args.n is not None:
        overrides["n"] = args.n
    return dataclasses.replace(cfg, **overrides)


# ----------------------------------------------------------------------------------------- JAX


class JaxSetup:
    """The module, data, initial parameters and ``TrainState`` of one model, built as the CLI does."""

    def __init__(self, cfg: training.TrainConfig):
        x, _ = training.load_training_data(cfg)
        self.cfg = cfg
        self.x = x
        self.module = make_model(cfg.model, **cfg.model_kwargs)
        k_init, self.k_train = jax.random.split(jax.random.key(cfg.seed))
        # Jitted, as the CLI does: eagerly every initializer op compiles on its own (a minute for the U-Net).
        self.params = jax.jit(self.module.init)(k_init, jnp.zeros((1, *x.shape[1:])), jnp.zeros((1,)))
        self.num_params = sum(int(v.size) for v in jax.tree.leaves(self.params))
        self.optimizer = train.make_optimizer(learning_rate=cfg.learning_rate, total_steps=cfg.steps,
                                              warmup_steps=cfg.warmup_steps)
        self.state = jax.jit(lambda p: train.init_train_state(p, self.optimizer))(self.params)
        self.step = train.make_train_step(lambda p, xb, t: self.module.apply(p, xb, t), self.optimizer, VPSDE(),
                                          ema_decay=cfg.ema_decay)
        self.data = jnp.asarray(x)

    def unit(self, steps: int, steps_per_call: int) -> Prepared:
        """``steps`` training steps as ``steps/steps_per_call`` dispatches of the library's loop.

        Returns a `Prepared` ``call(state) -> (state, metrics)`` with the loop's compile time.
        """
        loop = train.make_train_loop(self.step, batch_size=self.cfg.batch_size, steps_per_call=steps_per_call)
        extra = (self.data, None, None, self.k_train)
        compiled = prepare(loop, self.state, *extra)  # AOT: compile time alone
        jax.block_until_ready(loop(self.state, *extra))  # the jitted function reuses it (as the CLI calls it)
        calls = steps // steps_per_call

        def run(state):
            for _ in range(calls):
                state, metrics = loop(state, *extra)
            return state, metrics

        return Prepared(run, compiled.compile_s)


# --------------------------------------------------------------------------------------- torch


def torch_modules(torch):
    """The PyTorch twins of ``ScoreMLP`` and ``UNet`` (NCHW images), built on ``torch.nn``."""
    nn, F = torch.nn, torch.nn.functional

    def sinusoidal(t, dim, scale, freqs):
        a = (scale * t)[:, None] * freqs
        emb = torch.cat([torch.sin(a), torch.cos(a)], dim=-1)
        return F.pad(emb, (0, 1)) if dim % 2 else emb  # an odd size gets a zero column, as in flax

    def freqs_buffer(dim, max_period=10000.0):
        half = dim // 2
        return torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)

    class ScoreMLP(nn.Module):
        """ε̂(x, t): SiLU(W_x x + W_t emb(t) + b), SiLU(Dense) layers, long skips h_l += h_{L−1−l};
        with time_conditioning="film", every layer SiLU((1 + γ_l)·Dense(h) + β_l), (γ_l, β_l) from SiLU(W_c emb + b_c)."""

        def __init__(self, dim, hidden=512, num_layers=3, time_embed_dim=128, time_scale=1000.0, skip=True,
                     time_conditioning="add"):
            super().__init__()
            self.embed, self.scale, self.skip, self.num_layers = time_embed_dim, time_scale, skip, num_layers
            self.film = time_conditioning == "film"
            self.register_buffer("freqs", freqs_buffer(time_embed_dim))
            self.time_0 = nn.Linear(time_embed_dim, time_embed_dim if self.film else hidden, bias=self.film)
            self.layers = nn.ModuleDict(
                {f"hidden_{i}": nn.Linear(dim if i == 0 else hidden, hidden) for i in range(num_layers)})
            if self.film:
                self.films = nn.ModuleDict(
                    {f"film_{i}": nn.Linear(time_embed_dim, 2 * hidden) for i in range(num_layers)})
            self.out = nn.Linear(hidden, dim)

        def forward(self, x, t):
            emb = self.time_0(sinusoidal(t, self.embed, self.scale, self.freqs))
            cond = F.silu(emb) if self.film else None
            h, hs = x, []
            for i in range(self.num_layers):
                h = self.layers[f"hidden_{i}"](h)
                if self.film:
                    gamma, beta = self.films[f"film_{i}"](cond).chunk(2, dim=-1)
                    h = h * (1 + gamma) + beta
                elif i == 0:
                    h = h + emb
                h = F.silu(h)
                mirror = self.num_layers - 1 - i
                if self.skip and mirror < i:
                    h = h + hs[mirror]
                hs.append(h)
            return self.out(h)

    class Conv(nn.Conv2d):
        """Conv2d with XLA's SAME padding: symmetric for stride 1, (0, 1) for a stride-2 3×3 on even sizes."""

        def __init__(self, c_in, c_out, k, stride=1):
            super().__init__(c_in, c_out, k, stride=stride, padding=k // 2 if stride == 1 else 0)

        def forward(self, x):
            if self.stride[0] != 1:
                pads = []
                for size, k, s in ((x.shape[-1], self.kernel_size[1], self.stride[1]),
                                   (x.shape[-2], self.kernel_size[0], self.stride[0])):
                    total = max((-(-size // s) - 1) * s + k - size, 0)
                    pads += [total // 2, total - total // 2]
                x = F.pad(x, pads)
            return super().forward(x)

    def group_norm(groups, c):
        return nn.GroupNorm(groups, c, eps=1e-6)  # flax's epsilon

    class ResBlock(nn.Module):
        def __init__(self, c_in, c_out, groups, emb_dim):
            super().__init__()
            self.norm_0, self.conv_0 = group_norm(groups, c_in), Conv(c_in, c_out, 3)
            self.time = nn.Linear(emb_dim, c_out)
            self.norm_1, self.conv_1 = group_norm(groups, c_out), Conv(c_out, c_out, 3)
            self.skip = Conv(c_in, c_out, 1) if c_in != c_out else None

        def forward(self, h, temb):
            y = self.conv_0(F.silu(self.norm_0(h)))
            y = y + self.time(F.silu(temb))[:, :, None, None]
            y = self.conv_1(F.silu(self.norm_1(y)))
            return (h if self.skip is None else self.skip(h)) + y

    class AttnBlock(nn.Module):
        def __init__(self, c, groups, heads):
            super().__init__()
            self.norm = group_norm(groups, c)
            self.attn = nn.MultiheadAttention(c, heads, batch_first=True)

        def forward(self, h):
            n, c, hh, ww = h.shape
            y = self.norm(h).flatten(2).transpose(1, 2)  # (n, H·W, c)
            y = self.attn(y, y, y, need_weights=False)[0]
            return h + y.transpose(1, 2).reshape(n, c, hh, ww)

    class UNet(nn.Module):
        """The layout of ``mmh_jax.models.unet.UNet``; submodules carry the flax module names."""

        def __init__(self, in_ch, channels=32, channel_mults=(1, 2), num_res_blocks=1, attention=True,
                     num_heads=1, num_groups=8, dropout=0.0, num_classes=None, time_scale=1000.0):
            super().__init__()
            if dropout or num_classes:
                raise NotImplementedError("the benchmark's torch U-Net is unconditional, without dropout")
            self.channels, self.mults, self.nrb = channels, tuple(channel_mults), num_res_blocks
            self.attention, self.scale = attention, time_scale
            self.register_buffer("freqs", freqs_buffer(channels))
            emb, g = 4 * channels, num_groups
            m = {"time_dense_0": nn.Linear(channels, emb), "time_dense_1": nn.Linear(emb, emb),
                 "conv_in": Conv(in_ch, channels, 3)}
            widths, last = [channels * k for k in self.mults], len(self.mults) - 1
            ch, skip_ch = channels, [channels]
            for lvl, w in enumerate(widths):
                for i in range(num_res_blocks):
                    m[f"down_{lvl}_res_{i}"], ch = ResBlock(ch, w, g, emb), w
                    if attention and lvl == last:
                        m[f"down_{lvl}_attn_{i}"] = AttnBlock(w, g, num_heads)
                    skip_ch.append(ch)
                if lvl != last:
                    m[f"down_{lvl}_sample"] = Conv(ch, ch, 3, stride=2)
                    skip_ch.append(ch)
            m["mid_res_0"], ch = ResBlock(ch, widths[-1], g, emb), widths[-1]
            if attention:
                m["mid_attn"] = AttnBlock(ch, g, num_heads)
            m["mid_res_1"] = ResBlock(ch, ch, g, emb)
            for lvl in reversed(range(len(widths))):
                for i in range(num_res_blocks + 1):
                    m[f"up_{lvl}_res_{i}"], ch = ResBlock(ch + skip_ch.pop(), widths[lvl], g, emb), widths[lvl]
                    if attention and lvl == last:
                        m[f"up_{lvl}_attn_{i}"] = AttnBlock(ch, g, num_heads)
                if lvl != 0:
                    m[f"up_{lvl}_sample"], ch = Conv(ch, widths[lvl - 1], 3), widths[lvl - 1]
            m["norm_out"], m["conv_out"] = group_norm(g, ch), Conv(ch, in_ch, 3)
            self.blocks = nn.ModuleDict(m)

        def forward(self, x, t):  # x (N, C, H, W), t (N,)
            b = self.blocks
            temb = b["time_dense_0"](sinusoidal(t, self.channels, self.scale, self.freqs))
            temb = b["time_dense_1"](F.silu(temb))
            last = len(self.mults) - 1
            h = b["conv_in"](x)
            skips = [h]
            for lvl in range(len(self.mults)):
                for i in range(self.nrb):
                    h = b[f"down_{lvl}_res_{i}"](h, temb)
                    if self.attention and lvl == last:
                        h = b[f"down_{lvl}_attn_{i}"](h)
                    skips.append(h)
                if lvl != last:
                    h = b[f"down_{lvl}_sample"](h)
                    skips.append(h)
            h = b["mid_res_0"](h, temb)
            if self.attention:
                h = b["mid_attn"](h)
            h = b["mid_res_1"](h, temb)
            for lvl in reversed(range(len(self.mults))):
                for i in range(self.nrb + 1):
                    h = b[f"up_{lvl}_res_{i}"](torch.cat([h, skips.pop()], dim=1), temb)
                    if self.attention and lvl == last:
                        h = b[f"up_{lvl}_attn_{i}"](h)
                if lvl != 0:
                    h = b[f"up_{lvl}_sample"](F.interpolate(h, scale_factor=2, mode="nearest"))
            return b["conv_out"](F.silu(b["norm_out"](h)))

    return ScoreMLP, UNet


def build_torch_net(torch, name: str, cfg: training.TrainConfig, event_shape):
    ScoreMLP, UNet = torch_modules(torch)
    if name == "mlp":
        return ScoreMLP(event_shape[-1], **cfg.model_kwargs)
    return UNet(event_shape[-1], **cfg.model_kwargs)


def copy_flax_params(torch, net, params) -> int:
    """Copy flax ``params`` into the twin ``net`` (matched by module names); returns flax arrays used.

    Dense kernels (in, out) → Linear weights (out, in); conv kernels HWIO → OIHW; GroupNorm scale →
    weight; attention query/key/value (c, heads, head_dim) → ``in_proj_weight`` rows, out (heads,
    head_dim, c) → ``out_proj.weight``.
    """
    nn = torch.nn
    copied = 0

    def put(dst, src, leaves=1):
        nonlocal copied
        src = torch.from_numpy(np.array(src, np.float32))
        if tuple(dst.shape) != tuple(src.shape):
            raise ValueError(f"shape mismatch: torch {tuple(dst.shape)} vs flax {tuple(src.shape)}")
        dst.copy_(src)
        copied += leaves

    def visit(mod, tree):
        if isinstance(mod, nn.MultiheadAttention):
            c, qkv = mod.embed_dim, [tree[k] for k in ("query", "key", "value")]
            put(mod.in_proj_weight, np.concatenate([np.asarray(p["kernel"]).reshape(c, c).T for p in qkv]), 3)
            put(mod.in_proj_bias, np.concatenate([np.asarray(p["bias"]).reshape(c) for p in qkv]), 3)
            put(mod.out_proj.weight, np.asarray(tree["out"]["kernel"]).reshape(c, c).T)
            put(mod.out_proj.bias, tree["out"]["bias"])
        elif isinstance(mod, nn.Conv2d):
            put(mod.weight, np.asarray(tree["kernel"]).transpose(3, 2, 0, 1))
            put(mod.bias, tree["bias"])
        elif isinstance(mod, nn.Linear):
            put(mod.weight, np.asarray(tree["kernel"]).T)
            if mod.bias is not None:
                put(mod.bias, tree["bias"])
        elif isinstance(mod, nn.GroupNorm):
            put(mod.weight, tree["scale"])
            put(mod.bias, tree["bias"])
        else:  # a ModuleDict of flax-named modules shares its parent's tree
            for name, child in mod.named_children():
                visit(child, tree if isinstance(child, nn.ModuleDict) else tree[name])

    with torch.no_grad():
        visit(net, params["params"])
    return copied


def lr_factor(step: int, *, total_steps: int, warmup_steps: int, end_frac: float = 0.01) -> float:
    """``make_optimizer``'s schedule over ``learning_rate``: linear warm-up from 0, cosine to ``end_frac``."""
    warmup = max(0, min(warmup_steps, total_steps - 1))
    if warmup and step < warmup:
        return step / warmup
    k = min(step - warmup, total_steps - warmup) / (total_steps - warmup)
    return end_frac + (1.0 - end_frac) * 0.5 * (1.0 + math.cos(math.pi * k))


class TorchTrainer:
    """The training step of ``make_train_step`` written the straightforward way in PyTorch."""

    def __init__(self, torch, net, data, cfg: training.TrainConfig, sde: VPSDE, *, t_min: float = 1e-3,
                 weight_decay: float = 1e-4, clip_norm: float = 1.0):
        self.torch, self.net, self.data, self.cfg = torch, net, data, cfg
        self.params = [p for p in net.parameters() if p.requires_grad]
        self.beta_min, self.beta_max, self.T = float(sde.beta_min), float(sde.beta_max), float(sde.T)
        self.t_min, self.clip_norm = t_min, clip_norm
        self.opt = torch.optim.AdamW(self.params, lr=cfg.learning_rate, weight_decay=weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_factor(s, total_steps=cfg.steps, warmup_steps=cfg.warmup_steps))
        self.ema = [p.detach().clone() for p in self.params]
        self.step_count = 0

    def loss(self, x0):
        torch = self.torch
        b = x0.shape[0]
        t = torch.rand(b) * (self.T - self.t_min) + self.t_min
        big_b = self.beta_min * t + (self.beta_max - self.beta_min) * t**2 / (2.0 * self.T)
        alpha, sigma = torch.exp(-0.5 * big_b), torch.sqrt(-torch.expm1(-big_b))
        eps = torch.randn_like(x0)
        shape = (b,) + (1,) * (x0.dim() - 1)
        xt = alpha.view(shape) * x0 + sigma.view(shape) * eps
        pred = self.net(xt, t)
        return (pred - eps).pow(2).reshape(b, -1).sum(1).mean()

    def step(self):
        torch = self.torch
        idx = torch.randint(0, self.data.shape[0], (self.cfg.batch_size,))
        loss = self.loss(self.data[idx])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm)
        self.opt.step()
        self.sched.step()
        s = self.step_count
        decay = min(self.cfg.ema_decay, (1.0 + s) / (10.0 + s))
        with torch.no_grad():
            for e, p in zip(self.ema, self.params):
                e.lerp_(p, 1.0 - decay)
        self.step_count += 1
        return loss.detach()

    def unit(self, steps: int) -> Prepared:
        """``steps`` steps in a Python loop; ``compile_s`` is the wall time of a first, untimed step."""
        t0 = time.perf_counter()
        self.step()
        first = time.perf_counter() - t0

        def run():
            for _ in range(steps):
                loss = self.step()
            return loss

        return Prepared(run, first)


def pick_torch_threads(torch, trainer: TorchTrainer, candidates, *, steps: int = 3) -> tuple[int, dict]:
    """The thread count in ``candidates`` with the fastest training step (min of ``steps``), and the timings.

    A candidate stops early once one of its steps takes 3× the best so far (on a busy machine OpenMP
    with every core can be 100× slower than one thread; no need to watch it for long).
    """
    probe: dict[int, float] = {}
    for n in dict.fromkeys(candidates):
        torch.set_num_threads(n)
        trainer.step()  # untimed: thread-pool start-up
        best = math.inf
        for _ in range(steps):
            t0 = time.perf_counter()
            trainer.step()
            best = min(best, time.perf_counter() - t0)
            if probe and best > 3 * min(probe.values()):
                break
        probe[n] = best
    chosen = min(probe, key=probe.get)
    torch.set_num_threads(chosen)
    return chosen, probe


# ---------------------------------------------------------------------------------------- main


def check_forward(torch, setup: JaxSetup, net, *, n: int = 16, seed: int = 1) -> dict:
    """Copy the JAX initial weights into ``net`` and compare forward outputs (max |diff| ≤ FORWARD_TOL)."""
    torch_count = sum(p.numel() for p in net.parameters())
    if torch_count != setup.num_params:
        raise AssertionError(f"{setup.cfg.model}: parameter counts differ: torch {torch_count}, "
                             f"jax {setup.num_params}.")
    copied = copy_flax_params(torch, net, setup.params)
    leaves = len(jax.tree.leaves(setup.params))
    if copied != leaves:
        raise AssertionError(f"{setup.cfg.model}: copied {copied} of {leaves} parameter arrays.")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *setup.x.shape[1:])).astype(np.float32)
    t = rng.uniform(1e-3, 1.0, n).astype(np.float32)
    want = np.asarray(jax.jit(setup.module.apply)(setup.params, x, t))
    tx = torch.from_numpy(x if x.ndim == 2 else x.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        got = net(tx, torch.from_numpy(t)).numpy()
    if got.ndim == 4:
        got = got.transpose(0, 2, 3, 1)
    err = float(np.max(np.abs(got - want)))
    if not err <= FORWARD_TOL:
        raise AssertionError(f"{setup.cfg.model}: torch and JAX forward outputs differ by {err:.3g} > {FORWARD_TOL}.")
    return {"params": setup.num_params, "max_abs_diff": err, "tol": FORWARD_TOL,
            "max_abs_output": float(np.max(np.abs(want)))}


def check_schedule(cfg: training.TrainConfig) -> float:
    """Max |torch LambdaLR learning rate − optax schedule| over the run's steps (relative to lr)."""
    import optax

    warmup = max(0, min(cfg.warmup_steps, cfg.steps - 1))
    sched = optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else cfg.learning_rate, peak_value=cfg.learning_rate, warmup_steps=warmup,
        decay_steps=cfg.steps, end_value=cfg.learning_rate * 0.01)
    steps = np.unique(np.linspace(0, cfg.steps + 10, 97).astype(int))
    want = np.asarray(jax.vmap(sched)(jnp.asarray(steps)))
    got = np.array([cfg.learning_rate * lr_factor(int(s), total_steps=cfg.steps, warmup_steps=cfg.warmup_steps)
                    for s in steps])
    err = float(np.max(np.abs(got - want)) / cfg.learning_rate)
    if not err <= 1e-5:
        raise AssertionError(f"torch learning-rate schedule differs from optax's by {err:.3g} (relative).")
    return err


def run_model(name: str, args: argparse.Namespace, torch) -> tuple[list[dict], dict, dict]:
    """Rows, config and checks of one model."""
    cfg = model_config(name, args)
    setup = JaxSetup(cfg)
    info = {"data": cfg.data, "data_shape": list(setup.x.shape), "batch_size": cfg.batch_size,
            "learning_rate": cfg.learning_rate, "model_kwargs": dict(cfg.model_kwargs),
            "total_steps": cfg.steps, "warmup_steps": cfg.warmup_steps, "ema_decay": cfg.ema_decay,
            "params": setup.num_params}
    print(f"  {name}: {info}", flush=True)
    calls, checks = {}, {}
    for k in args.steps_per_call:
        calls[("jax", k)] = (setup.unit(args.steps, k), (setup.state,))
        print(f"  {name} jax   steps_per_call={k:<3d} compiled in {calls[('jax', k)][0].compile_s:.2f}s", flush=True)
    if torch is not None:
        checks["forward"] = check_forward(torch, setup, build_torch_net(torch, name, cfg, setup.x.shape[1:]))
        checks["lr_schedule_rel_diff"] = check_schedule(cfg)
        print(f"  {name} torch twin: {checks['forward']['params']} parameters, forward max |diff| "
              f"{checks['forward']['max_abs_diff']:.2g}", flush=True)
        data = torch.from_numpy(np.array(setup.x if setup.x.ndim == 2 else setup.x.transpose(0, 3, 1, 2)))
        new_net = lambda: build_torch_net(torch, name, cfg, setup.x.shape[1:])  # noqa: E731
        if args.torch_threads == "auto":  # on a throwaway trainer, so the timed ones start fresh
            threads, probe = pick_torch_threads(torch, TorchTrainer(torch, new_net(), data, cfg, VPSDE()),
                                                [num_cores(), 1])
        else:
            threads, probe = int(args.torch_threads), {}
            torch.set_num_threads(threads)
        checks["torch_threads"], checks["torch_thread_probe_s"] = threads, probe
        print(f"  {name} torch threads: {threads} (step probe, s: {probe})", flush=True)
        impls = [("torch", new_net())]
        if args.torch_compile:
            impls.append(("torch.compile", torch.compile(new_net())))
        for impl, net in impls:
            try:
                unit = TorchTrainer(torch, net, data, cfg, VPSDE()).unit(args.steps)
            except Exception as exc:  # torch.compile needs a working toolchain; report, don't fail
                if impl == "torch":
                    raise
                checks[impl] = f"failed: {type(exc).__name__}: {exc}"[:500]
                print(f"  {name} {impl}: {checks[impl]}", flush=True)
                continue
            calls[(impl, 1)] = (unit, ())
            print(f"  {name} {impl:13s} first step {unit.compile_s:.2f}s", flush=True)

    print(f"  {name}: timing {len(calls)} rows, {args.repeats} interleaved rounds of {args.steps} steps ...",
          flush=True)
    stats = time_many(calls, repeats=args.repeats, warmup=args.warmup)
    rows = []
    for (impl, k), st in stats.items():
        rows.append({"impl": impl, "model": name, "steps_per_call": k, "steps": args.steps,
                     "steps_per_s": args.steps / st["median_s"], "ms_per_step": 1e3 * st["median_s"] / args.steps,
                     "best_steps_per_s": args.steps / st["min_s"], **st})
    base = stats.get(("torch", 1))
    if base is not None:
        for r in rows:
            r["vs_torch"] = base["median_s"] / r["median_s"]
            r["vs_torch_best"] = base["min_s"] / r["min_s"]
    return rows, info, checks


def run(args: argparse.Namespace) -> dict:
    """Run the benchmark; returns ``{"name", "meta", "rows", "summary", "paths"}``."""
    load_before = os.getloadavg()
    print(f"{NAME}: models {args.models}, {args.steps} steps per timed call, steps_per_call "
          f"{args.steps_per_call}, {args.repeats} rounds; load average {load_before}", flush=True)
    torch, torch_meta = None, {"torch": None}
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            torch_meta["torch"] = "not importable (install the 'bench' extra)"
    if torch is not None:
        torch.manual_seed(args.seed)
        torch_meta = {"torch": torch.__version__, "torch_threads": args.torch_threads}

    rows, configs, checks = [], {}, {}
    for name in args.models:
        r, configs[name], checks[name] = run_model(name, args, torch)
        rows += r

    summary = {}
    default_k = max(args.steps_per_call)
    for name in args.models:
        for r in rows:
            if r["model"] == name and r["impl"] != "torch" and "vs_torch" in r:
                key = f"{name}_{r['impl']}_k{r['steps_per_call']}_vs_torch"
                summary[key], summary[f"{key}_best"] = r["vs_torch"], r["vs_torch_best"]
    summary["targets"] = {}
    for name in args.models:
        value = summary.get(f"{name}_jax_k{default_k}_vs_torch")
        summary["targets"][f"{name}_jax_vs_torch"] = {
            "target": TARGET, "steps_per_call": default_k, "value": value,
            "met": None if value is None else value >= TARGET}

    load_after = os.getloadavg()
    meta = env_info(config={"steps": args.steps, "steps_per_call": args.steps_per_call, "repeats": args.repeats,
                            "warmup": args.warmup, "seed": args.seed},
                    models=configs, cores=num_cores(), checks=checks, load_average_before=load_before,
                    load_average_after=load_after, **torch_meta)
    return finish(NAME, rows, args.out, meta=meta, columns=COLUMNS, summary=summary,
                  notes=[f"load average before {load_before}, after {load_after}"])


def main(argv=None) -> dict:
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
