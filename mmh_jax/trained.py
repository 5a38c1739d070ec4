"""A trained model loaded from a checkpoint: what a user needs to run any estimator on it.

Usage (after ``mmh-jax train --out runs/lollipop``):

    model = mmh_jax.load("runs/lollipop")
    lid.flipd(model.score_fn, x, key, t0=0.05, sde=model.sde)
    xs = model.sample(jax.random.key(0), 64)

(exercised by ``tests/experiments/test_training.py``). A run of ``mmh-jax train --model flow|lidl`` loads as a
[`TrainedFlow`][mmh_jax.trained.TrainedFlow] instead: ``.log_prob``, ``.decoder``, ``.encoder``, ``.sample``
and ``.lidl`` (``tests/cli/test_flow_cli.py``). The run's ``kind`` (``"diffusion"`` or ``"flow"``, saved in
its config) decides which.

Both types are immutable JAX pytrees: the parameters (and a flow's ``deltas``) are the leaves; the
module, SDE, configuration and step are static. So a model is an ordinary argument of a jitted
function — ``jax.jit(lambda m, xs: jax.vmap(m.score_fn)(xs, ts))(model, xs)`` — and the compiled
program is reused for every model with the same static part.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from mmh_jax import _interrupt, adapters, lid, train, train_flow
from mmh_jax import sample as sampling
from mmh_jax.checkpoint import Checkpointer, CheckpointError, abstract_like
from mmh_jax.models import KINDS, make_model
from mmh_jax.sde import VPSDE

__all__ = ["TrainedFlow", "TrainedModel", "load", "make_batched_eps_apply"]


def make_batched_eps_apply(config: dict[str, Any]) -> tuple[Any, Callable]:
    """The Flax module of a run's config and its batched ε-apply.

    Args:
      config: a run's configuration as saved in its checkpoint (``mmh-jax train`` writes it): the
        keys read are ``"model"`` (a name of [`mmh_jax.models.MODELS`][mmh_jax.models.MODELS]),
        ``"model_kwargs"`` (optional) and ``"num_classes"`` (optional; None or 0: unconditional).

    Returns:
      ``(module, batched_eps_apply)``: the module from
      [`mmh_jax.models.make_model`][mmh_jax.models.make_model] and
      ``batched_eps_apply(params, x, t)`` — or ``batched_eps_apply(params, x, t, label)`` for a
      class-conditional config — on a batch: ``x`` ``(B, *event_shape)``, ``t`` ``(B,)``, ``label``
      ``(B,)`` int32 (``num_classes`` is the null class ∅); it returns ε̂ shaped like ``x``.

    Raises:
      ValueError: as [`mmh_jax.models.make_model`][mmh_jax.models.make_model] (an unknown model, or classes
        for a flow).

    The example works on shapes (``jax.eval_shape``): no parameters are initialised, nothing compiles.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> x = jax.ShapeDtypeStruct((4, 2), jnp.float32)
      >>> t = jax.ShapeDtypeStruct((4,), jnp.float32)
      >>> module, eps_apply = make_batched_eps_apply({"model": "mlp", "model_kwargs": {"hidden": 16}})
      >>> params = jax.eval_shape(module.init, jax.random.key(0), x, t)
      >>> jax.eval_shape(eps_apply, params, x, t).shape
      (4, 2)
      >>> config = {"model": "mlp", "num_classes": 10, "model_kwargs": {"hidden": 16}}
      >>> module, eps_apply = make_batched_eps_apply(config)
      >>> label = jax.ShapeDtypeStruct((4,), jnp.int32)
      >>> params = jax.eval_shape(module.init, jax.random.key(0), x, t, label)
      >>> jax.eval_shape(eps_apply, params, x, t, label).shape
      (4, 2)
    """
    model = make_model(config["model"], num_classes=config.get("num_classes"), **dict(config.get("model_kwargs", {})))
    if config.get("num_classes"):
        return model, lambda p, x, t, label: model.apply(p, x, t, label)
    return model, lambda p, x, t: model.apply(p, x, t)


def _config_json(config) -> str:
    """The configuration as a JSON string: the hashable form kept in a model's static part."""

    def default(value):
        if isinstance(value, (np.ndarray, np.generic)):
            return value.tolist()
        raise TypeError(f"config: a value of type {type(value).__name__} ({value!r}) is not JSON; "
                        "pass plain numbers, strings, lists and dicts, as a saved run's config holds.")

    return json.dumps(dict(config), default=default)


