"""The plain way: a Python loop over exposures, one jitted value-and-grad each.

This is how the research notebooks fit; the engine must give the same gradients, and
`scaling bench` measures how much faster the engine is.
"""

import equinox as eqx
import jax
import jax.numpy as jnp

from model import ExposureModel
from scaling.fitting.objective import LIKELIHOODS, regulariser_terms
from scaling.fitting.params import Observation, select


def _exposure_loss(model, params, i_exp, i_epoch, filt, kind, spec, data, bad, extra, diagonal):
    p = select(params, filt, i_exp, i_epoch)
    return LIKELIHOODS[kind].nll(model, p, spec, data, bad, extra, diagonal)


_value_and_grad = eqx.filter_jit(jax.value_and_grad(_exposure_loss, argnums=1))
_reg_value_and_grad = eqx.filter_jit(jax.value_and_grad(regulariser_terms))


def reference_value_and_grad(
    model: ExposureModel,
    params: dict,
    observations: list[Observation],
    exposure_names: list[str],
    epoch_names: list[str],
    reg_weights: dict[str, float],
    diagonal: bool = False,
):
    """(loss, gradient) summed exposure by exposure, then the epoch regularisers."""
    total, grads = _reg_value_and_grad(params, reg_weights)
    for obs in observations:
        i_epoch = None if obs.epoch is None else epoch_names.index(obs.epoch)
        value, g = _value_and_grad(
            model,
            params,
            exposure_names.index(obs.name),
            i_epoch,
            obs.spec.filter,
            obs.kind,
            obs.spec,
            jnp.asarray(obs.slopes),
            jnp.asarray(obs.bad),
            obs.extra(),
            diagonal,
        )
        total = total + value
        grads = jax.tree.map(jnp.add, grads, g)
    return total, grads
