"""Likelihoods against dense references, bad-pixel masking, and chi-squared calibration.

The Gaussian NLL of `model.likelihood` uses, per pixel, the tridiagonal covariance of
slopes averaged over `nints` integrations:
    C_kk = (μ_k + 2σ²) / nints,   C_k,k±1 = -σ² / nints.
Here it is compared with a dense multivariate normal built from that formula.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.stats import multivariate_normal, poisson

from model.likelihood import chi_squared, gaussian_nll, poisson_nll, whitened_residuals
from model.noise import noisy_slopes
from tests.helpers import NPIX, ami_spec, simulate

READ_NOISE, NINTS = 9.0, 7.0


def _dense_covariance(mean: np.ndarray, read_noise: float, nints: float, diagonal: bool):
    """(s, s) covariance of one pixel's slopes, straight from the documented formula."""
    s = mean.shape[0]
    cov = np.diag(mean + 2 * read_noise**2)
    if not diagonal:
        cov -= read_noise**2 * (np.eye(s, k=1) + np.eye(s, k=-1))
    return cov / nints


def _dense_nll(data, mean, bad, diagonal):
    """Σ over good pixels of -log N(d; μ, C(μ)) with the dense covariance."""
    good = ~bad
    d, m = data[:, good].T, mean[:, good].T  # (pixels, s)
    covs = np.stack([_dense_covariance(mu, READ_NOISE, NINTS, diagonal) for mu in m])
    return -float(jnp.sum(jax.vmap(multivariate_normal.logpdf)(d, m, covs)))


@pytest.fixture(scope="module")
def slopes():
    """(data, mean, bad): 6 slopes on a 5×5 patch with a few bad pixels."""
    rng = np.random.default_rng(0)
    mean = rng.uniform(3.0, 400.0, (6, 5, 5))
    data = mean + rng.normal(0.0, 1.0, mean.shape) * np.sqrt((mean + 2 * READ_NOISE**2) / NINTS)
    bad = np.zeros((5, 5), dtype=bool)
    bad[1, 3] = bad[4, 0] = True
    return data, mean, bad


@pytest.mark.parametrize("diagonal", [False, True])
def test_gaussian_nll_equals_dense_multivariate_normal(slopes, diagonal):
    data, mean, bad = slopes
    ours = gaussian_nll(
        jnp.asarray(data), jnp.asarray(mean), READ_NOISE, NINTS, jnp.asarray(bad), diagonal
    )
    reference = _dense_nll(data, mean, bad, diagonal)
    assert abs(float(ours) - reference) <= 1e-10 * abs(reference)


def test_tridiagonal_and_diagonal_differ(slopes):
    """The off-diagonal read-noise terms matter (guards against both paths being diagonal)."""
    data, mean, bad = (jnp.asarray(a) for a in slopes)
    full = gaussian_nll(data, mean, READ_NOISE, NINTS, bad)
    diag = gaussian_nll(data, mean, READ_NOISE, NINTS, bad, diagonal=True)
    assert abs(float(full - diag)) > 1.0


def test_chi_squared_equals_dense_quadratic_form(slopes):
    data, mean, bad = slopes
    chi2, n = chi_squared(jnp.asarray(data), jnp.asarray(mean), READ_NOISE, NINTS, jnp.asarray(bad))
    reference = 0.0
    for i, j in zip(*np.nonzero(~bad), strict=True):
        r = data[:, i, j] - mean[:, i, j]
        reference += r @ np.linalg.solve(
            _dense_covariance(mean[:, i, j], READ_NOISE, NINTS, False), r
        )
    assert abs(float(chi2) - reference) <= 1e-10 * reference
    assert int(n) == data.shape[0] * int((~bad).sum())


