"""The campaign loss: Σ exposures NLL + Σ epochs regularisers, batched with vmap.

L(params) = Σ_e NLL(data_e | model(shared, epoch(e), exposure e)) + Σ_epochs R(image)

Each epoch image carries its regulariser once (not once per exposure), with the weights
given by name (see `model.regularisers.REGULARISERS`).

`LIKELIHOODS` maps each kind of exposure data (`scaling.fitting.params.KINDS`) to its
model functions; the loss, χ², residual maps, Fisher preconditioning and the reference
loop all go through it.
"""

from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from model import ExposureModel
from model.likelihood import rate_whitened_residuals, whitened_residuals
from model.regularisers import regularisation
from model.source import normalise_log_image
from scaling.fitting.params import Batch, Observation, make_batches, over_exposures


class Likelihood(NamedTuple):
    """The model functions of one kind of exposure data, each for one exposure.

    `data` is the (s, p, p) `Observation.slopes`, `bad` the (p, p) mask and `extra` the
    kind's own data (`Observation.extra`): a rate's variance, the slopes' `SlopeCounts`.

    Attributes:
        mean: (model, params, spec) → (s, p, p) model data.
        nll: (model, params, spec, data, bad, extra, diagonal) → negative log-likelihood.
        chi_squared: same arguments → (χ², number of measurements).
        whiten: (values, mean, params, spec, extra, bad) → (s, p, p) values − mean
            whitened by the data covariance at `params`, L⁻¹ (values − mean); 0 on masked
            slopes.
    """

    mean: Callable
    nll: Callable
    chi_squared: Callable
    whiten: Callable


LIKELIHOODS = {
    "slopes": Likelihood(
        mean=lambda m, p, spec: m.slopes(p, spec),
        nll=lambda m, p, spec, data, bad, counts, diagonal: m.nll(
            p, spec, data, bad, diagonal, counts
        ),
        chi_squared=lambda m, p, spec, data, bad, counts, diagonal: m.chi_squared(
            p, spec, data, bad, diagonal, counts
        ),
        whiten=lambda x, mean, p, spec, counts, _: whitened_residuals(
            x, mean, p["read_noise"], spec.nints, counts=counts
        )[0],
    ),
    "rate": Likelihood(
        mean=lambda m, p, spec: m.mean_rate(p, spec)[None],
        nll=lambda m, p, spec, data, bad, var, _: m.rate_nll(p, spec, data[0], var[0], bad),
        chi_squared=lambda m, p, spec, data, bad, var, _: m.rate_chi_squared(
            p, spec, data[0], var[0], bad
        ),
        whiten=lambda x, mean, p, spec, var, bad: rate_whitened_residuals(
            x[0], mean[0], var[0], bad
        )[None],
    ),
}
"""Kind of exposure data (`Observation.kind`) → its model functions."""


def _per_exposure(model: ExposureModel, params: dict, batch: Batch, term: str, diagonal: bool):
    """`term` ("nll" or "chi_squared") of every exposure in `batch`, by its kind's likelihood."""
    likelihood = getattr(LIKELIHOODS[batch.kind], term)
    return over_exposures(
        lambda p, spec, data, bad, extra: likelihood(model, p, spec, data, bad, extra, diagonal),
        batch,
        (params,),
        batch.slopes,
        batch.bad,
        batch.extra,
    )


def batch_nll(model: ExposureModel, params: dict, batch: Batch, diagonal: bool = False):
    """(b,) negative log-likelihood of every exposure in `batch` (0 for padding)."""
    return batch.weight * _per_exposure(model, params, batch, "nll", diagonal)


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
    """{"nll": Σ NLL, "regulariser": Σ R, "total": their sum}. In the shared-PSF mode each
    filter's PSF is made once for all batches (`ExposureModel.with_shared_psfs`)."""
    if model.psf_pad:
        model = model.with_shared_psfs(params["shared"]["aberrations"])
    nll = sum(jnp.sum(batch_nll(model, params, b, diagonal)) for b in batches)
    reg = regulariser_terms(params, reg_weights)
    return {"nll": nll, "regulariser": reg, "total": nll + reg}


def loss(model, params, batches, reg_weights, diagonal: bool = False) -> Float[Array, ""]:
    """The scalar campaign loss (see `loss_terms`)."""
    return loss_terms(model, params, batches, reg_weights, diagonal)["total"]


@eqx.filter_jit
def nll_sum(model: ExposureModel, params: dict, batches: list[Batch]) -> Float[Array, ""]:
    """Σ NLL over `batches` (with held-out batches: the validation NLL)."""
    return sum(jnp.sum(batch_nll(model, params, b)) for b in batches)


def batch_chi_squared(model: ExposureModel, params: dict, batch: Batch, diagonal: bool = False):
    """((b,) χ², (b,) measurement counts) of every exposure in `batch` (0 for padding)."""
    chi2, count = _per_exposure(model, params, batch, "chi_squared", diagonal)
    return batch.weight * chi2, batch.weight * count


_batch_chi_squared = eqx.filter_jit(batch_chi_squared)


@eqx.filter_jit
def chi_squared_sums(model: ExposureModel, params: dict, batches: list[Batch]):
    """(Σ χ², Σ measurements) over all batches: a cluster adds its workers' sums."""
    pairs = [batch_chi_squared(model, params, b) for b in batches]
    return sum(jnp.sum(c) for c, _ in pairs), sum(jnp.sum(n) for _, n in pairs)


def chi_squared_by_exposure(
    model: ExposureModel, params: dict, batches: list[Batch]
) -> dict[int, tuple[float, float]]:
    """{row of the exposure in the per-exposure parameters: (χ², measurements)}."""
    out = {}
    for b in batches:
        chi2, count = _batch_chi_squared(model, params, b)
        weight = np.asarray(b.weight)
        for i, c, n, w in zip(np.asarray(b.exposure_index), chi2, count, weight, strict=True):
            if w > 0:
                out[int(i)] = (float(c), float(n))
    return out


def reduced_chi_squared(model: ExposureModel, params: dict, batches: list[Batch]):
    """Σ χ² / Σ measurements over all batches."""
    chi2, count = chi_squared_sums(model, params, batches)
    return chi2 / count


@eqx.filter_jit
def _whitened(model: ExposureModel, params: dict, batch: Batch):
    """(b, s, p, p) whitened residuals (data − model) of every exposure in `batch`."""
    kind = LIKELIHOODS[batch.kind]

    def one(p, spec, data, bad, extra):
        return kind.whiten(data, kind.mean(model, p, spec), p, spec, extra, bad)

    return over_exposures(one, batch, (params,), batch.slopes, batch.bad, batch.extra)


def residual_maps(model: ExposureModel, params: dict, observations: list[Observation], epochs):
    """{exposure name: (p, p) mean whitened residual over kept slopes (a rate's own), NaN
    on bad pixels and where no slope is kept}."""
    names = [o.name for o in observations]
    out = {}
    for batch in make_batches(observations, names, epochs):
        y = np.asarray(_whitened(model, params, batch))
        kept = np.ones(y.shape, bool) if batch.counts is None else ~np.asarray(batch.counts.bad)
        n = kept.sum(axis=1)
        mean = np.where(kept, y, 0.0).sum(axis=1) / np.maximum(n, 1)
        for k, i in enumerate(np.asarray(batch.exposure_index)):
            out[names[i]] = np.where(np.asarray(batch.bad[k]) | (n[k] == 0), np.nan, mean[k])
    return out
