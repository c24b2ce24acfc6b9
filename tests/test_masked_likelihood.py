"""Per-slope masks in the slope likelihood: the masked recursion against a dense Gaussian
of the kept slopes, its gradient against finite differences, and the unmasked defaults.

For one pixel the slopes kept from integrations K_k (n_k = |K_k|) have covariance
C_kk = (μ_k + 2σ²) / n_k and C_k,k+1 = -σ² |K_k ∩ K_k+1| / (n_k n_k+1).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.stats import multivariate_normal

from model.likelihood import SlopeCounts, chi_squared, gaussian_nll, uniform_counts

READ_NOISE, NINTS, NSLOPES, NPIX = 9.0, 6, 7, 5


def _random_counts(rng: np.random.Generator):
    """(kept (nints, s, p, p), SlopeCounts, pixel mask): random integrations kept per
    slope, some slopes masked mid-ramp and at the end, two bad pixels."""
    kept = rng.random((NINTS, NSLOPES, NPIX, NPIX)) > 0.3
    kept[:, 5:, 0, 0] = False  # a ramp that saturates: its tail masked
    kept[:, 3, 1, 1] = False  # a masked slope mid-ramp
    kept[:, :, 2, 2] = False  # no slope kept at all
    n = kept.sum(axis=0)
    pairs = (kept[:, :-1] & kept[:, 1:]).sum(axis=0)
    masked = (n == 0) | (rng.random(n.shape) < 0.1)
    bad = np.zeros((NPIX, NPIX), bool)
    bad[4, 0] = bad[3, 2] = True
    counts = SlopeCounts(jnp.asarray(masked), jnp.asarray(n, float), jnp.asarray(pairs, float))
    return kept, counts, bad


def _dense_covariance(mean, n, pairs, keep):
    """(k, k) covariance of one pixel's kept slopes, straight from the formula above."""
    s = mean.shape[0]
    full = np.zeros((s, s))
    for k in range(s):
        if keep[k]:
            full[k, k] = (mean[k] + 2 * READ_NOISE**2) / n[k]
        if k + 1 < s and keep[k] and keep[k + 1]:
            full[k, k + 1] = full[k + 1, k] = -(READ_NOISE**2) * pairs[k] / (n[k] * n[k + 1])
    return full[np.ix_(keep, keep)]


def _dense(data, mean, counts, bad):
    """(NLL, χ², kept slopes) summed over pixels with dense covariances."""
    masked, n, pairs = (np.asarray(a) for a in (counts.bad, counts.n, counts.pairs))
    nll = chi2 = 0.0
    kept_total = 0
    for i, j in np.ndindex(NPIX, NPIX):
        keep = ~masked[:, i, j] & (n[:, i, j] > 0)
        if bad[i, j] or not keep.any():
            continue
        cov = _dense_covariance(mean[:, i, j], n[:, i, j], pairs[:, i, j], keep)
        d, m = data[keep, i, j], mean[keep, i, j]
        nll -= float(multivariate_normal.logpdf(d, m, cov))
        chi2 += float((d - m) @ np.linalg.solve(cov, d - m))
        kept_total += int(keep.sum())
    return nll, chi2, kept_total


@pytest.fixture(scope="module")
def masked_slopes():
    """(data with NaN on masked slopes, mean, counts, bad) for 3 random draws."""
    cases = []
    for seed in range(3):
        rng = np.random.default_rng(seed)
        _, counts, bad = _random_counts(rng)
        mean = rng.uniform(3.0, 400.0, (NSLOPES, NPIX, NPIX))
        sigma = np.sqrt((mean + 2 * READ_NOISE**2) / np.maximum(np.asarray(counts.n), 1))
        data = mean + sigma * rng.standard_normal(mean.shape)
        data = np.where(np.asarray(counts.bad) | (np.asarray(counts.n) == 0), np.nan, data)
        cases.append((data, mean, counts, bad))
    return cases


