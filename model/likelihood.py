"""Likelihoods of measured ramp slopes and of measured count rates.

Within one integration, adjacent group differences share a read, so for one pixel the
slopes d_k (k = 1 … ngroups-1), each averaged over the n_k integrations that kept it, have
covariance

    C_kk = (μ_k + 2 σ²) / n_k,   C_k,k+1 = -σ² n_k,k+1 / (n_k n_k+1),

with μ_k the model slope (photon variance), σ the read noise, electrons, and n_k,k+1 the
integrations that kept both slopes (`SlopeCounts`; without it every n is `nints`, and
the code is the one used before per-slope masks, so such exposures give the same bits).
The Gaussian likelihood uses this tridiagonal C exactly (a Cholesky recursion along the
slopes), or only its diagonal. A masked slope (saturated, a jump, a bad pixel) is dropped
exactly: without it C is still tridiagonal, its neighbours' entry being 0, so the
recursion runs with the masked slope given unit variance, zero residual and no coupling,
and its terms are left out of the sums.

A rate exposure (a pipeline's `_rate`/`_cal` product) is one count-rate image; its
likelihood is Gaussian with each pixel's variance taken from the file and held fixed
(`rate_nll`).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln
from jaxtyping import Array, Bool, Float


class SlopeCounts(eqx.Module):
    """Which slopes of each pixel were measured, and from how many integrations.

    Attributes:
        bad: (s, p, p) True where a slope is masked (its pixel's mask included).
        n: (s, p, p) integrations averaged into each slope (any value where masked).
        pairs: (s-1, p, p) integrations that kept both slope k and slope k+1.
    """

    bad: Bool[Array, "s p p"]
    n: Float[Array, "s p p"]
    pairs: Float[Array, "s1 p p"]


def uniform_counts(bad: Bool[Array, "p p"], nints, nslopes: int) -> SlopeCounts:
    """`SlopeCounts` of slopes without masks of their own: the pixel mask on every slope,
    every slope and pair from all `nints` integrations."""
    shape = (nslopes, *bad.shape)
    n = jnp.full(shape, nints, dtype=jnp.float64)
    return SlopeCounts(jnp.broadcast_to(bad, shape), n, n[1:])


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


def _dropped(counts: SlopeCounts, bad: Bool[Array, "p p"] | None) -> Bool[Array, "s p p"]:
    """Slopes left out: masked, from no integration, or on a bad pixel."""
    dropped = counts.bad | (counts.n <= 0)
    return dropped if bad is None else dropped | bad[None]


def whitened_residuals(
    data: Float[Array, "s p p"],
    model: Float[Array, "s p p"],
    read_noise: Float[Array, ""],
    nints: Float[Array, ""],
    diagonal: bool = False,
    counts: SlopeCounts | None = None,
    bad: Bool[Array, "p p"] | None = None,
) -> tuple[Float[Array, "s p p"], Float[Array, "s p p"]]:
    """(y, log l): whitened residuals and log Cholesky diagonal of each pixel's covariance.

    Without `counts`, of all slopes, each from `nints` integrations. With `counts` (and
    the pixel mask `bad`), of the kept slopes: both are 0 on dropped slopes (see
    `_dropped`), whose data are replaced before any arithmetic.
    """
    var_read = read_noise**2
    if counts is None:
        diag = (jnp.maximum(model, 0.0) + 2 * var_read) / nints
        resid = data - model
        off = jnp.full_like(diag[1:], -var_read / nints)
    else:
        dropped = _dropped(counts, bad)
        n = jnp.where(dropped, 1.0, counts.n)
        diag = jnp.where(dropped, 1.0, (jnp.maximum(model, 0.0) + 2 * var_read) / n)
        resid = jnp.where(dropped, 0.0, jnp.where(dropped, 0.0, data) - model)
        coupled = ~(dropped[:-1] | dropped[1:])
        off = jnp.where(coupled, -(var_read / n[:-1]) * (counts.pairs / n[1:]), 0.0)
    if diagonal:
        return resid / jnp.sqrt(diag), 0.5 * jnp.log(diag)
    return _tridiagonal_whiten(resid, diag, off)


def _whitened_terms(data, model, read_noise, nints, bad, diagonal, counts):
    """(y, per-slope NLL terms y² + 2 log l + log 2π, kept): without `counts` every slope
    of a good pixel is kept (bad pixels' data zeroed first), with it the kept ones."""
    if counts is None:
        y, logl = whitened_residuals(_masked(data, bad), model, read_noise, nints, diagonal)
        kept = jnp.broadcast_to(~bad, data.shape)
        return y, y**2 + 2 * logl + jnp.log(2 * jnp.pi), kept
    y, logl = whitened_residuals(data, model, read_noise, nints, diagonal, counts, bad)
    kept = ~_dropped(counts, bad)
    return y, jnp.where(kept, y**2 + 2 * logl + jnp.log(2 * jnp.pi), 0.0), kept


def gaussian_nll(
    data: Float[Array, "s p p"],
    model: Float[Array, "s p p"],
    read_noise: Float[Array, ""],
    nints: Float[Array, ""],
    bad: Bool[Array, "p p"],
    diagonal: bool = False,
    counts: SlopeCounts | None = None,
) -> Float[Array, ""]:
    """Negative log-likelihood of the slopes of all good pixels (bad pixels masked); with
    `counts`, of the kept slopes only, each from its own integrations."""
    _, terms, _ = _whitened_terms(data, model, read_noise, nints, bad, diagonal, counts)
    per_pixel = 0.5 * jnp.sum(terms, axis=0)
    return jnp.sum(jnp.where(bad, 0.0, per_pixel))


def chi_squared(
    data: Float[Array, "s p p"],
    model: Float[Array, "s p p"],
    read_noise: Float[Array, ""],
    nints: Float[Array, ""],
    bad: Bool[Array, "p p"],
    diagonal: bool = False,
    counts: SlopeCounts | None = None,
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """(χ², number of kept slopes) over good pixels; χ²/n is the reduced chi-squared."""
    y, _, kept = _whitened_terms(data, model, read_noise, nints, bad, diagonal, counts)
    good = ~bad
    return jnp.sum(jnp.where(good, jnp.sum(y**2, axis=0), 0.0)), jnp.sum(kept)


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
