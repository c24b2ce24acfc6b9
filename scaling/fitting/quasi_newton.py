"""Second stage: L-BFGS (optax) on a chosen subset of the parameters.

The seed notebooks finish unconverged low-dimensional parameters (aberrations, fluxes)
with a quasi-Newton method once the first-order stage has formed the images. Here the
chosen parameters move together under `optax.lbfgs` with its zoom line search (each
iteration decreases the loss or stays); every other parameter is held fixed. Gradient
hooks do not apply: the line search needs the true gradient of the loss it evaluates.
"""

import equinox as eqx
import jax
import optax

from model import ExposureModel
from scaling.fitting.objective import loss
from scaling.fitting.params import Batch, parameter_labels


def subset_mask(params: dict, names) -> dict:
    """A pytree like `params`: True on the leaves of the named parameters."""
    return jax.tree.map(lambda name: name in names, parameter_labels(params))


@eqx.filter_jit
def _iteration(free, state, fixed, model, batches, reg_weights, diagonal, optimiser):
    def value(f):
        return loss(model, eqx.combine(f, fixed), batches, reg_weights, diagonal)

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
) -> tuple[dict, list[float]]:
    """`steps` L-BFGS iterations on the parameters `names`.

    Returns:
        (parameters after the last iteration, the loss before each iteration).
    """
    free, fixed = eqx.partition(params, subset_mask(params, names))
    optimiser = optax.lbfgs(memory_size=memory)
    state = optimiser.init(free)
    totals = []
    for _ in range(steps):
        free, state, total = _iteration(
            free, state, fixed, model, batches, reg_weights, diagonal, optimiser
        )
        totals.append(float(total))
    return eqx.combine(free, fixed), totals
