"""Configuration of ``mmh-jax run``: one frozen dataclass per experiment, and the presets.

``quick`` (~40 s on 2 CPU cores; tiny sizes, for tests), ``default`` (~11 minutes on 2 CPU
cores: the paper's findings on embedded data) and ``full`` (larger models and samples, for a GPU).
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


@dataclasses.dataclass(frozen=True)
class ImagesConfig:
    """Digits with duplicates: the model shared by ``images``, ``conditional`` and ``mitigation``.

    ``n_train`` digits (chosen at random), of which ``n_duplicated`` are repeated ``copies`` times,
    train a class-conditional U-Net with classifier-free guidance (10% label dropout), so the same
    network gives the unconditional ε(x, t, ∅) (``images``) and the conditional ε(x, t, c)
    (``conditional``). The digits not used for training are the held-out set of sample quality.
    ``cfg_guidance`` is the guidance scale w of ``conditional``'s samples, ε_∅ + w(ε_c − ε_∅), used
    when ``guidance_scale`` is 0 (a positive ``guidance_scale`` overrides it).
    ``batch_size`` 64 keeps the default run within 15 minutes on 2 CPU cores (batch 128 took 466 s of
    a 1009 s run and gave 13 memorized samples of 500 instead of 3; ``full`` uses 128).
    ``curve_points`` 64 and ``MitigationConfig.embedding_steps`` 6 (``full``: 512 and 10) save only
    ~6 s of stage time over 128 and 10 (the curves use 4 Hutchinson probes: ~1/9 of ``images``' LID
    time); clean-clone README runs took 15 min 14 s with 128 and 10, and 14 min 38 s with 64 and 6,
    most of the difference being the machine's speed moving between runs. Compiling took about a
    third of those runs (310 of 815 s); :func:`mmh_jax._compile.compiler_options` and one network
    call for both classes in ``conditional`` brought it to 173 s and the run to 626 s, same findings.
    ``normal_bundle_samples`` is K of :func:`mmh_jax.lid.normal_bundle` (2·D on digits: enough to
    see a normal space of any rank, half the cost of the estimator's default 4·D).
    ``model`` is ``unet`` (``channels``, ``channel_mults``, ``attention``) or, for the quick preset
    whose point is to exercise the pipeline in seconds, an image-shaped class-conditional ``mlp``
    (``hidden``, ``num_layers``): both compile and run the same pipeline code.
    """

    n_train: int = 300
    n_duplicated: int = 10
    copies: int = 20
    steps: int = 3000
    model: str = "unet"
    hidden: int = 256
    num_layers: int = 3
    channels: int = 16
    channel_mults: tuple[int, ...] = (1, 2)
    attention: bool = True
    batch_size: int = 64
    learning_rate: float = 5e-4
    n_samples: int = 500
    sample_steps: int = 50
    guidance_scale: float = 0.0
    cfg_guidance: float = 2.0
    t0: float = 0.05
    t0_grid: tuple[float, float, int] = (1e-3, 1.0, 16)
    curve_points: int = 64
    normal_bundle_t: float = 0.01
    normal_bundle_samples: int = 128
    calibration_n: int = 50
    threshold: float = 1.0 / 3.0
    model_free_k: int = 20
    batch: int = 64


@dataclasses.dataclass(frozen=True)
class MitigationConfig:
    """Steering towards higher LID_θ: λ·∇ₓFLIPD added to the score, and FLIPD-optimised class embeddings.

    ``lambdas`` are relative: λ_raw = λ·u, u = median ‖s‖/‖∇ₓFLIPD‖ over unguided sampling states
    (λ = 1: a guidance term as large as the score). ``t0`` floors the time at which FLIPD is read
    (guidance) and is the readout time of the samples' FLIPD. ``num_probes`` Hutchinson probes for
    the guidance, its FLIPD readout and the embedding objective. ``cfg_guidance``
    is the CFG scale w of the conditional samples; ``embedding_lr`` is the step length of the
    normalised gradient ascent relative to the norm of the class's embedding row.
    """

    lambdas: tuple[float, ...] = (0.0, 0.05, 0.15, 0.4)
    n_samples: int = 128
    sample_steps: int = 32
    t0: float = 0.05
    num_probes: int = 1
    embedding_steps: int = 6
    embedding_lr: float = 0.1
    late_t: float = 0.2
    cfg_guidance: float = 2.0
    quality_k: int = 3


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The whole run: which experiments, and each one's settings.

    ``checkpoint`` and ``data`` (together) run the detection part (``images``) on a user's own model
    (an ``mmh-jax train`` run directory) and its training data instead of the embedded digits;
    ``step`` picks the checkpoint step of that run (None: the newest).

    ``fast_compile`` compiles every program with XLA's optimisations mostly off (JAX's
    ``jax_disable_most_optimizations``): for runs whose programs are tiny, where optimising them
    costs more time than running them unoptimised (the ``quick`` preset: 61 s → 41 s wall on 2
    CPU cores). Results then differ from an optimised build in the last bits only.

    ``preset`` names the preset the sizes came from (:func:`preset` sets it; ``quick`` marks a smoke
    run, see :data:`SMOKE_PRESETS`); it is recorded in ``metrics.json`` and the report.
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

#: Per preset: overrides of each experiment's config, and under "run" those of :class:`RunConfig`.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "quick": {
        "run": {"fast_compile": True},
        "toy": {"n_train": 60, "steps": 200, "hidden": 64, "num_layers": 2, "n_samples": 128, "sample_steps": 30,
                "t0_grid": (1e-3, 1.0, 8)},
        "images": {"n_train": 60, "n_duplicated": 4, "copies": 5, "steps": 40, "model": "mlp", "hidden": 64,
                   "num_layers": 2, "batch_size": 32,
                   "n_samples": 32, "sample_steps": 10, "t0_grid": (1e-3, 1.0, 6), "curve_points": 8,
                   "calibration_n": 10, "model_free_k": 10, "batch": 32},
        "mitigation": {"lambdas": (0.0, 0.2), "n_samples": 16, "sample_steps": 8, "embedding_steps": 2},
    },
    "default": {},
    "full": {
        "toy": {"n_train": 200, "steps": 10000, "n_samples": 5000},
        "images": {"n_train": 1000, "n_duplicated": 30, "steps": 20000, "channels": 32, "batch_size": 128,
                   "n_samples": 2000, "sample_steps": 100, "t0_grid": (1e-3, 1.0, 24), "curve_points": 512},
        "mitigation": {"lambdas": (0.0, 0.025, 0.05, 0.1, 0.2, 0.4), "n_samples": 1000, "sample_steps": 100,
                       "embedding_steps": 10},
    },
}


def preset(name: str, *, experiments=None, seed: int | None = None, checkpoint: str | None = None,
           data: str | None = None, step: int | None = None) -> RunConfig:
    """The named preset; ``experiments`` (names from :data:`EXPERIMENTS`) selects a subset."""
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
