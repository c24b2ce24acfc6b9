"""The start of a star-field fit: the stars found in one exposure.

Every path of a fit (the single process, the cluster's coordinator and each of its
workers) starts the shared stars from the same exposure, the selection's first, so all
start from the same point.
"""

import numpy as np
from scipy.ndimage import maximum_filter

from scaling.fitting.params import Observation

FWHM_RADII = 2.0
"""Half-width of the window about a peak, in PSF FWHMs (λ/D), where a star is measured."""


def find_stars(
    observation: Observation, count: int, pixel_scale: float, fwhm: float
) -> tuple[np.ndarray, np.ndarray]:
    """The `count` brightest stars of an exposure: ((count, 2) positions, arcsec from the
    frame centre in detector axes with the known dither taken off; (count,) log10 count
    rates, e-/s).

    Peaks of the good pixels' mean slope (local maxima over a window of one FWHM),
    brightest first; each star's position is the centroid and its rate the sum over a
    square of half-side `FWHM_RADII` FWHMs about its peak. `fwhm` in arcsec.

    Raises:
        ValueError: the exposure holds fewer than `count` peaks (naming `stars`).
    """
    rate = np.asarray(observation.slopes).mean(axis=0) / float(observation.spec.group_time)
    rate = np.where(observation.bad | ~np.isfinite(rate), 0.0, np.maximum(rate, 0.0))
    npix = rate.shape[-1]
    size = max(3, round(fwhm / pixel_scale) | 1)
    peaks = (rate == maximum_filter(rate, size=size)) & (rate > 0)
    rows, cols = np.nonzero(peaks)
    order = np.argsort(rate[rows, cols])[::-1][:count]
    if len(order) < count:
        raise ValueError(
            f"stars: {observation.name} shows {len(order)} peaks, fewer than the {count} asked"
        )
    half = max(1, round(FWHM_RADII * fwhm / pixel_scale))
    yy, xx = np.mgrid[:npix, :npix].astype(np.float64)
    positions, rates = [], []
    for r, c in zip(rows[order], cols[order], strict=True):
        near = (np.abs(yy - r) <= half) & (np.abs(xx - c) <= half)
        light = np.where(near, rate, 0.0)
        total = light.sum()
        positions.append([(light * xx).sum() / total, (light * yy).sum() / total])
        rates.append(total)
    centre = (npix - 1) / 2
    offsets = (np.asarray(positions) - centre) * pixel_scale - np.asarray(observation.spec.dither)
    return offsets, np.log10(np.asarray(rates))
