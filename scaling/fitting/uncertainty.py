"""1σ uncertainties of fitted parameters from the Fisher information at the optimum.

F = Jᵀ J, with J the Jacobian of the whitened model L⁻¹ μ (C = L Lᵀ each pixel's
covariance at the optimum, as for Fisher preconditioning: `precondition._whitened_model`)
with respect to the chosen parameters flattened into one vector θ. The covariance of θ is
the full inverse F⁻¹, so each σ is marginalised over every other chosen parameter
(separation, position angle, contrast, fluxes and positions are correlated).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float

from model import ExposureModel
from scaling.fitting.params import Batch
from scaling.fitting.precondition import _whitened_model

COLUMNS_AT_ONCE = 8
"""Fisher columns (Gauss-Newton products Jᵀ J e_i) evaluated together: bounds memory."""


def _chosen(params: dict, names: tuple[str, ...]) -> dict:
    """The parts of `params` holding `names` (shared, epoch or exposure entries)."""
    return {part: {n: v for n, v in tree.items() if n in names} for part, tree in params.items()}


@eqx.filter_jit
def _batch_fisher(
    model: ExposureModel, params: dict, names: tuple[str, ...], batch: Batch
) -> Float[Array, "k k"]:
    """(k, k) Jᵀ J of one batch over the k flattened entries of `names` (`_chosen` order)."""
    theta, unravel = ravel_pytree(_chosen(params, names))

    def whitened(t):
        moved = unravel(t)
        p = {part: {**tree, **moved[part]} for part, tree in params.items()}
        return _whitened_model(model, p, params, batch)

    _, jvp = jax.linearize(whitened, theta)
    vjp = jax.linear_transpose(jvp, theta)
    columns = lambda e: vjp(jvp(e))[0]  # noqa: E731
    return jax.lax.map(columns, jnp.eye(theta.size), batch_size=COLUMNS_AT_ONCE)


def fisher_matrix(
    model: ExposureModel, params: dict, batches: list[Batch], names: tuple[str, ...]
) -> Float[Array, "k k"]:
    """(k, k) Fisher information of the flattened `names` at `params`, summed over batches."""
    return sum(_batch_fisher(model, params, tuple(names), b) for b in batches)


def fisher_errors(
    model: ExposureModel, params: dict, batches: list[Batch], names: tuple[str, ...]
) -> dict:
    """1σ errors of the parameters `names` at the optimum `params` (the parameter tree).

    Returns:
        name → σ shaped like the parameter: (…) for a shared one, a dict filter → (…) for a
        per-filter one, (nexposures, …) or (nepochs, …) for a local one; in its units.

    Raises:
        ValueError: a name is not in `params`, or F is singular (a chosen parameter, or a
            combination, that the data do not constrain).
    """
    chosen = _chosen(params, tuple(names))
    missing = set(names) - {n for tree in chosen.values() for n in tree}
    if missing:
        raise ValueError(f"names not in the parameters: {sorted(missing)}")
    fisher = fisher_matrix(model, params, batches, names)
    scale = jnp.sqrt(jnp.diag(fisher))
    chol = jnp.linalg.cholesky(fisher / jnp.outer(scale, scale))
    if not bool(jnp.all(jnp.isfinite(chol))):
        raise ValueError(f"the Fisher matrix of {sorted(names)} is singular")
    inverse = jax.scipy.linalg.cho_solve((chol, True), jnp.eye(scale.size))
    _, unravel = ravel_pytree(chosen)
    sigma = unravel(jnp.sqrt(jnp.diag(inverse)) / scale)
    return {n: v for tree in sigma.values() for n, v in tree.items()}