class _Frozen:
    """Immutable attributes, set once by ``_set`` (the pytree's unflatten bypasses ``__init__``)."""

    __slots__ = ()

    def _set(self, **fields) -> None:
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name, value):
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}: a {type(self).__name__} is "
                                              "immutable; build a new one instead.")

    def __delattr__(self, name):
        raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}: a {type(self).__name__} is immutable.")

    @property
    def config(self) -> dict:
        """The training configuration (a fresh dict, as saved)."""
        return json.loads(self.config_json)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.config["event_shape"])


@jax.tree_util.register_pytree_with_keys_class
class TrainedModel(_Frozen):
    """A trained ε-network with its SDE. ``params`` are the EMA parameters.

    Usually made by [`load`][mmh_jax.trained.load] from a run directory; the single-example functions it
    gives, ``eps_fn`` and ``score_fn`` (s(x, t) = −ε̂(x, t)/σ(t)), or ``eps_fn_for`` / ``score_fn_for`` of
    a class ``label``, are what the [`mmh_jax.lid`][mmh_jax.lid] estimators take; ``sample`` draws with
    DDIM, Euler–Maruyama or the probability-flow ODE (with classifier-free guidance for
    class-conditional networks).

    A JAX pytree whose only leaves are ``params``; pass the model itself to a jitted function.

    Args:
      module: the Flax module.
      params: EMA parameters (a pytree).
      sde: the [`VPSDE`][mmh_jax.sde.VPSDE] it was trained with.
      config: the training configuration (a dict, as saved); ``config["event_shape"]`` is the shape
        of one example, ``config.get("num_classes")`` the number of classes (None: unconditional).
      step: the training step of the checkpoint.

    Attributes:
      module, params, sde, step: as given.
      config_json: ``config`` as a JSON string (the hashable form; ``config`` gives a dict copy).
      kind: ``"diffusion"``.

    In the example random parameters stand in for trained ones (``module.init`` gives real ones).

    Examples:
      >>> import jax, jax.numpy as jnp, numpy as np
      >>> from mmh_jax.sde import VPSDE
      >>> config = {"model": "mlp", "model_kwargs": {"hidden": 16, "num_layers": 1}, "event_shape": [2]}
      >>> module, _ = make_batched_eps_apply(config)
      >>> shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 2)), jnp.zeros((1,)))
      >>> rng = np.random.default_rng(0)
      >>> params = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), shapes)
      >>> vp = VPSDE()
      >>> model = TrainedModel(module=module, params=params, sde=vp, config=config, step=0)
      >>> model.event_shape, model.num_classes, model.kind
      ((2,), None, 'diffusion')
      >>> x = jnp.array([0.3, -1.0])
      >>> eps = model.eps_fn(x, 0.5)  # single example: x (D,), t scalar
      >>> eps.shape
      (2,)
      >>> bool(jnp.allclose(model.score_fn(x, 0.5), -eps / vp.marginal_coefs(0.5)[1]))  # s = −ε̂/σ
      True
      >>> scores = jax.jit(lambda m, xs: jax.vmap(m.score_fn, in_axes=(0, None))(xs, 0.5))(model, jnp.stack([x, x]))
      >>> scores.shape
      (2, 2)
    """

    __slots__ = ("module", "params", "sde", "config_json", "step")
    kind: ClassVar[str] = "diffusion"

    def __init__(self, module, params, sde: VPSDE, config: dict, step: int):
        self._set(module=module, params=params, sde=sde, config_json=_config_json(config), step=int(step))

    def tree_flatten_with_keys(self):
        return ((jax.tree_util.GetAttrKey("params"), self.params),), (self.module, self.sde, self.config_json,
                                                                      self.step)

    @classmethod
    def tree_unflatten(cls, static, children):
        obj = object.__new__(cls)
        module, sde, config_json, step = static
        obj._set(module=module, params=children[0], sde=sde, config_json=config_json, step=step)
        return obj

    def __repr__(self) -> str:
        return f"TrainedModel(module={type(self.module).__name__}, sde={self.sde}, step={self.step})"

    @property
    def num_classes(self) -> int | None:
        return self.config.get("num_classes") or None

    def batched_eps_apply(self, params, x, t, label=None):
        """ε̂ on a batch: ``x`` ``(B, *event_shape)``, ``t`` ``(B,)`` and, for a class-conditional
        network, ``label`` ``(B,)`` int32 (required; ``num_classes`` is the null class ∅)."""
        if self.num_classes is None:
            if label is not None:
                raise ValueError(f"label must be None: this model is unconditional, got {label!r}.")
            return self.module.apply(params, x, t)
        if label is None:
            raise ValueError(f"label is required: this model is class-conditional ({self.num_classes} classes; "
                             f"{self.num_classes} is the null class).")
        return self.module.apply(params, x, t, label)

    def eps_fn_for(self, label=None, *, params=None) -> Callable:
        """Single-example ε̂(x, t) given a class ``label`` (None: unconditional / null class)."""
        params = self.params if params is None else params
        eps = adapters.single_example(lambda xs, ts, *labels: self.batched_eps_apply(params, xs, ts, *labels))
        if self.num_classes is None:
            if label is not None:
                raise ValueError(f"label must be None: this model is unconditional, got {label!r}.")
            return eps
        lab = jnp.asarray(self.num_classes if label is None else label, jnp.int32)
        return lambda x, t: eps(x, t, lab)

    def score_fn_for(self, label=None, *, params=None) -> Callable:
        """Single-example score s(x, t) = −ε̂(x, t)/σ(t) given a class ``label``."""
        return adapters.score_from_eps(self.eps_fn_for(label, params=params), self.sde)

    @property
    def eps_fn(self) -> Callable:
        """Single-example, unconditional ε̂(x, t)."""
        return self.eps_fn_for(None)

    @property
    def score_fn(self) -> Callable:
        """Single-example, unconditional score s(x, t) — pass it to any [`mmh_jax.lid`][mmh_jax.lid]
        estimator."""
        return self.score_fn_for(None)

    def sample(self, key, n: int, *, method: str = "ddim", num_steps: int = 100, label=None,
               guidance: float | None = None, batch_size: int = 512) -> np.ndarray:
        """``n`` samples (numpy, ``(n, *event_shape)``) with DDIM (default), Euler–Maruyama or the PF-ODE.

        ``label``: None (unconditional), one class for all, or ``(n,)`` classes. ``guidance`` w
        applies classifier-free guidance ε_∅ + w(ε_c − ε_∅) to conditional samples.
        """
        if method not in sampling.SAMPLERS:
            raise ValueError(f"method must be one of {sampling.SAMPLERS}, got {method!r}.")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}.")
        conditional = label is not None
        labels = np.broadcast_to(np.asarray(-1 if label is None else label, np.int32), (n,))
        out = []
        for start in range(0, n, batch_size):
            _interrupt.check()  # between batches: a safe point to stop after a signal (CLI only)
            m = min(batch_size, n - start)
            keys = jax.random.split(jax.random.fold_in(key, start), m)
            out.append(np.asarray(_sample_batch(self, keys, jnp.asarray(labels[start:start + m]), method=method,
                                                num_steps=num_steps, guidance=guidance, conditional=conditional)))
        return np.concatenate(out)


