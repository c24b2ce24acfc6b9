"""The start of a star-field fit: the stars found in one exposure.

Every path of a fit (the single process, the cluster's coordinator and each of its
workers) starts the shared stars from the same exposure, the selection's first, so all
start from the same point.
"""

import numpy as np
from scipy.ndimage import maximum_filter

from scaling.fitting.params import Observation

PEAK_WINDOW = 1.0
"""Side of the window in which a star's peak is the brightest pixel, in FWHMs (λ/D)."""

CENTROID_RADII = 0.5
"""Half-width of the window about a peak where a star's position is measured, FWHMs."""

FLUX_RADII = 2.0
"""Half-width of the window about a peak where a star's count rate is summed, FWHMs."""


def find_stars(
    observation: Observation, count: int, pixel_scale: float, fwhm: float
) -> tuple[np.ndarray, np.ndarray]:
    """The `count` brightest stars of an exposure: ((count, 2) positions, arcsec from the
    frame centre in detector axes with the known dither taken off; (count,) log10 count
    rates, e-/s).

    Peaks of the good pixels' mean slope (local maxima over `PEAK_WINDOW`), brightest
    first; each star's position is the centroid within `CENTROID_RADII` and its rate the
    sum within `FLUX_RADII` about its peak (a close pair shares light). `fwhm` in arcsec.

    Raises:
        ValueError: the exposure holds fewer than `count` peaks (naming `stars`).
    """
    rate = np.asarray(observation.slopes).mean(axis=0) / float(observation.spec.group_time)
    rate = np.where(observation.bad | ~np.isfinite(rate), 0.0, np.maximum(rate, 0.0))
    npix = rate.shape[-1]
    size = max(3, round(PEAK_WINDOW * fwhm / pixel_scale) | 1)
    peaks = (rate == maximum_filter(rate, size=size)) & (rate > 0)
    rows, cols = np.nonzero(peaks)
    order = np.argsort(rate[rows, cols])[::-1][:count]
    if len(order) < count:
        raise ValueError(
            f"stars: {observation.name} shows {len(order)} peaks, fewer than the {count} asked"
        )
    yy, xx = np.mgrid[:npix, :npix].astype(np.float64)
    positions, rates = [], []
    for r, c in zip(rows[order], cols[order], strict=True):

        def within(radii, r=r, c=c):
            half = max(1, round(radii * fwhm / pixel_scale))
            return np.where((np.abs(yy - r) <= half) & (np.abs(xx - c) <= half), rate, 0.0)

        core = within(CENTROID_RADII)
        positions.append([(core * xx).sum() / core.sum(), (core * yy).sum() / core.sum()])
        rates.append(within(FLUX_RADII).sum())
    centre = (npix - 1) / 2
    offsets = (np.asarray(positions) - centre) * pixel_scale - np.asarray(observation.spec.dither)
    return offsets, np.log10(np.asarray(rates))
