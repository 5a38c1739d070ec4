"""``mmh-jax sample``: samples from a trained model to ``.npz`` (and a PNG grid for images)."""

from __future__ import annotations

import math
import os

import jax
import numpy as np

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


def run(checkpoint: str, out: str, *, n: int, seed: int = 0, method: str = "ddim", num_steps: int = 100,
        label: int | None = None, guidance: float | None = None) -> list[str]:
    """Sample ``n`` points and write ``out`` (npz with ``x``); returns the written paths."""
    from mmh_jax.trained import load

    model = load(checkpoint)
    if label is not None and model.num_classes is None:
        raise ValueError(f"label: the model in {checkpoint} is unconditional, got --label {label}.")
    if guidance is not None and label is None:
        raise ValueError("guidance needs a --label (classifier-free guidance steers towards a class).")
    xs = model.sample(jax.random.key(seed), n, method=method, num_steps=num_steps, label=label, guidance=guidance)
    if not out.endswith(".npz"):
        out = out + ".npz"
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    np.savez(out, x=xs, step=model.step, method=method, num_steps=num_steps)
    paths = [out]
    if xs.ndim == 4:
        png = out[:-4] + ".png"
        save_grid(xs, png)
        paths.append(png)
    return paths