@functools.partial(jax.jit, static_argnames=("method", "num_steps", "guidance", "conditional"))
def _sample_batch(model: TrainedModel, keys, labels, *, method: str, num_steps: int, guidance,
                  conditional: bool):
    """Samples of ``model`` for a batch of keys and labels (jit caches one program per static setting)."""

    def one(key, label):
        if conditional:
            eps = model.eps_fn_for(label)
            if guidance is not None:
                eps = sampling.guided_eps_fn(eps, model.eps_fn_for(None), guidance)
        else:
            eps = model.eps_fn_for(None)
        shape, sde = model.event_shape, model.sde
        if method == "ddim":
            return sampling.ddim(eps, key, shape, sde=sde, num_steps=num_steps)
        score = adapters.score_from_eps(eps, sde)
        if method == "euler_maruyama":
            return sampling.euler_maruyama(score, key, shape, sde=sde, num_steps=num_steps)
        return sampling.probability_flow(score, sde.prior_sample(key, shape), sde=sde, num_steps=num_steps)

    return jax.vmap(one)(keys, labels)


@jax.tree_util.register_pytree_with_keys_class
class TrainedFlow(_Frozen):
    """Normalizing flow(s) trained by ``mmh-jax train --model flow|lidl``; ``params`` are EMA parameters.

    Member m (of ``num_members``; one for ``flow``) was trained on the data perturbed by
    ``deltas[m]``·N(0, I). ``params`` are stacked on a leading member axis.

    Usually made by [`load`][mmh_jax.trained.load]. Single-example views of a member: ``log_prob`` (log
    p_δ(x)), ``decoder`` (latent → data, for the Jacobian-spectrum estimators), ``encoder``; ``sample``
    draws from a member and ``lidl`` estimates LID from all members (needs M ≥ 2).

    A JAX pytree whose leaves are ``params`` and ``deltas``.

    Args:
      module: the [`mmh_jax.models.Flow`][mmh_jax.models.Flow].
      params: stacked EMA parameters (leading axis M).
      deltas: ``(M,)`` float32 noise scales, in data units.
      config: the training configuration (a dict, as saved); ``config["event_shape"]`` is ``[D]``.
      step: the training step of the checkpoint.

    Attributes:
      module, params, deltas, step: as given.
      config_json: ``config`` as a JSON string (the hashable form; ``config`` gives a dict copy).
      kind: ``"flow"``.

    Raises:
      ValueError: (from the methods) ``member`` not an int in [0, M); ``n < 1`` samples.

    In the example two members with all-zero parameters (the identity flow) stand in for trained
    ones; training stacks ``flow.init`` of M keys under ``jax.vmap`` the same way.

    Examples:
      >>> import math
      >>> import jax, jax.numpy as jnp, numpy as np
      >>> from mmh_jax.models import Flow
      >>> flow = Flow(dim=2, num_coupling=2, hidden=16)
      >>> shapes = jax.eval_shape(lambda k: flow.init(k, jnp.zeros(2), method=Flow.log_prob), jax.random.key(0))
      >>> params = jax.tree.map(lambda s: np.zeros((2, *s.shape), s.dtype), shapes)  # leading axis M = 2
      >>> model = TrainedFlow(module=flow, params=params, deltas=np.array([0.01, 0.1], np.float32),
      ...                     config={"event_shape": [2]}, step=0)
      >>> model.num_members, model.event_shape, model.kind
      (2, (2,), 'flow')
      >>> log_prob = jax.jit(model.log_prob, static_argnames="member")
      >>> round(float(log_prob(jnp.zeros(2), member=1)), 4), round(-math.log(2 * math.pi), 4)  # log N(0; 0, I₂)
      (-1.8379, -1.8379)
      >>> model.member_params(2)
      Traceback (most recent call last):
      ...
      ValueError: member must be an int in [0, 2), got 2.
    """

    __slots__ = ("module", "params", "deltas", "config_json", "step")
    kind: ClassVar[str] = "flow"

    def __init__(self, module, params, deltas, config: dict, step: int):
        self._set(module=module, params=params, deltas=deltas, config_json=_config_json(config), step=int(step))

    def tree_flatten_with_keys(self):
        children = ((jax.tree_util.GetAttrKey("params"), self.params),
                    (jax.tree_util.GetAttrKey("deltas"), self.deltas))
        return children, (self.module, self.config_json, self.step)

    @classmethod
    def tree_unflatten(cls, static, children):
        obj = object.__new__(cls)
        module, config_json, step = static
        obj._set(module=module, params=children[0], deltas=children[1], config_json=config_json, step=step)
        return obj

    def __repr__(self) -> str:
        return f"TrainedFlow(module={type(self.module).__name__}, num_members={self.num_members}, step={self.step})"

    @property
    def num_members(self) -> int:
        return int(self.deltas.shape[0])

    def member_params(self, member: int = 0):
        """Parameters of one member (default the first: the smallest δ of a default ``lidl`` run)."""
        if not isinstance(member, (int, np.integer)) or not 0 <= member < self.num_members:
            raise ValueError(f"member must be an int in [0, {self.num_members}), got {member!r}.")
        return jax.tree_util.tree_map(lambda a: a[member], self.params)

    def log_prob_fn(self, params, x):
        """``log p(x)`` of one member's ``params``, single example — what
        [`mmh_jax.lid.lidl`][mmh_jax.lid.lidl] takes."""
        return self.module.apply(params, x, method=self.module.log_prob)

    def decoder(self, member: int = 0, *, params=None) -> Callable:
        """The decoder g(z) (latent → data) of a member, single example (``params`` override the member's)."""
        p = self.member_params(member) if params is None else params
        return lambda z: self.module.apply(p, z, method=self.module.forward)

    def encoder(self, member: int = 0, *, params=None) -> Callable:
        """x ↦ z = g⁻¹(x) of a member, single example."""
        p = self.member_params(member) if params is None else params
        return lambda x: self.module.apply(p, x, method=self.module.inverse)[0]

    def log_prob(self, x, member: int = 0):
        """log p_δ(x) of a member, for one point ``(D,)`` or a batch ``(..., D)``."""
        return self.log_prob_fn(self.member_params(member), jnp.asarray(x, jnp.float32))

    def lidl(self, x):
        """LIDL of one point ``(D,)`` from all members ([`mmh_jax.lid.lidl`][mmh_jax.lid.lidl]; needs M ≥
        2)."""
        return lid.lidl(self.log_prob_fn, self.params, x, deltas=jnp.asarray(self.deltas))

    def sample(self, key, n: int, *, member: int = 0) -> np.ndarray:
        """``n`` samples (numpy, ``(n, D)``) of a member."""
        if not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}.")
        return np.asarray(self.module.apply(self.member_params(member), key, int(n), method=self.module.sample))


