"""Comparison of a fit with the truth of a simulated campaign (metrics logged to MLflow).

Metrics (E an epoch name, F a filter):

* `ncc.E`: normalised cross-correlation of the epoch image with the truth, both blurred
  to λ / B_max of the mask.
* `volcano_offset_pix.E`: worst distance, in detector pixels, from each of the 3
  brightest visible volcanoes to the nearest recovered peak.
* `volcano_motion_error_pix.E1-E2`: for consecutive epochs, the worst difference, in
  detector pixels, between the recovered and the true displacement of each of the 3
  brightest volcanoes visible in both (each position taken as the nearest recovered peak).
* `aberration_rms_error_fraction.F`: RMS of (fitted − true) aberration coefficients over
  their true RMS, all coefficients as they are (raw; see below).
* `wavefront_rms_error_fraction.F` and `wavefront_rms_error_nm.F`: RMS over the mask
  (transmission-weighted) of the optical path difference error, fitted − true, after
  removing its best-fitting piston and tip/tilt, over the RMS of the true OPD with its
  own piston and tip/tilt removed (and the error itself, nm).

Why piston and tip/tilt are removed from the wavefront metric: a constant OPD over the
whole mask changes only the global phase of the field, so no intensity measurement can see
it; an OPD linear across the mask is a wavelength-independent tilt, i.e. a shift of every
source on the detector, exactly degenerate with the fitted source positions (calibrator
positions are free, and each science image carries its epoch's pointing). These three
wavefront modes are unobservable, whatever the data. Nothing else is removed: relative
hole pistons and tilts (fringe phases) are measured by the point-source calibrators.
The coefficient metric is kept for reference, but it is not a wavefront measure: the
per-hole hexike "piston" is not constant over a hole (it varies by ~4%), and the global
defocus restricted to the holes is nearly a combination of per-hole pistons and tilts, so
large, nearly invisible coefficient combinations dominate it.
"""

import jax
import numpy as np

from model.pupil import NM
from model.source import normalise_log_image
from scaling.fit_plots import compare_with_truth, peaks, volcano_offsets
from scaling.simulate import load_truth

BRIGHTEST = 3
"""How many of the brightest visible volcanoes each volcano metric uses."""


def wavefront_error(pupil, fitted: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """(RMS OPD error / RMS true OPD, RMS OPD error in nm) over the mask, both with their
    transmission-weighted least-squares piston and tip/tilt removed (module docstring).

    Args:
        pupil: `model.pupil.Pupil` (basis in metres per nm, transmission, pixel scale).
        fitted, true: (nterms,) aberration coefficients, nm.
    """
    weight = np.asarray(pupil.transmission)
    inside = weight > 0
    n = weight.shape[-1]
    x = (np.arange(n) - (n - 1) / 2) * pupil.pixel_scale
    xx, yy = np.meshgrid(x, x)
    design = np.stack([np.ones(inside.sum()), xx[inside], yy[inside]], axis=1)
    w = weight[inside]
    basis = np.asarray(pupil.basis)[:, inside] / NM  # nm of OPD per nm of coefficient

    def residual_rms(coefficients: np.ndarray) -> float:
        opd = np.asarray(coefficients) @ basis
        solution = np.linalg.lstsq(design * np.sqrt(w)[:, None], opd * np.sqrt(w), rcond=None)
        residual = opd - design @ solution[0]
        return float(np.sqrt(np.sum(w * residual**2) / np.sum(w)))

    error = residual_rms(np.asarray(fitted) - np.asarray(true))
    return error / residual_rms(true), error


def _nearest_peaks(found: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """(k, 2) the recovered peak nearest to each of the k points `xy`."""
    d = np.hypot(*(xy[:, None, :] - found[None, :, :]).transpose(2, 0, 1))
    return found[np.argmin(d, axis=1)]


def volcano_motion_errors(
    images: np.ndarray,
    spot_xy: np.ndarray,
    visibility: np.ndarray,
    brightness: np.ndarray,
    pixel_scale: float,
    k: int = BRIGHTEST,
) -> list[float]:
    """For each pair of consecutive epochs, the worst |recovered − true displacement|
    (arcsec) of the `k` brightest volcanoes visible in both (inf if an image has no peak,
    nan if no volcano is visible in both)."""
    out = []
    for i in range(len(images) - 1):
        weight = brightness * np.minimum(visibility[i], visibility[i + 1])
        order = [j for j in np.argsort(weight)[::-1][:k] if weight[j] > 0]
        if not order:
            out.append(float("nan"))
            continue
        a, b = peaks(images[i], pixel_scale), peaks(images[i + 1], pixel_scale)
        if len(a) == 0 or len(b) == 0:
            out.append(float("inf"))
            continue
        moved = _nearest_peaks(b, spot_xy[i + 1][order]) - _nearest_peaks(a, spot_xy[i][order])
        true = spot_xy[i + 1][order] - spot_xy[i][order]
        out.append(float(np.max(np.hypot(*(moved - true).T))))
    return out


def truth_comparison(truth_folder: str, model, result, epochs) -> dict[str, float]:
    """The metrics of the module docstring for a fit `result` (anything with `.params`)."""
    meta, arrays = load_truth(truth_folder)
    images = np.asarray(jax.vmap(normalise_log_image)(result.params["epoch"]["log_image"]))
    scale = model.optics.psf_pixel_scale
    pixel = meta["detector_pixel_scale"]
    wavelength = min(b.centre for b in model.bandpasses.values())
    nccs = compare_with_truth(images, arrays["images"], scale, wavelength)
    brightness = np.asarray([v["brightness"] for v in meta["config"]["io"]["volcanoes"]])
    visibility = arrays["spot_visibility"]
    metrics = {}
    for i, epoch in enumerate(epochs):
        weight = brightness * visibility[i]
        offsets = volcano_offsets(images[i], arrays["spot_xy"][i], weight, scale, BRIGHTEST)
        metrics[f"ncc.{epoch}"] = nccs[i]
        if offsets.size:
            metrics[f"volcano_offset_pix.{epoch}"] = float(offsets.max()) / pixel
    motion = volcano_motion_errors(images, arrays["spot_xy"], visibility, brightness, scale)
    for i, error in enumerate(motion):
        if not np.isnan(error):
            metrics[f"volcano_motion_error_pix.{epochs[i]}-{epochs[i + 1]}"] = error / pixel
    for row, filt in enumerate(meta["filters"]):
        fitted = np.asarray(result.params["shared"]["aberrations"][filt])
        true = arrays["aberrations"][row]
        if fitted.shape == true.shape:
            rms = np.sqrt(np.mean((fitted - true) ** 2) / np.mean(true**2))
            metrics[f"aberration_rms_error_fraction.{filt}"] = float(rms)
            fraction, nm = wavefront_error(model.optics.pupil, fitted, true)
            metrics[f"wavefront_rms_error_fraction.{filt}"] = fraction
            metrics[f"wavefront_rms_error_nm.{filt}"] = nm
    return metrics
