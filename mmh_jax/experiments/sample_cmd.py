"""``mmh-jax sample``: samples from a trained model to ``.npz`` (and a PNG grid for images)."""

from __future__ import annotations

import math
import os

import jax
import numpy as np

from mmh_jax import _interrupt
from mmh_jax.experiments._outputs import output_paths, write_npz
from mmh_jax.trained import load

__all__ = ["run", "save_grid"]


def save_grid(images: np.ndarray, path: str, *, max_images: int = 64) -> None:
    """Save up to ``max_images`` images in [−1, 1], shape (N, H, W, C), as a PNG grid."""
    from mmh_jax._plotting import pyplot

    plt = pyplot()

    imgs = np.clip((np.asarray(images[:max_images]) + 1.0) / 2.0, 0.0, 1.0)
    n = imgs.shape[0]
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.8, rows * 0.8), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, im in zip(axes.flat, imgs):
        ax.imshow(im[..., 0] if im.shape[-1] == 1 else im, cmap="gray" if im.shape[-1] == 1 else None,
                  vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.tight_layout(pad=0.1)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(checkpoint: str, out: str, *, n: int, seed: int = 0, method: str | None = None, num_steps: int | None = None,
        label: int | None = None, guidance: float | None = None, step: int | None = None,
        overwrite: bool = False, default_num_steps: int = 100) -> list[str]:
    """Sample ``n`` points into the directory ``out`` (``samples.npz`` with ``x``, plus ``samples.png``
    for images); returns the written paths.

    Diffusion models sample with ``method`` (default ddim) in ``num_steps`` steps (default
    ``default_num_steps``);
    normalizing flows (``mmh-jax train --model flow|lidl``) sample exactly, from their first member.
    ``step`` picks a checkpoint (default: the newest). Existing outputs are refused unless
    ``overwrite`` (see `mmh_jax.experiments._outputs`).
    """
    paths = output_paths(out, ("samples.npz", "samples.png"), command="sample", overwrite=overwrite)
    model = load(checkpoint, step=step)
    _interrupt.check()
    if model.kind == "flow":  # a normalizing flow: exact samples, no sampler to choose
        given = [flag for flag, v in (("--method", method), ("--num-steps", num_steps), ("--label", label),
                                      ("--guidance", guidance)) if v is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: the model in {checkpoint} is a normalizing flow, which samples "
                             "exactly and unconditionally; drop these options.")
        xs = model.sample(jax.random.key(seed), n)
        method, num_steps = "flow", 0
    else:
        method, num_steps = method or "ddim", default_num_steps if num_steps is None else num_steps
        if label is not None and model.num_classes is None:
            raise ValueError(f"label: the model in {checkpoint} is unconditional, got --label {label}.")
        if guidance is not None and label is None:
            raise ValueError("guidance needs a --label (classifier-free guidance steers towards a class).")
        xs = model.sample(jax.random.key(seed), n, method=method, num_steps=num_steps, label=label,
                          guidance=guidance)
    _interrupt.check()
    os.makedirs(out, exist_ok=True)
    write_npz(paths["samples.npz"], x=xs, step=model.step, method=method, num_steps=num_steps)
    written = [paths["samples.npz"]]
    if xs.ndim == 4:
        save_grid(xs, paths["samples.png"])
        written.append(paths["samples.png"])
    return written