def _load_flow(ckpt, meta, config: dict) -> TrainedFlow:
    module = train_flow.make_flow(config)
    deltas = np.asarray(config["deltas"], np.float32)
    optimizer = train.make_optimizer(total_steps=max(int(config["steps"]), 1))
    abstract = jax.eval_shape(lambda: train.init_ensemble_state(
        train_flow.init_params(module, jax.random.key(0), deltas.shape[0]), optimizer))
    state = ckpt.restore(abstract_like(abstract), meta["step"])
    return TrainedFlow(module=module, params=state.ema_params, deltas=deltas, config=config, step=int(meta["step"]))


def load(checkpoint_dir: str, *, step: int | None = None) -> TrainedModel | TrainedFlow:
    """Load a run directory written by ``mmh-jax train`` (or its ``checkpoints/`` folder).

    Diffusion models load as [`TrainedModel`][mmh_jax.trained.TrainedModel], ``--model flow|lidl`` runs as
    [`TrainedFlow`][mmh_jax.trained.TrainedFlow].
    The parameters are the EMA parameters; the network is rebuilt from the saved configuration and
    restored into shapes from ``jax.eval_shape`` (no initialiser runs). Typical use, after
    ``mmh-jax train --out runs/lollipop`` (or ``mmh_jax.experiments.training.train_or_resume``):

        model = mmh_jax.load("runs/lollipop")
        lid.flipd(model.score_fn, x, key, t0=0.05, sde=model.sde)

    Args:
      checkpoint_dir: the run directory (holding ``checkpoints/``) or the checkpoint folder itself.
      step: the checkpoint to load (None: the latest).

    Returns:
      a [`TrainedModel`][mmh_jax.trained.TrainedModel] or, for a flow / LIDL run, a
      [`TrainedFlow`][mmh_jax.trained.TrainedFlow].

    Raises:
      FileNotFoundError: no such directory.
      mmh_jax.checkpoint.DamagedCheckpointError: the checkpoint cannot be read back (truncated,
        overwritten or missing files) or its parameters hold NaN or inf; the one-line message names
        the intact steps to pass as ``step`` (``--step`` on the command line).
      mmh_jax.checkpoint.CheckpointError: no checkpoint there (or none at ``step``), or one of
        another model.

    The example writes a checkpoint in the format ``mmh-jax train`` saves, with random parameters
    and the entries of the configuration that ``load`` reads (training even a tiny model would
    compile for seconds), and loads it back.

    Examples:
      >>> import os, tempfile
      >>> import jax, jax.numpy as jnp, numpy as np
      >>> from mmh_jax import train
      >>> from mmh_jax.checkpoint import Checkpointer
      >>> config = {"model": "mlp", "model_kwargs": {"hidden": 16, "num_layers": 1}, "event_shape": [2], "steps": 1}
      >>> module, _ = make_batched_eps_apply(config)
      >>> shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 2)), jnp.zeros((1,)))
      >>> rng = np.random.default_rng(0)
      >>> params = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), shapes)
      >>> state = train.init_train_state(params, train.make_optimizer(total_steps=1))
      >>> with tempfile.TemporaryDirectory() as run:
      ...     ckpt = Checkpointer(os.path.join(run, "checkpoints"))
      ...     ckpt.save(7, state, config)
      ...     ckpt.close()
      ...     model = load(run)
      >>> type(model).__name__, model.step, model.event_shape
      ('TrainedModel', 7, (2,))
      >>> model.config["kind"]  # a checkpoint saved without its kind: inferred from the config
      'diffusion'
      >>> all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(model.params), jax.tree.leaves(params)))
      True
      >>> load("no/such/run")
      Traceback (most recent call last):
      ...
      FileNotFoundError: checkpoint_dir: no such directory 'no/such/run'.
    """
    if not os.path.isdir(checkpoint_dir):
        raise FileNotFoundError(f"checkpoint_dir: no such directory {checkpoint_dir!r}.")
    ckpt_dir = os.path.join(checkpoint_dir, "checkpoints")
    if not os.path.isdir(ckpt_dir):
        ckpt_dir = checkpoint_dir
    ckpt = Checkpointer(ckpt_dir, read_only=True)
    try:
        return _load(ckpt, step)
    finally:
        ckpt.close()


