"""Configuration of ``mmh-jax run``: one frozen dataclass per experiment, and the presets.

``quick`` (tiny sizes, for tests), ``default`` (the paper's findings on embedded data, on a
laptop's CPU) and ``full`` (larger models and samples, for a GPU); their run times are in
docs/performance.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["EXPERIMENTS", "ImagesConfig", "MitigationConfig", "PRESETS", "RunConfig", "SMOKE_PRESETS", "ToyConfig",
           "preset"]

#: The experiments of ``mmh-jax run``, in the order they run.
EXPERIMENTS = ("toy", "images", "conditional", "mitigation")


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    """The MMH toy: ``von_mises_point_mass`` (circle LID 1 + point mass LID 0) in R².

    Few training points, so the sparse side of the circle holds isolated points that the model
    overfits (OD-Mem), while the point mass is a real zero-dimensional piece of the data (DD-Mem).
    ``time_sampling`` is how the training draws diffusion times
    ([`mmh_jax.train.sample_times`][mmh_jax.train.sample_times]):
    ``log-sigma`` (half the steps at σ < 0.1) gave 25–105 OD-Mem samples of 1000 in 10000 steps on
    seeds 0–3, ``uniform`` none even in 15000 steps (``docs/experiments.md``, "Toy: what makes OD-Mem
    appear"); the steps, and so the training time, are those of before.
    A circle training point is isolated when its nearest other training point lies farther than
    ``isolation`` · σ(t0)/α(t0) (see `mmh_jax.experiments.pipeline.toy`).
    """

    n_train: int = 60
    steps: int = 10000
    hidden: int = 512
    num_layers: int = 4
    batch_size: int = 64
    learning_rate: float = 1e-3
    n_samples: int = 1000
    sample_steps: int = 200
    t0: float = 0.02
    t0_grid: tuple[float, float, int] = (1e-3, 1.0, 24)
    normal_bundle_t: float = 0.01
    gap: float = 0.5
    small: float = 0.5
    time_sampling: str = "log-sigma"
    isolation: float = 2.0


@dataclasses.dataclass(frozen=True)
class ImagesConfig:
    """Digits with duplicates and per-image labels: the model shared by ``images``, ``conditional``
    and ``mitigation``.

    ``n_train`` distinct digits (chosen at random) train a class-conditional U-Net with
    classifier-free guidance (10% label dropout, so the null class gives the unconditional model).
    ``n_duplicated`` of them are stored ``copies`` times (half of the copies with a label of their
    own — 10, 11, …: a label that pins down one image, the digits analogue of a caption naming one
    picture — half with their digit); ``own_label_unique`` images are stored once with a label of
    their own and drawn ``copies`` times as often in training (the planted OD-Mem cases: see
    `common.digits_setup`); the rest keep their digit class. The digits
    not trained on are held out: half set the memorization threshold (held-out false-positive rate
    ``label_fpr``, calibrated ℓ2 with ``calibration_n`` neighbours and Carlini et al.'s α = 0.5), half
    measure the rate it gives; ``heldout_lid`` of them put LID* (lPCA, ``model_free_k`` neighbours
    among the distinct training images) on FLIPD's scale. ``threshold`` is used instead when there is
    no held-out data (a user's own model).

    Samples: ``n_unconditional`` from the null class; ``n_samples`` guided by the digit classes
    (CFG scale ``cfg_guidance``, or ``guidance_scale`` when positive) and ``per_image_samples`` per own
    label. ``curve_points`` per-image-label samples (half memorized) get FLIPD curves over ``t0_grid``
    (exact trace) and the normal bundle (K = ``normal_bundle_samples``). ``model`` is ``unet`` or, for the quick preset, an
    image-shaped class-conditional ``mlp``. Sizes and their costs: docs/experiments.md.
    """

    n_train: int = 300
    n_duplicated: int = 15
    copies: int = 20
    own_label_unique: int = 10
    steps: int = 3000
    time_sampling: str = "uniform"
    model: str = "unet"
    hidden: int = 256
    num_layers: int = 3
    channels: int = 16
    channel_mults: tuple[int, ...] = (1, 2)
    attention: bool = True
    batch_size: int = 64
    learning_rate: float = 5e-4
    n_unconditional: int = 500
    n_samples: int = 400
    per_image_samples: int = 8
    sample_steps: int = 50
    guidance_scale: float = 0.0
    cfg_guidance: float = 2.0
    t0: float = 0.05
    t0_grid: tuple[float, float, int] = (1e-3, 1.0, 12)
    curve_points: int = 40
    normal_bundle_t: float = 0.01
    normal_bundle_samples: int = 128
    calibration_n: int = 50
    label_fpr: float = 0.005
    threshold: float = 1.0 / 3.0
    heldout_lid: int = 300
    model_free_k: int = 50
    batch: int = 64


@dataclasses.dataclass(frozen=True)
class MitigationConfig:
    """Steering towards higher LID_θ, judged with quality: λ·∇ₓFLIPD(x|c) added to the CFG score, and
    FLIPD-optimised label embeddings (see `mitigation`).

    ``labels`` picks the guided samples' labels (``duplicated``: the per-image labels of the
    duplicated training images, where memorization is frequent; ``own``, ``digit``, ``null``), cycled
    over ``n_samples`` samples per λ (``embedding_samples`` for the embedding optimisation).
    ``lambdas`` are relative, starting at 0 and increasing: λ_raw = λ·u, u = median ‖s‖/‖∇ₓFLIPD‖ over
    unguided sampling states (λ = 1: a guidance term as large as the score). ``t0`` floors the time
    at which FLIPD is read (guidance) and is the readout time of the samples' FLIPD(x|c)
    (``readout_probes`` Hutchinson probes). ``num_probes`` Hutchinson probes for the guidance and
    the embedding objective. ``cfg_guidance`` is the CFG scale w; ``embedding_lr`` the step length
    of the normalised gradient ascent relative to the norm of the label's embedding row. Quality
    (kNN precision/recall with ``quality_k``, energy distance) is *within* when each measure is
    within ``quality_tolerance`` of λ = 0.
    """

    labels: str = "duplicated"
    lambdas: tuple[float, ...] = (0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1)
    n_samples: int = 80
    embedding_samples: int = 80
    sample_steps: int = 32
    t0: float = 0.05
    num_probes: int = 1
    readout_probes: int = 4
    embedding_steps: int = 6
    embedding_lr: float = 0.1
    late_t: float = 0.2
    cfg_guidance: float = 2.0
    quality_k: int = 3
    quality_tolerance: float = 0.1


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The whole run: which experiments, and each one's settings.

    ``checkpoint`` and ``data`` (together) run the detection part (``images``) on a user's own model
    (an ``mmh-jax train`` run directory) and its training data instead of the embedded digits;
    ``step`` picks the checkpoint step of that run (None: the newest).

    ``fast_compile`` compiles every program with XLA's optimisations mostly off (JAX's
    ``jax_disable_most_optimizations``): for runs whose programs are tiny, where optimising them
    costs more time than running them unoptimised (the ``quick`` preset). Results then differ from
    an optimised build in the last bits only.

    ``preset`` names the preset the sizes came from (`preset` sets it; ``quick`` marks a smoke
    run, see `SMOKE_PRESETS`); it is recorded in ``metrics.json`` and the report.
    """

    experiments: tuple[str, ...] = EXPERIMENTS
    seed: int = 0
    checkpoint: str | None = None
    data: str | None = None
    toy: ToyConfig = ToyConfig()
    images: ImagesConfig = ImagesConfig()
    mitigation: MitigationConfig = MitigationConfig()
    fast_compile: bool = False
    preset: str = "default"
    step: int | None = None


#: Presets whose sizes only exercise the code: their numbers are not findings (the report says so).
SMOKE_PRESETS = ("quick",)

#: Per preset: overrides of each experiment's config, and under "run" those of `RunConfig`.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "quick": {
        "run": {"fast_compile": True},
        "toy": {"n_train": 60, "steps": 200, "hidden": 64, "num_layers": 2, "n_samples": 128, "sample_steps": 30,
                "t0_grid": (1e-3, 1.0, 8)},
        "images": {"n_train": 60, "n_duplicated": 4, "copies": 5, "own_label_unique": 2, "steps": 40,
                   "model": "mlp", "hidden": 64, "num_layers": 2, "batch_size": 32, "n_unconditional": 32,
                   "n_samples": 32, "per_image_samples": 2, "sample_steps": 10, "t0_grid": (1e-3, 1.0, 6),
                   "curve_points": 8, "calibration_n": 10, "heldout_lid": 24, "model_free_k": 10, "batch": 32},
        "mitigation": {"lambdas": (0.0, 0.2), "n_samples": 16, "embedding_samples": 16, "sample_steps": 8,
                       "embedding_steps": 2, "readout_probes": 2},
    },
    "default": {},
    "full": {
        "toy": {"n_train": 200, "steps": 10000, "n_samples": 5000},
        "images": {"n_train": 1000, "n_duplicated": 30, "own_label_unique": 30, "steps": 20000, "channels": 32,
                   "batch_size": 128, "n_unconditional": 2000, "n_samples": 2000, "per_image_samples": 16,
                   "sample_steps": 100, "t0_grid": (1e-3, 1.0, 24), "curve_points": 256, "heldout_lid": 700},
        "mitigation": {"lambdas": (0.0, 0.005, 0.01, 0.02, 0.035, 0.05, 0.1, 0.2, 0.4), "n_samples": 600,
                       "embedding_samples": 600, "sample_steps": 100, "embedding_steps": 10},
    },
}