def test_masked_nll_and_chi_squared_equal_a_dense_gaussian_of_the_kept_slopes(masked_slopes):
    for data, mean, counts, bad in masked_slopes:
        args = (jnp.asarray(data), jnp.asarray(mean), READ_NOISE, float(NINTS), jnp.asarray(bad))
        nll = float(gaussian_nll(*args, counts=counts))
        chi2, kept = chi_squared(*args, counts=counts)
        ref_nll, ref_chi2, ref_kept = _dense(data, mean, counts, bad)
        assert abs(nll - ref_nll) <= 1e-10 * abs(ref_nll)
        assert abs(float(chi2) - ref_chi2) <= 1e-10 * ref_chi2
        assert int(kept) == ref_kept


def test_masked_nll_gradient_passes_finite_differences(masked_slopes):
    data, mean, counts, bad = masked_slopes[0]

    def nll(m):
        return gaussian_nll(jnp.asarray(data), m, READ_NOISE, float(NINTS), bad, counts=counts)

    grad = np.asarray(jax.grad(nll)(jnp.asarray(mean)))
    dropped = np.asarray(counts.bad) | (np.asarray(counts.n) == 0) | bad[None]
    assert np.all(np.isfinite(grad)) and np.all(grad[dropped] == 0.0)
    rng = np.random.default_rng(9)
    kept = np.argwhere(~dropped)
    for index in map(tuple, kept[rng.choice(len(kept), 12, replace=False)]):
        h = 1e-3 * mean[index]
        values = []
        for step in (-2, -1, 1, 2):
            moved = mean.copy()
            moved[index] += step * h
            values.append(float(nll(jnp.asarray(moved))))
        numeric = (values[0] - 8 * values[1] + 8 * values[2] - values[3]) / (12 * h)  # O(h⁴)
        assert numeric == pytest.approx(grad[index], rel=1e-7, abs=1e-10)


def test_uniform_counts_give_the_unmasked_likelihood(masked_slopes):
    """The masked path with the bad-pixel mask on every slope and NINTS everywhere gives
    what the unmasked path (slopes without masks of their own) gives, to round-off."""
    _, mean, _, bad = masked_slopes[0]
    rng = np.random.default_rng(4)
    data = mean + rng.standard_normal(mean.shape)
    args = (jnp.asarray(data), jnp.asarray(mean), READ_NOISE, float(NINTS), jnp.asarray(bad))
    counts = uniform_counts(jnp.asarray(bad), float(NINTS), NSLOPES)
    for diagonal in (False, True):
        plain = float(gaussian_nll(*args, diagonal))
        assert float(gaussian_nll(*args, diagonal, counts)) == pytest.approx(plain, rel=1e-14)
    chi2, n = chi_squared(*args)
    masked_chi2, masked_n = chi_squared(*args, counts=counts)
    assert int(n) == int(masked_n) == NSLOPES * int((~bad).sum())
    assert float(masked_chi2) == pytest.approx(float(chi2), rel=1e-14)


def test_masking_the_tail_leaves_the_earlier_slopes_unchanged():
    """Truncation at saturation: the causal recursion keeps the earlier whitened terms, so
    masking the last slopes equals fitting the shorter ramp."""
    rng = np.random.default_rng(2)
    mean = rng.uniform(10.0, 300.0, (NSLOPES, NPIX, NPIX))
    data = mean + 5 * rng.standard_normal(mean.shape)
    bad = jnp.zeros((NPIX, NPIX), bool)
    counts = uniform_counts(bad, float(NINTS), NSLOPES)
    tail = SlopeCounts(counts.bad.at[4:].set(True), counts.n, counts.pairs)
    masked = gaussian_nll(jnp.asarray(data), jnp.asarray(mean), READ_NOISE, NINTS, bad, False, tail)
    short = gaussian_nll(jnp.asarray(data[:4]), jnp.asarray(mean[:4]), READ_NOISE, NINTS, bad)
    assert float(masked) == pytest.approx(float(short), rel=1e-13)