def _load(ckpt, step: int | None) -> TrainedModel | TrainedFlow:
    """[`load`][mmh_jax.trained.load] from an open (read-only)
    [`Checkpointer`][mmh_jax.checkpoint.Checkpointer]."""
    # Both raise DamagedCheckpointError (one line, the intact steps named) for a damaged step, and
    # restore also for parameters that hold NaN or inf (a checkpoint written before save refused them).
    meta = ckpt.read_meta(step)
    config = dict(meta["config"])
    if "kind" not in config:  # saved before runs recorded their kind: only flow runs hold flow_stats
        config["kind"] = "flow" if "flow_stats" in config else "diffusion"
    if config["kind"] not in KINDS:
        raise CheckpointError(f"checkpoint step {meta['step']} in {ckpt.directory}: its config has kind "
                              f"{config['kind']!r}, not one of {KINDS}; it was not written by mmh-jax train.")
    if config["kind"] == "flow":
        return _load_flow(ckpt, meta, config)
    module, _ = make_batched_eps_apply(config)
    event_shape = tuple(config["event_shape"])
    init_args = [jnp.zeros((1, *event_shape)), jnp.zeros((1,))]
    if config.get("num_classes"):
        init_args.append(jnp.zeros((1,), jnp.int32))
    optimizer = train.make_optimizer(total_steps=max(int(config["steps"]), 1))
    # Shapes only (what orbax restores into): no initializer runs.
    abstract = abstract_like(jax.eval_shape(
        lambda: train.init_train_state(module.init(jax.random.key(0), *init_args), optimizer)))
    state = ckpt.restore(abstract, meta["step"])
    sde = VPSDE(**config.get("sde", {}))
    return TrainedModel(module=module, params=state.ema_params, sde=sde, config=config, step=int(meta["step"]))