def preset(name: str, *, experiments=None, seed: int | None = None, checkpoint: str | None = None,
           data: str | None = None, step: int | None = None) -> RunConfig:
    """The named preset; ``experiments`` (names from `EXPERIMENTS`) selects a subset."""
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {name!r}.")
    p = PRESETS[name]
    fields: dict[str, Any] = {
        "toy": ToyConfig(**p.get("toy", {})),
        "images": ImagesConfig(**p.get("images", {})),
        "mitigation": MitigationConfig(**p.get("mitigation", {})),
        **p.get("run", {}),
        "preset": name,
    }
    if experiments:
        bad = [e for e in experiments if e not in EXPERIMENTS]
        if bad:
            raise ValueError(f"experiments must be among {EXPERIMENTS}, got {bad}.")
        fields["experiments"] = tuple(e for e in EXPERIMENTS if e in experiments)
    if seed is not None:
        fields["seed"] = seed
    if (checkpoint is None) != (data is None):
        raise ValueError("checkpoint and data go together: pass both --checkpoint DIR and --data PATH "
                         f"(got checkpoint={checkpoint!r}, data={data!r}).")
    if step is not None and checkpoint is None:
        raise ValueError(f"--step {step} picks a checkpoint of --checkpoint DIR; pass --checkpoint too, or drop --step.")
    if checkpoint is not None:
        fields.update(checkpoint=checkpoint, data=data, step=step)
        allowed = ("images",)
        chosen = fields.get("experiments", allowed)
        if any(e not in allowed for e in chosen):
            raise ValueError(f"with --checkpoint only the detection experiment 'images' runs, got {list(chosen)}.")
        fields["experiments"] = allowed
    return RunConfig(**fields)
