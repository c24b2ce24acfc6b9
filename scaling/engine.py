"""The single-process fitting loop: jitted, vmapped, optionally sharded over local devices."""

from collections.abc import Callable
from dataclasses import dataclass, field

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from model import ExposureModel
from scaling.objective import loss_terms
from scaling.optimisers import OptimiserSpec, build_optimiser
from scaling.partition import Batch
from scaling.precondition import fisher_diagonal


def renormalise_images(params: dict) -> dict:
    """Shift each log-image so that its exponential sums to 1 (the loss is unchanged)."""
    if "log_image" not in params["epoch"]:
        return params
    log_image = params["epoch"]["log_image"]
    lse = jax.scipy.special.logsumexp(log_image, axis=(-2, -1), keepdims=True)
    return {**params, "epoch": {**params["epoch"], "log_image": log_image - lse}}


@dataclass
class FitSettings:
    """Settings of a fit.

    Attributes:
        optimisers: parameter name → OptimiserSpec (names not given are frozen).
        reg_weights: regulariser name → weight, applied once per epoch image.
        diagonal: use the diagonal-only slope covariance in the likelihood.
        grad_hook: optional pure function (grads, params) → grads, after preconditioning.
        param_hook: optional pure function params → params, after each update and
            after image renormalisation.
    """

    optimisers: dict[str, OptimiserSpec]
    reg_weights: dict[str, float] = field(default_factory=dict)
    diagonal: bool = False
    grad_hook: Callable | None = None
    param_hook: Callable | None = None


class Fitter(eqx.Module):
    """A compiled step of a campaign fit: loss, gradient, preconditioning, update."""

    model: ExposureModel
    optimiser: optax.GradientTransformation = eqx.field(static=True)
    settings: FitSettings = eqx.field(static=True)
    scale: dict

    @eqx.filter_jit
    def step(self, params: dict, opt_state, batches: list[Batch]):
        """One full-batch step → (params, opt_state, loss terms at the old params)."""

        def total(p):
            t = loss_terms(
                self.model, p, batches, self.settings.reg_weights, self.settings.diagonal
            )
            return t["total"], t

        (_, terms), grads = jax.value_and_grad(total, has_aux=True)(params)
        grads = jax.tree.map(lambda g, s: g / s, grads, self.scale)
        if self.settings.grad_hook is not None:
            grads = self.settings.grad_hook(grads, params)
        updates, opt_state = self.optimiser.update(grads, opt_state, params)
        params = renormalise_images(optax.apply_updates(params, updates))
        if self.settings.param_hook is not None:
            params = self.settings.param_hook(params)
        terms = {**terms, "grad_norm": optax.tree.norm(grads)}
        return params, opt_state, terms


def make_fitter(model: ExposureModel, params: dict, batches: list[Batch], settings: FitSettings):
    """Build the optimiser and the Fisher scaling (computed once, at `params`)."""
    names = [n for n, s in settings.optimisers.items() if s.precondition]
    scale = fisher_diagonal(model, params, batches, names) if names else None
    if scale is None:
        scale = jax.tree.map(jnp.ones_like, params)
    optimiser = build_optimiser(params, settings.optimisers)
    return Fitter(model, optimiser, settings, scale)


def shard_batches(batches: list[Batch], devices=None) -> list[Batch]:
    """Place each batch's exposure axis across local devices (padding with zero weight)."""
    devices = jax.local_devices() if devices is None else devices
    n = len(devices)
    mesh = Mesh(np.asarray(devices), ("exposures",))
    out = []
    for b in batches:
        pad = (-b.size) % n
        if pad:
            b = jax.tree.map(lambda x, k=pad: jnp.concatenate([x, jnp.repeat(x[:1], k, axis=0)]), b)
            b = eqx.tree_at(lambda t: t.weight, b, b.weight.at[-pad:].set(0.0))
        sharding = NamedSharding(mesh, PartitionSpec("exposures"))
        out.append(jax.device_put(b, sharding))
    return out


@dataclass
class FitResult:
    """Final parameters, optimiser state and the history of every loss term per step."""

    params: dict
    opt_state: object
    history: dict[str, np.ndarray]
    step: int


def run(
    fitter: Fitter,
    params: dict,
    batches: list[Batch],
    steps: int,
    opt_state=None,
    start_step: int = 0,
    progress: bool = True,
    callback: Callable | None = None,
) -> FitResult:
    """Run `steps` steps from `start_step`; `callback(step, params, opt_state, terms)` each step."""
    params = renormalise_images(params)
    opt_state = fitter.optimiser.init(params) if opt_state is None else opt_state
    history: dict[str, list[float]] = {}
    bar = tqdm(range(start_step, start_step + steps), disable=not progress, desc="fit")
    for step in bar:
        params, opt_state, terms = fitter.step(params, opt_state, batches)
        terms = {k: float(v) for k, v in terms.items()}
        for k, v in terms.items():
            history.setdefault(k, []).append(v)
        bar.set_postfix(loss=f"{terms['total']:.6g}")
        if callback is not None:
            callback(step + 1, params, opt_state, terms)
    hist = {k: np.asarray(v) for k, v in history.items()}
    return FitResult(params, opt_state, hist, start_step + steps)
