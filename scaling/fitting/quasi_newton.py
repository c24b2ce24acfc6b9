"""Second stage: L-BFGS (optax) on a chosen subset of the parameters.

The seed notebooks finish unconverged low-dimensional parameters (aberrations, fluxes)
with a quasi-Newton method once the first-order stage has formed the images. Here the
chosen parameters move together under `optax.lbfgs` with its zoom line search (each
iteration decreases the loss or stays); every other parameter is held fixed. Gradient
hooks do not apply: the line search needs the true gradient of the loss it evaluates.

Given a `scale` (the fit's Fisher diagonal, `Fitter.scale`: F_ii for preconditioned
parameters, 1 elsewhere), L-BFGS works in the coordinates θ_i √F_ii, in which every
preconditioned parameter has unit curvature: arcseconds, dex and nanometres then share
one step length, and L-BFGS's scalar first Hessian guess fits them all. The loss and its
minimum are the same; aberrations are projected back onto their canonical coefficients
at the end (a diagonal scaling lets updates drift along directions that change no OPD).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from model import ExposureModel
from scaling.fitting.engine import canonical_aberrations
from scaling.fitting.objective import loss
from scaling.fitting.params import Batch, parameter_labels


def subset_mask(params: dict, names) -> dict:
    """A pytree like `params`: True on the leaves of the named parameters."""
    return jax.tree.map(lambda name: name in names, parameter_labels(params))


@eqx.filter_jit
def _iteration(free, state, fixed, root, model, batches, reg_weights, diagonal, optimiser):
    def value(f):
        params = eqx.combine(jax.tree.map(jnp.divide, f, root), fixed)
        return loss(model, params, batches, reg_weights, diagonal)

    total, grad = optax.value_and_grad_from_state(value)(free, state=state)
    updates, state = optimiser.update(grad, state, free, value=total, grad=grad, value_fn=value)
    return optax.apply_updates(free, updates), state, total


def lbfgs_refine(
    model: ExposureModel,
    params: dict,
    batches: list[Batch],
    names,
    steps: int,
    reg_weights: dict[str, float],
    diagonal: bool = False,
    memory: int = 10,
    scale: dict | None = None,
    tolerance: float = 0.0,
) -> tuple[dict, list[float]]:
    """`steps` L-BFGS iterations on the parameters `names` (in the coordinates θ √scale
    when a parameter-shaped `scale` is given, see the module docstring), or fewer: with
    `tolerance` > 0 it stops once two successive iterations have each lowered the loss
    by less than `tolerance` (in loss units; the NLL changes by Δχ²/2).

    Returns:
        (parameters after the last iteration, the loss before each iteration).
    """
    mask = subset_mask(params, names)
    free, fixed = eqx.partition(params, mask)
    if scale is None:
        root = jax.tree.map(jnp.ones_like, free)
    else:
        root = eqx.partition(jax.tree.map(jnp.sqrt, scale), mask)[0]
    free = jax.tree.map(jnp.multiply, free, root)
    optimiser = optax.lbfgs(memory_size=memory)
    state = optimiser.init(free)
    totals = []
    for _ in range(steps):
        free, state, total = _iteration(
            free, state, fixed, root, model, batches, reg_weights, diagonal, optimiser
        )
        totals.append(float(total))
        if tolerance > 0 and len(totals) >= 3 and totals[-3] - totals[-1] < 2 * tolerance:
            if totals[-3] - totals[-2] < tolerance and totals[-2] - totals[-1] < tolerance:
                break
    params = eqx.combine(jax.tree.map(jnp.divide, free, root), fixed)
    if scale is None or "aberrations" not in names:
        return params, totals
    return {**params, **canonical_aberrations({"shared": params["shared"]}, model)}, totals
