"""The campaign loss: Σ exposures NLL + Σ epochs regularisers, batched with vmap.

L(params) = Σ_e NLL(data_e | model(shared, epoch(e), exposure e)) + Σ_epochs R(image)

Each epoch image carries its regulariser once (not once per exposure), with the weights
given by name (see `model.regularisers.REGULARISERS`).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from model import ExposureModel
from model.regularisers import regularisation
from model.source import normalise_log_image
from scaling.partition import Batch, exposure_params


def batch_nll(model: ExposureModel, params: dict, batch: Batch, diagonal: bool = False):
    """(b,) negative log-likelihood of every exposure in `batch` (0 for padding)."""

    def one(i_exp, i_epoch, spec, slopes, bad):
        return model.nll(
            exposure_params(params, batch, i_exp, i_epoch), spec, slopes, bad, diagonal
        )

    nll = jax.vmap(one)(
        batch.exposure_index, batch.epoch_index, batch.spec, batch.slopes, batch.bad
    )
    return batch.weight * nll


def regulariser_terms(params: dict, weights: dict[str, float]) -> Float[Array, ""]:
    """Σ over epochs of the weighted regularisers of each normalised image."""
    if not weights or "log_image" not in params["epoch"]:
        return jnp.asarray(0.0)
    images = jax.vmap(normalise_log_image)(params["epoch"]["log_image"])
    return jnp.sum(jax.vmap(lambda im: regularisation(im, weights))(images))


def loss_terms(
    model: ExposureModel,
    params: dict,
    batches: list[Batch],
    reg_weights: dict[str, float],
    diagonal: bool = False,
) -> dict[str, Float[Array, ""]]:
    """{"nll": Σ NLL, "regulariser": Σ R, "total": their sum}."""
    nll = sum(jnp.sum(batch_nll(model, params, b, diagonal)) for b in batches)
    reg = regulariser_terms(params, reg_weights)
    return {"nll": nll, "regulariser": reg, "total": nll + reg}


def loss(model, params, batches, reg_weights, diagonal: bool = False) -> Float[Array, ""]:
    """The scalar campaign loss (see `loss_terms`)."""
    return loss_terms(model, params, batches, reg_weights, diagonal)["total"]


def batch_chi_squared(model: ExposureModel, params: dict, batch: Batch, diagonal: bool = False):
    """((b,) χ², (b,) measurement counts) of every exposure in `batch` (0 for padding)."""

    def one(i_exp, i_epoch, spec, slopes, bad):
        p = exposure_params(params, batch, i_exp, i_epoch)
        return model.chi_squared(p, spec, slopes, bad, diagonal)

    chi2, count = jax.vmap(one)(
        batch.exposure_index, batch.epoch_index, batch.spec, batch.slopes, batch.bad
    )
    return batch.weight * chi2, batch.weight * count


@eqx.filter_jit
def chi_squared_sums(model: ExposureModel, params: dict, batches: list[Batch]):
    """(Σ χ², Σ measurements) over all batches: a cluster adds its workers' sums."""
    pairs = [batch_chi_squared(model, params, b) for b in batches]
    return sum(jnp.sum(c) for c, _ in pairs), sum(jnp.sum(n) for _, n in pairs)


def reduced_chi_squared(model: ExposureModel, params: dict, batches: list[Batch]):
    """Σ χ² / Σ measurements over all batches."""
    chi2, count = chi_squared_sums(model, params, batches)
    return chi2 / count
