"""``mmh-jax train``: train a diffusion model or normalizing flows (parse, then call the training)."""

from __future__ import annotations

import os
import sys

from mmh_jax import _interrupt
from mmh_jax.cli._args import add_common, int_at_least, positive_float, print_error


def add_parser(sub) -> None:
    """Add ``train`` to the subparsers ``sub``."""
    p = sub.add_parser(
        "train",
        help="train a diffusion model (MLP or U-Net) or normalizing flows (flow, lidl) with checkpoints; resumable",
        description="Train an epsilon-prediction diffusion model on the VP-SDE with AdamW (warm-up, cosine decay, "
        "clipping) and EMA. Checkpoints are written atomically every --checkpoint-every steps (last --keep kept); "
        "Ctrl-C or SIGTERM stops at the next safe point (between dispatches), saves a checkpoint and exits "
        "(code 130 / 143); a second signal stops at once, without saving. --steps is the TOTAL number of steps. "
        "--resume with the same --steps continues exactly: the parameters of an uninterrupted run. With a larger "
        "--steps it extends the run: the learning-rate schedule is planned anew for the new total (a warm "
        "restart), so the result is not that of an uninterrupted run of that length. Fewer --steps than the run "
        "has done is an error, and so is --resume where --out holds no run.",
    )
    add_common(p, "mmh_jax_out/train", fills=" (checkpoints/, config.json, train_log.jsonl, loss.png)",
            overwrite="delete the run already in --out and start a new one (default: refuse; --resume continues it)")
    p.add_argument("--data", default="lollipop", metavar="NAME|PATH",
                   help="synthetic generator name (lollipop, torus_circle, ...), 'digits', or a path: images "
                   "(.npz/.npy, image folder, MNIST IDX, CIFAR-10 batches) or an (N, D) .npy/.npz (default: lollipop)")
    p.add_argument("--deltas", type=float, nargs="+", default=None, metavar="DELTA",
                   help="flow, lidl: noise scales of the training data x + delta*N(0, I), one flow per delta, "
                   "trained together (vmapped) (default: lidl geomspace(0.01, 0.1, 8); flow 0.01)")
    p.add_argument("--model", choices=("mlp", "unet", "flow", "lidl"), default=None,
                   help="mlp for vector data (images are flattened), unet for images (default: unet for images, else "
                   "mlp); flow: a normalizing flow (rational-quadratic spline couplings) of vector data; lidl: one "
                   "flow per --deltas noise scale, for `mmh-jax lid --estimator lidl`")
    p.add_argument("--steps", type=int_at_least(1), default=None,
                   help="total optimisation steps (default: mlp 8000, or 16000 on vector data of 64 or more "
                   "coordinates; 4000 unet and flows; quick: 300)")
    p.add_argument("--batch-size", type=int_at_least(1), default=None, help="batch size (default: 256 mlp, 128 unet)")
    p.add_argument("--width", type=int_at_least(1), default=None,
                   help="network width: mlp hidden units (default 512; quick: 128), unet base channels (default 16), "
                   "flow/lidl coupling hidden units (default 32). Wider MLPs read LID better in D >= 32 at more "
                   "training time (docs/benchmark.md)")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="peak learning rate, a finite number > 0 (default: 1e-3 mlp, 5e-4 unet)")
    p.add_argument("--n", type=int_at_least(1), default=None,
                   help="points drawn from a synthetic generator (default: 20000)")
    p.add_argument("--class-conditional", action="store_true",
                   help="condition on labels (labelled images), with a null class for classifier-free guidance")
    p.add_argument("--checkpoint-every", type=int_at_least(1), default=None,
                   help="steps between checkpoints (default: 500)")
    p.add_argument("--keep", type=int_at_least(1), default=None, help="checkpoints kept, at least 1 (default: 3)")
    p.add_argument("--monitor-every", type=int_at_least(0), default=None,
                   help="FLIPD of a fixed probe batch every N steps, inside the jitted step (default: 0, off)")
    p.add_argument("--time-sampling", choices=("uniform", "log-sigma"), default=None,
                   help="mlp, unet: how the diffusion times of the loss are drawn: uniform, t ~ U(0.001, 1) "
                   "(default); log-sigma, log sigma(t) uniform: half the steps at noise sigma < 0.1, which makes "
                   "a model fit (memorize) its training points sooner. A --resume must use the run's own value")
    p.add_argument("--time-conditioning", choices=("film", "add"), default=None,
                   help="mlp: how the network sees the time: film, a scale and shift of every hidden layer "
                   "(default), or add, a time vector added before the first layer (runs trained before FiLM "
                   "became the default; pass it to --resume one). docs/benchmark.md has the comparison")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    p.add_argument("--preset", choices=("quick", "full"), default="full",
                   help="quick: a 300-step run on a small model (seconds); full (default): the defaults above")
    p.set_defaults(func=command)


def command(args) -> int:
    """Train (or resume) the run of ``args``; the exit code."""
    from mmh_jax.checkpoint import CheckpointError
    from mmh_jax.data.images import ImageDataError
    from mmh_jax.experiments import training

    overrides = {k: v for k, v in {
        "data": args.data, "steps": args.steps, "batch_size": args.batch_size, "learning_rate": args.lr,
        "n": args.n, "checkpoint_every": args.checkpoint_every, "keep": args.keep,
        "monitor_every": args.monitor_every, "seed": args.seed,
        "deltas": tuple(args.deltas) if args.deltas else None, "time_sampling": args.time_sampling,
    }.items() if v is not None}
    if args.class_conditional:
        overrides["class_conditional"] = True
    try:
        overrides["model"] = args.model or training.default_model(args.data)
        config = training.preset(args.preset, **overrides)
        if args.width is not None:
            config = training.with_width(config, args.width)
        if args.time_conditioning is not None:
            config = training.with_time_conditioning(config, args.time_conditioning)
        result = training.train_or_resume(config, args.out, resume=args.resume, overwrite=args.overwrite)
    except (CheckpointError, ImageDataError, ValueError, FileNotFoundError) as e:
        print_error(args, "train", e)
        return 2
    if result["interrupted"]:
        return _interrupt.exit_code()
    done = "trained" if result["step"] > result["start"] else "already trained"
    print(f"{done} to step {result['step']} (loss {result['loss']:.4f}); run directory {os.path.abspath(args.out)}",
          file=sys.stderr)
    return 0
