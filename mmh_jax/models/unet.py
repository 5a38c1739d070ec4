"""A small U-Net ε-prediction network for images: ``UNet``, optionally class-conditional.

The network maps an image ``x`` of shape ``(H, W, C)`` — or a batch ``(..., H, W, C)`` — and a
diffusion time ``t`` to ε̂(x, t) of the shape of ``x``. It is single-example first, as the
estimators in [`mmh_jax.lid`][mmh_jax.lid] call it (``score_fn(x, t)`` with ``x`` one image and ``t`` a
scalar), and the same parameters serve batches. Every normalisation is per example, so an image
gives the same output alone and inside any batch. No implicit rank promotion is used, so it runs
under ``jax_numpy_rank_promotion="raise"``.

Class conditioning follows classifier-free guidance (Ho & Salimans, arXiv 2207.12598): the label
embedding has ``num_classes + 1`` rows and the last one, ``null_label = num_classes``, is the
unconditional ("∅") class; ``label=None`` means ∅ for every example.

Architecture after DDPM (Ho et al., arXiv 2006.11239) at a small width.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmh_jax.models._conditioning import label_embedding
from mmh_jax.models.score_mlp import sinusoidal_embedding

Array = jax.Array

__all__ = ["UNet"]

# GroupNorm over the spatial and channel axes of one image, never across the batch axis. Flax's
# default (all axes but the first) would take H as a batch axis for an unbatched (H, W, C) input.
_IMAGE_AXES = (-3, -2, -1)

# Kernel initializer of DDPM (score_sde's default_init): Glorot-uniform.
_INIT = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")


class _Conv(nn.Module):
    """2-D convolution with SAME padding as a matmul over patches (im2col); ``nn.Conv``'s parameters.

    The same function and the same parameter names and shapes as ``nn.Conv(features, kernel_size,
    strides)`` (``kernel`` (kh, kw, C_in, C_out) in HWIO order, ``bias`` (C_out,)), but written as
    ``patches @ kernel.reshape(kh·kw·C_in, C_out)``. Reason: on XLA:CPU the gradients of
    ``lax.conv_general_dilated`` inside a ``lax.scan`` loop fall off the fast path; matmul gradients
    do not, and for small images the patch tensor is cheap.
    """

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    strides: tuple[int, int] = (1, 1)

    @nn.compact
    def __call__(self, h: Array) -> Array:
        # h: (N, H, W, C_in) -> (N, ceil(H/s), ceil(W/s), features)
        (kh, kw), (sh, sw) = self.kernel_size, self.strides
        c_in = h.shape[-1]
        kernel = self.param("kernel", _INIT, (kh, kw, c_in, self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        out_h, out_w = -(-h.shape[1] // sh), -(-h.shape[2] // sw)
        pads = []
        for size, k, s, out in ((h.shape[1], kh, sh, out_h), (h.shape[2], kw, sw, out_w)):
            total = max((out - 1) * s + k - size, 0)  # XLA's SAME padding
            pads.append((total // 2, total - total // 2))
        hp = jnp.pad(h, ((0, 0), *pads, (0, 0)))
        cols = [
            hp[:, i : i + (out_h - 1) * sh + 1 : sh, j : j + (out_w - 1) * sw + 1 : sw, :]
            for i in range(kh)
            for j in range(kw)
        ]
        patches = cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)
        y = patches @ kernel.reshape(kh * kw * c_in, self.features).astype(h.dtype)
        return y + bias.astype(h.dtype).reshape(1, 1, 1, self.features)


def _group_norm(num_groups: int, name: str | None = None) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=num_groups, reduction_axes=_IMAGE_AXES, name=name)


class _ResBlock(nn.Module):
    """h + Conv(Drop(SiLU(GN(Conv(SiLU(GN(h))) + Dense(SiLU(temb)))))); h via a 1×1 conv if widths differ."""

    features: int
    num_groups: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, h: Array, temb: Array, train: bool) -> Array:
        # h: (N, H, W, C_in), temb: (N, E)
        y = nn.silu(_group_norm(self.num_groups, "norm_0")(h))
        y = _Conv(self.features, (3, 3), name="conv_0")(y)
        y = y + nn.Dense(self.features, kernel_init=_INIT, name="time")(nn.silu(temb))[:, None, None, :]
        y = nn.silu(_group_norm(self.num_groups, "norm_1")(y))
        if self.dropout > 0.0:
            y = nn.Dropout(self.dropout, deterministic=not train)(y)
        y = _Conv(self.features, (3, 3), name="conv_1")(y)
        if h.shape[-1] != self.features:
            h = _Conv(self.features, (1, 1), name="skip")(h)
        return h + y


class _AttnBlock(nn.Module):
    """h + MultiHeadAttention(GN(h)) over the H·W positions of each image."""

    num_groups: int
    num_heads: int

    @nn.compact
    def __call__(self, h: Array) -> Array:
        n, hh, ww, c = h.shape
        y = _group_norm(self.num_groups, "norm")(h).reshape(n, hh * ww, c)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, qkv_features=c, out_features=c, kernel_init=_INIT, name="attn"
        )(y)
        return h + y.reshape(n, hh, ww, c)


class UNet(nn.Module):
    """U-Net ε-prediction network for images: ε̂(x, t[, label]) of the shape of ``x`` (channels last).

    Architecture (DDPM-style, small): sinusoidal embedding of ``t`` (dimension ``channels``,
    ``sinusoidal_embedding(t, channels, scale=time_scale)``) → Dense(4·channels) → SiLU →
    Dense(4·channels) = temb; plus a learned label embedding when ``num_classes`` is set. A 3×3
    conv lifts the image to ``channels``. Each level ℓ (width ``channels·channel_mults[ℓ]``) has
    ``num_res_blocks`` residual blocks [GroupNorm → SiLU → Conv3×3, + Dense(SiLU(temb)),
    GroupNorm → SiLU → (Dropout) → Conv3×3, residual], then a stride-2 3×3 conv down to the next
    level. The lowest level has self-attention after each residual block when ``attention``; the
    middle is ResBlock → (attention) → ResBlock. The decoder mirrors the encoder with
    ``num_res_blocks + 1`` residual blocks per level, each fed the concatenation with a skip
    connection, and nearest-neighbour ×2 upsampling + 3×3 conv to the next level's width between
    levels (DDPM keeps the wider width there; narrowing first saves ~15% of the FLOPs); the output is
    GroupNorm → SiLU → Conv3×3 to C channels. Every GroupNorm normalises each image on its own
    (over H, W and the channels of a group), so results do not depend on the batch.

    Image size: H and W must be divisible by 2^(len(channel_mults) − 1); otherwise a ValueError
    says so (no silent padding). 8×8 (digits), 28×28 (MNIST) and 32×32 (CIFAR) all work with the
    default two levels; 28×28 also with three.

    Class conditioning (classifier-free guidance): with ``num_classes = K`` the embedding table has
    K + 1 rows; labels 0…K−1 are the classes and ``null_label = K`` is the unconditional class ∅.
    ``label=None`` is ∅ for the whole batch (the same output as ``label=K``). Train with labels
    replaced by K at the CFG dropout rate. Label values are traced, so not checked: out-of-range
    ones give NaN outputs (JAX's ``take``; negative ones count from the end). With
    ``num_classes=None`` the model is unconditional and a label is an error.

    Attributes:
      channels: base width (channels at the first level); must be divisible by ``num_groups``.
      channel_mults: width multiplier per resolution level; len(channel_mults) − 1 downsamplings.
      num_res_blocks: residual blocks per encoder level (the decoder has one more).
      attention: self-attention at the lowest resolution (and in the middle block).
      num_heads: attention heads (must divide the lowest-level width).
      num_groups: GroupNorm groups.
      dropout: dropout rate inside the residual blocks (active only with ``train=True``, which then
        needs ``rngs={"dropout": key}``).
      num_classes: number of classes for conditioning, or None for an unconditional network.
      time_scale: multiplier of ``t`` inside the sinusoidal embedding (1000 for t ∈ (0, 1]).

    ``apply(params, x, t, label=None, train=False)``:
      x: ``(H, W, C)`` or ``(..., H, W, C)``, floating point.
      t: ``()`` (shared by the batch) or ``x.shape[:-3]``.
      label: None, or integers of shape ``()`` (shared) or ``x.shape[:-3]``.
      Returns ε̂ with the shape and dtype of ``x``.

    Raises:
      ValueError/TypeError at trace time: rank < 3, non-float ``x``, H or W not divisible by
      2^(levels − 1), widths not divisible by ``num_groups``, mis-shaped ``t`` or ``label``,
      a label on an unconditional network, a non-integer label.

    Examples:
      Shapes via ``jax.eval_shape``, which keeps the doctest free of XLA compiles; real use
      passes arrays to ``model.init`` / ``model.apply`` the same way:
      >>> import jax, jax.numpy as jnp
      >>> model = UNet(channels=8, num_groups=4, num_classes=10)
      >>> image = jax.ShapeDtypeStruct((8, 8, 1), jnp.float32)
      >>> params = jax.eval_shape(model.init, jax.random.key(0), image, 0.5)
      >>> jax.eval_shape(model.apply, params, image, 0.1).shape  # one image, scalar t, label ∅
      (8, 8, 1)
      >>> batch = jax.ShapeDtypeStruct((3, 8, 8, 1), jnp.float32)
      >>> jax.eval_shape(model.apply, params, batch, jnp.full(3, 0.1), jnp.array([0, 1, 10])).shape
      (3, 8, 8, 1)
      >>> model.null_label
      10
    """

    channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    attention: bool = True
    num_heads: int = 1
    num_groups: int = 8
    dropout: float = 0.0
    num_classes: int | None = None
    time_scale: float = 1000.0

    @property
    def null_label(self) -> int | None:
        """Index of the unconditional (∅) class: ``num_classes``, or None for an unconditional net."""
        return self.num_classes

    def _check_config(self, height: int, width: int) -> None:
        levels = len(self.channel_mults)
        if levels < 1:
            raise ValueError(f"channel_mults must have at least one entry, got {self.channel_mults!r}.")
        if self.num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {self.num_res_blocks}.")
        for mult in self.channel_mults:
            if (self.channels * mult) % self.num_groups:
                raise ValueError(
                    f"every width channels*mult must be divisible by num_groups={self.num_groups}; "
                    f"channels={self.channels}, channel_mults={self.channel_mults!r} gives "
                    f"{self.channels * mult}."
                )
        if self.attention and (self.channels * self.channel_mults[-1]) % self.num_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must divide the lowest-level width "
                f"{self.channels * self.channel_mults[-1]}."
            )
        factor = 2 ** (levels - 1)
        if height % factor or width % factor:
            raise ValueError(
                f"image height and width must be divisible by 2^(len(channel_mults) - 1) = {factor} "
                f"(channel_mults={self.channel_mults!r}), got {height}x{width}; use fewer levels or pad "
                f"the images."
            )
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(f"num_classes must be None or >= 1, got {self.num_classes}.")

    @nn.compact
    def __call__(self, x, t, label=None, train: bool = False) -> Array:
        x = jnp.asarray(x)
        if x.ndim < 3:
            raise ValueError(
                f"x must be an image (H, W, C) or a batch (..., H, W, C), got shape {x.shape}."
            )
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"x must have a floating-point dtype, got {x.dtype}.")
        batch, (height, width, in_ch) = x.shape[:-3], x.shape[-3:]
        self._check_config(height, width)
        n = math.prod(batch)
        t = jnp.asarray(t, jnp.float32)
        if t.shape not in ((), batch):
            raise ValueError(
                f"t must be a scalar or have shape x.shape[:-3] = {batch}, got shape {t.shape}."
            )
        t = jnp.broadcast_to(t, batch).reshape(n)
        h = x.reshape(n, height, width, in_ch)  # one (possibly size-1) batch axis from here on

        # Time (and label) embedding: (n, 4·channels).
        emb_dim = 4 * self.channels
        temb = sinusoidal_embedding(t, self.channels, scale=self.time_scale).astype(h.dtype)
        temb = nn.Dense(emb_dim, kernel_init=_INIT, name="time_dense_0")(temb)
        temb = nn.Dense(emb_dim, kernel_init=_INIT, name="time_dense_1")(nn.silu(temb))
        lemb = label_embedding(self.num_classes, emb_dim, label, batch, network="UNet")
        if lemb is not None:
            temb = temb + lemb.reshape(n, emb_dim)

        res = lambda feats, name: _ResBlock(feats, self.num_groups, self.dropout, name=name)  # noqa: E731
        attn = lambda name: _AttnBlock(self.num_groups, self.num_heads, name=name)  # noqa: E731
        last = len(self.channel_mults) - 1

        # Encoder.
        h = _Conv(self.channels, (3, 3), name="conv_in")(h)
        skips = [h]
        for lvl, mult in enumerate(self.channel_mults):
            for i in range(self.num_res_blocks):
                h = res(self.channels * mult, f"down_{lvl}_res_{i}")(h, temb, train)
                if self.attention and lvl == last:
                    h = attn(f"down_{lvl}_attn_{i}")(h)
                skips.append(h)
            if lvl != last:
                down = _Conv(h.shape[-1], (3, 3), (2, 2), name=f"down_{lvl}_sample")
                h = down(h)
                skips.append(h)

        # Middle.
        mid = self.channels * self.channel_mults[-1]
        h = res(mid, "mid_res_0")(h, temb, train)
        if self.attention:
            h = attn("mid_attn")(h)
        h = res(mid, "mid_res_1")(h, temb, train)

        # Decoder.
        for lvl in reversed(range(len(self.channel_mults))):
            for i in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = res(self.channels * self.channel_mults[lvl], f"up_{lvl}_res_{i}")(h, temb, train)
                if self.attention and lvl == last:
                    h = attn(f"up_{lvl}_attn_{i}")(h)
            if lvl != 0:
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
                feats = self.channels * self.channel_mults[lvl - 1]
                h = _Conv(feats, (3, 3), name=f"up_{lvl}_sample")(h)

        h = nn.silu(_group_norm(self.num_groups, "norm_out")(h))
        h = _Conv(in_ch, (3, 3), name="conv_out")(h)
        return h.reshape(x.shape).astype(x.dtype)
