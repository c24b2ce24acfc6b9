"""Likelihoods of measured ramp slopes and of measured count rates.

Within one integration, adjacent group differences share a read, so for one pixel the
slopes d_k (k = 1 … ngroups-1), averaged over `nints` integrations, have covariance

    C_kk = (μ_k + 2 σ²) / nints,   C_k,k±1 = -σ² / nints,

with μ_k the model slope (photon variance) and σ the read noise, electrons. The Gaussian
likelihood uses this tridiagonal C exactly (a Cholesky recursion along the slopes), or
only its diagonal.

A rate exposure (a pipeline's `_rate`/`_cal` product) is one count-rate image; its
likelihood is Gaussian with each pixel's variance taken from the file and held fixed
(`rate_nll`).
"""

import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln
from jaxtyping import Array, Bool, Float


def _tridiagonal_whiten(resid, diag, off):
    """Whitened residuals y = L⁻¹ r and log-diagonal of L for C = L Lᵀ (along axis 0)."""

    def step(carry, inputs):
        l_prev, y_prev = carry
        r, a, b = inputs
        m = b / l_prev
        l = jnp.sqrt(a - m**2)  # noqa: E741
        y = (r - m * y_prev) / l
        return (l, y), (y, jnp.log(l))

    l0 = jnp.sqrt(diag[0])
    y0 = resid[0] / l0
    _, (ys, logls) = jax.lax.scan(step, (l0, y0), (resid[1:], diag[1:], off))
    return jnp.concatenate([y0[None], ys]), jnp.concatenate([jnp.log(l0)[None], logls])


def _masked(data: Float[Array, "... p p"], bad: Bool[Array, "p p"]) -> Float[Array, "... p p"]:
    """Data with bad pixels set to 0, so a NaN or inf there (common in JWST products)
    cannot reach the value or, through `0 * nan` in the backward pass, the gradient."""
    return jnp.where(bad, 0.0, data)


def whitened_residuals(
    data: Float[Array, "s p p"],
    model: Float[Array, "s p p"],
    read_noise: Float[Array, ""],
    nints: Float[Array, ""],
    diagonal: bool = False,
) -> tuple[Float[Array, "s p p"], Float[Array, "s p p"]]:
    """(y, log l): whitened residuals and log Cholesky diagonal of each pixel's covariance."""
    var_read = read_noise**2
    diag = (jnp.maximum(model, 0.0) + 2 * var_read) / nints
    resid = data - model
    if diagonal:
        return resid / jnp.sqrt(diag), 0.5 * jnp.log(diag)
    off = jnp.full_like(diag[1:], -var_read / nints)
    return _tridiagonal_whiten(resid, diag, off)


def gaussian_nll(
    data: Float[Array, "s p p"],
    model: Float[Array, "s p p"],
    read_noise: Float[Array, ""],
    nints: Float[Array, ""],
    bad: Bool[Array, "p p"],
    diagonal: bool = False,
) -> Float[Array, ""]:
    """Negative log-likelihood of the slopes of all good pixels (bad pixels masked)."""
    y, logl = whitened_residuals(_masked(data, bad), model, read_noise, nints, diagonal)
    per_pixel = 0.5 * jnp.sum(y**2 + 2 * logl + jnp.log(2 * jnp.pi), axis=0)
    return jnp.sum(jnp.where(bad, 0.0, per_pixel))


def chi_squared(
    data: Float[Array, "s p p"],
    model: Float[Array, "s p p"],
    read_noise: Float[Array, ""],
    nints: Float[Array, ""],
    bad: Bool[Array, "p p"],
    diagonal: bool = False,
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """(χ², number of measurements) over good pixels; χ²/n is the reduced chi-squared."""
    y, _ = whitened_residuals(_masked(data, bad), model, read_noise, nints, diagonal)
    good = ~bad
    return jnp.sum(jnp.where(good, jnp.sum(y**2, axis=0), 0.0)), y.shape[0] * jnp.sum(good)


def rate_whitened_residuals(
    data: Float[Array, "p p"],
    model: Float[Array, "p p"],
    variance: Float[Array, "p p"],
    bad: Bool[Array, "p p"],
) -> Float[Array, "p p"]:
    """Whitened residuals (data − model) / σ of a count rate (e-/s, variance (e-/s)²), 0 on
    bad pixels, whose data and variance are replaced before any arithmetic (a NaN there
    reaches neither the value nor the gradient)."""
    var = jnp.where(bad, 1.0, variance)
    return jnp.where(bad, 0.0, (_masked(data, bad) - model) / jnp.sqrt(var))


def rate_nll(
    data: Float[Array, "p p"],
    model: Float[Array, "p p"],
    variance: Float[Array, "p p"],
    bad: Bool[Array, "p p"],
) -> Float[Array, ""]:
    """Gaussian negative log-likelihood of a measured count rate with fixed variance.

    0.5 Σ_good [(d − μ)² / v + log(2π v)] with d, μ in e-/s and v the file's variance in
    (e-/s)². The variance is data, not model: the pipeline's Poisson variance carries its
    ramp-fitting weights, which a rate alone cannot reproduce, and at AMI signal levels
    the bias of a data-based variance is negligible.
    """
    y = rate_whitened_residuals(data, model, variance, bad)
    var = jnp.where(bad, 1.0, variance)
    return 0.5 * jnp.sum(jnp.where(bad, 0.0, y**2 + jnp.log(2 * jnp.pi * var)))


def rate_chi_squared(
    data: Float[Array, "p p"],
    model: Float[Array, "p p"],
    variance: Float[Array, "p p"],
    bad: Bool[Array, "p p"],
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """(χ², number of good pixels) of a measured count rate with fixed variance."""
    y = rate_whitened_residuals(data, model, variance, bad)
    return jnp.sum(y**2), jnp.sum(~bad)


def poisson_nll(
    counts: Float[Array, "... p p"], model: Float[Array, "... p p"], bad: Bool[Array, "p p"]
) -> Float[Array, ""]:
    """Negative log-likelihood of photon counts given model means (bad pixels masked)."""
    mu = jnp.maximum(model, 1e-30)
    counts = _masked(counts, bad)
    per = mu - counts * jnp.log(mu) + gammaln(counts + 1)
    return jnp.sum(jnp.where(bad, 0.0, per))