@pytest.mark.parametrize("bad_value", [0.0, 1e12, np.nan, np.inf])
def test_bad_pixels_are_excluded_from_value_and_gradient(slopes, bad_value):
    """Whatever a bad pixel holds (JWST products often hold NaN), neither the value nor
    the gradient with respect to the model changes, and both stay finite."""
    data, mean, bad = slopes
    corrupted = data.copy()
    corrupted[:, bad] = bad_value

    def nll(m, d):
        return gaussian_nll(d, m, READ_NOISE, NINTS, jnp.asarray(bad))

    def pnll(m, d):
        return poisson_nll(d, m, jnp.asarray(bad))

    counts = np.round(np.abs(data))
    corrupted_counts = counts.copy()
    corrupted_counts[:, bad] = bad_value
    for f, clean, dirty in ((nll, data, corrupted), (pnll, counts, corrupted_counts)):
        value, grad = jax.value_and_grad(f)(jnp.asarray(mean), jnp.asarray(clean))
        value2, grad2 = jax.value_and_grad(f)(jnp.asarray(mean), jnp.asarray(dirty))
        assert np.isfinite(float(value2)) and np.all(np.isfinite(grad2))
        np.testing.assert_allclose(value2, value, rtol=1e-14)
        np.testing.assert_allclose(grad2, grad, rtol=1e-14, atol=0)
        assert np.all(np.asarray(grad)[:, bad] == 0.0)
    assert (
        abs(float(nll(jnp.asarray(mean), jnp.asarray(data))) - _dense_nll(data, mean, bad, False))
        < 1e-8
    )


def test_poisson_nll_equals_scipy_logpmf():
    rng = np.random.default_rng(1)
    mean = rng.uniform(0.5, 300.0, (3, 6, 6))
    counts = rng.poisson(mean).astype(np.float64)
    bad = np.zeros((6, 6), dtype=bool)
    bad[2, 2] = True
    ours = poisson_nll(jnp.asarray(counts), jnp.asarray(mean), jnp.asarray(bad))
    logpmf = np.asarray(poisson.logpmf(jnp.asarray(counts), jnp.asarray(mean)))
    reference = -logpmf[:, ~bad].sum()
    assert abs(float(ours) - reference) <= 1e-10 * abs(reference)


# --- calibration: chi-squared at the truth --------------------------------------------------

SEEDS = range(5)


@pytest.fixture(scope="module")
def truth_chi2(ami, ami_params):
    """Reduced chi-squared at the true parameters for several noise seeds, with the true
    read noise and with it doubled / halved in the likelihood."""
    spec = ami_spec(nints=20)
    bad = jnp.zeros((NPIX, NPIX), dtype=bool).at[5, 9].set(True)
    chi2 = eqx.filter_jit(lambda p, d: ami.chi_squared(p, spec, d, bad))
    out = {"true": [], "x2": [], "x0.5": []}
    for seed in SEEDS:
        data, _ = simulate(ami, ami_params, spec, seed)
        for key, factor in (("true", 1.0), ("x2", 2.0), ("x0.5", 0.5)):
            params = {**ami_params, "read_noise": ami_params["read_noise"] * factor}
            value, n = chi2(params, data)
            out[key].append((float(value) / int(n), int(n)))
    return out


def test_reduced_chi_squared_at_truth_is_one(truth_chi2):
    """Within 3σ of 1 for every seed, σ = sqrt(2/N) (N = 4 slopes × 255 good pixels)."""
    for reduced, n in truth_chi2["true"]:
        assert abs(reduced - 1) < 3 * np.sqrt(2 / n), truth_chi2["true"]


@pytest.mark.parametrize("key", ["x2", "x0.5"])
def test_reduced_chi_squared_detects_wrong_read_noise(truth_chi2, key):
    """The same check fails by many σ when the likelihood's read noise is off by 2×."""
    for reduced, n in truth_chi2[key]:
        assert abs(reduced - 1) > 10 * np.sqrt(2 / n), truth_chi2[key]


def test_whitening_decorrelates_adjacent_slopes():
    """Raw adjacent slopes share a read (correlation -σ²/(μ+2σ²)); the tridiagonal
    whitening removes it. 4000 pixels: the sample correlation's σ is ≈ 0.016."""
    rng = np.random.default_rng(3)
    mean = np.full((4, 40, 100), 50.0)
    data = noisy_slopes(rng, mean, READ_NOISE, 5)
    raw = data - mean
    expected = -(READ_NOISE**2) / (50.0 + 2 * READ_NOISE**2)
    y, _ = whitened_residuals(jnp.asarray(data), jnp.asarray(mean), READ_NOISE, 5.0)
    y = np.asarray(y)
    for k in range(3):
        raw_corr = np.corrcoef(raw[k].ravel(), raw[k + 1].ravel())[0, 1]
        white_corr = np.corrcoef(y[k].ravel(), y[k + 1].ravel())[0, 1]
        assert abs(raw_corr - expected) < 0.06
        assert abs(white_corr) < 0.06
    assert abs(y.var() - 1) < 0.06
