"""ε-prediction MLP: ``ScoreMLP`` and its sinusoidal time embedding.

The network sees ``x`` of shape ``(..., D)`` (or ``(..., *event)`` with ``event_ndim`` event axes,
e.g. small images ``(..., H, W, C)``, flattened inside) and a time ``t`` of shape ``()`` or
``(...)`` and returns ε̂(x, t[, label]) of the shape of ``x``. It is single-example first (``x`` of shape ``(D,)``,
``t`` scalar — what the estimators in [`mmh_jax.lid`][mmh_jax.lid] call), and the same parameters also serve
a batch ``(B, D)`` with times ``(B,)`` or one shared scalar time. No implicit rank promotion is
used, so it runs under ``jax_numpy_rank_promotion="raise"``.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmh_jax.models._conditioning import label_embedding

Array = jax.Array

__all__ = ["TIME_CONDITIONINGS", "ScoreMLP", "sinusoidal_embedding"]

#: How ``ScoreMLP`` feeds the time to its layers: ``"add"`` (a time vector added before the first
#: layer's SiLU) or ``"film"`` (a scale and shift of every hidden layer, FiLM).
TIME_CONDITIONINGS = ("add", "film")


def sinusoidal_embedding(t, dim: int, *, scale: float = 1000.0, max_period: float = 10000.0) -> Array:
    """Transformer/DDPM sinusoidal embedding of ``scale·t``: shape ``(*t.shape, dim)``.

    emb = [sin(scale·t·ω_k), cos(scale·t·ω_k)],  ω_k = max_period^(−k/(dim/2)),  k < dim/2.
    Continuous VP-SDE times t ∈ (0, 1] are scaled by 1000 to the range of DDPM's integer steps,
    as in score_sde's DDPM models. An odd ``dim`` gets one zero column at the end.

    Args:
      t: time(s), a scalar or any shape ``(...)``; cast to float32.
      dim: embedding size (≥ 2): ⌊dim/2⌋ sine columns, then ⌊dim/2⌋ cosine columns (then a zero
        column if ``dim`` is odd). The k in the formula runs over k < ⌊dim/2⌋.
      scale: multiplier of ``t`` (1000 for t ∈ (0, 1]).
      max_period: ω_k runs from 1 (k = 0) down towards 1/max_period, in radians per unit of scale·t.

    Returns:
      float32 array of shape ``(*t.shape, dim)``.

    Raises:
      ValueError: ``dim < 2``.

    Reference: Vaswani et al., "Attention Is All You Need", arXiv 1706.03762 (§3.5); Ho et al.,
    "Denoising Diffusion Probabilistic Models", arXiv 2006.11239 (its time embedding).

    Examples:
      >>> import jax.numpy as jnp
      >>> sinusoidal_embedding(0.0, 5).tolist()  # t = 0: sines 0, cosines 1, odd dim: a zero column
      [0.0, 0.0, 1.0, 1.0, 0.0]
      >>> emb = sinusoidal_embedding(jnp.array([0.1, 0.7, 1.0]), 8)
      >>> emb.shape
      (3, 8)
      >>> bool(jnp.allclose(emb[:, :4] ** 2 + emb[:, 4:] ** 2, 1.0))  # sin² + cos² = 1 per frequency
      True
    """
    if dim < 2:
        raise ValueError(f"dim must be >= 2 for a sinusoidal embedding, got {dim}.")
    t = jnp.asarray(t, jnp.float32)
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = (scale * t)[..., None] * freqs.reshape((1,) * t.ndim + (half,))
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    if dim % 2:
        emb = jnp.concatenate([emb, jnp.zeros((*t.shape, 1), emb.dtype)], axis=-1)
    return emb


class ScoreMLP(nn.Module):
    """ε-prediction MLP: ε̂(x, t) = W_out·h_{L−1} + b_out with hidden layers (``time_conditioning="add"``)
    h_0 = SiLU(W_x x + W_t emb(t) + b_0),  h_l = SiLU(W_l h_{l−1} + b_l) [+ h_{L−1−l}],
    or (``"film"``) with c = SiLU(W_c emb(t) + b_c) (``time_embed_dim`` wide) and (γ_l, β_l) = V_l c + u_l
    for every layer, h_l = SiLU((1 + γ_l)·(W_l h_{l−1} + b_l) + β_l) [+ h_{L−1−l}],  h_{−1} = x.

    FiLM (Perez et al., arXiv 1709.07871; the scale-shift time conditioning of Dhariwal & Nichol,
    arXiv 2105.05233) lets the time rescale every layer. At small noise the ε of a manifold grows
    like (x − π(x))/σ(t) in its normal directions, a Jacobian ∝ 1/σ(t) that an additive time vector
    can only approximate; docs/benchmark.md ("Time conditioning") has the measurements. V_l starts at
    zero, so a FiLM network starts as the plain MLP with biases.

    With ``skip=True`` the network is a U-shaped MLP: the second half of the layers (the
    "decoder", l > L−1−l) adds the output of its mirror layer in the first half (the "encoder"),
    as U-ViT's long skips do. For L = 3 layer 2 receives h_0; for L = 4 layer 3 receives h_0 and
    layer 2 receives h_1. The skips are additions of equal-width activations, so they cost no
    parameters and almost no FLOPs, and they let the fine detail of x reach the output at small t.

    With ``"add"`` the first layer is a Dense of the concatenation [x, emb(t)], written as the sum of
    a Dense of x (``hidden_0``) and a bias-free Dense of the time embedding (``time_0``): the same
    function, but a Jacobian-vector product in x (FLIPD's trace) skips the time branch instead of
    pushing zeros through it, which saves ``time_embed_dim/(D + time_embed_dim)`` of the first
    layer's JVP work. FiLM's γ_l and β_l depend on t alone, so a JVP in x skips them too.

    ``ScoreMLP()`` is additive, as every saved ScoreMLP before FiLM was; `mmh-jax train`'s presets
    build ``"film"`` (``mmh_jax.experiments.training.MLP_MODEL_DEFAULTS``).

    Attributes:
      hidden: width of the hidden layers.
      num_layers: number of hidden Dense + SiLU layers (≥ 1).
      time_embed_dim: size of the sinusoidal time embedding.
      time_scale: multiplier of ``t`` inside the embedding (1000 for t ∈ (0, 1]).
      skip: long skip connections between mirrored encoder and decoder layers (see above);
        ``False`` gives a plain MLP (the throughput benchmark's network).
      time_conditioning: one of ``TIME_CONDITIONINGS``: ``"add"`` (the first layer only) or
        ``"film"`` (every layer; see above).
      num_classes: K for a class-conditional network (classifier-free guidance: a learned label
        embedding of K + 1 rows, the last the null class ∅, added to the time branch before FiLM's
        SiLU), or ``None``.
      event_ndim: trailing axes of ``x`` that form one example (1: vectors ``(D,)``; 3: images
        ``(H, W, C)``, flattened inside the network so scores keep the data's shape).

    ``apply(params, x, t, label=None)``: ``x`` of shape ``(..., *event)``, ``t`` of shape ``()``
    (shared) or the batch shape ``x.shape[:-event_ndim]``, ``label`` (conditional networks) ``None``
    (∅), a shared integer or one per example; returns an array of the shape of ``x``, in the float
    dtype of ``x``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> model = ScoreMLP(hidden=32, num_layers=2, time_embed_dim=16)
      >>> params = model.init(jax.random.key(0), jnp.zeros(5), 0.5)
      >>> model.apply(params, jnp.ones(5), 0.1).shape
      (5,)
      >>> model.apply(params, jnp.ones((4, 5)), jnp.full((4,), 0.1)).shape
      (4, 5)
      >>> cond = ScoreMLP(hidden=32, num_layers=2, time_embed_dim=16, num_classes=10, event_ndim=3)
      >>> params = cond.init(jax.random.key(0), jnp.zeros((8, 8, 1)), 0.5, 3)
      >>> cond.apply(params, jnp.ones((4, 8, 8, 1)), 0.1, jnp.arange(4)).shape
      (4, 8, 8, 1)
    """

    hidden: int = 512
    num_layers: int = 3
    time_embed_dim: int = 128
    time_scale: float = 1000.0
    skip: bool = True
    time_conditioning: str = "add"
    num_classes: int | None = None
    event_ndim: int = 1

    @nn.compact
    def __call__(self, x, t, label=None) -> Array:
        x = jnp.asarray(x)
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}.")
        if self.event_ndim < 1:
            raise ValueError(f"event_ndim must be >= 1, got {self.event_ndim}.")
        if x.ndim < self.event_ndim:
            raise ValueError(f"x must have shape (..., *event) with {self.event_ndim} event axes "
                             f"(event_ndim), got shape {x.shape}.")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"x must have a floating-point dtype, got {x.dtype}.")
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(f"num_classes must be None or >= 1, got {self.num_classes}.")
        t = jnp.asarray(t, jnp.float32)
        batch, event = x.shape[: x.ndim - self.event_ndim], x.shape[x.ndim - self.event_ndim:]
        if t.shape not in ((), batch):
            raise ValueError(
                f"t must be a scalar or have the batch shape x.shape[:-event_ndim] = {batch}, got shape {t.shape}."
            )
        if self.time_conditioning not in TIME_CONDITIONINGS:
            raise ValueError(f"time_conditioning must be one of {TIME_CONDITIONINGS}, got {self.time_conditioning!r}.")
        film = self.time_conditioning == "film"
        flat = x.reshape(*batch, math.prod(event))
        emb = sinusoidal_embedding(t, self.time_embed_dim, scale=self.time_scale).astype(x.dtype)
        # the additive time vector (hidden wide), or FiLM's conditioning c before its SiLU (as wide as
        # the embedding: its per-layer projections to 2·hidden then cost 2·hidden·time_embed_dim each)
        width = self.time_embed_dim if film else self.hidden
        # shape (*t.shape, width): a time shared by the batch is projected once, then broadcast
        temb = nn.Dense(width, use_bias=film, name="time_0")(emb)
        lemb = label_embedding(self.num_classes, width, label, batch, network="ScoreMLP")
        if lemb is not None:
            temb = jnp.broadcast_to(temb, (*batch, width)) + lemb.astype(temb.dtype)
        cond = nn.silu(temb) if film else None
        h, hs = flat, []
        for i in range(self.num_layers):
            h = nn.Dense(self.hidden, name=f"hidden_{i}")(h)
            if film:  # (1 + γ_i)·h + β_i, γ and β from the time alone (a JVP in x never enters them)
                gamma, beta = jnp.split(nn.Dense(2 * self.hidden, kernel_init=nn.initializers.zeros,
                                                 name=f"film_{i}")(cond), 2, axis=-1)
                h = h * jnp.broadcast_to(1 + gamma, h.shape) + jnp.broadcast_to(beta, h.shape)
            elif i == 0:
                h = h + jnp.broadcast_to(temb, h.shape)
            h = nn.silu(h)
            mirror = self.num_layers - 1 - i
            if self.skip and mirror < i:
                h = h + hs[mirror]
            hs.append(h)
        return nn.Dense(flat.shape[-1], name="out")(h).reshape(x.shape)
