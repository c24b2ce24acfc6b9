"""Comparison of a fit with the truth of a simulated campaign (metrics logged to MLflow).

Metrics (E an epoch name, F a filter):

* `ncc.E`: normalised cross-correlation of the epoch image with the truth, both blurred
  to λ / B_max of the mask.
* `volcano_offset_pix.E`: worst distance, in detector pixels, from each of the 3
  brightest visible volcanoes (visibility ≥ `VISIBLE`) to the nearest recovered peak
  (placed to a fraction of an image pixel, `peaks`).
* `volcano_motion_error_pix.E1-E2`: for consecutive epochs, the worst difference, in
  detector pixels, between the recovered and the true displacement of each of the 3
  brightest volcanoes visible in both (each position taken as the nearest recovered peak).
* `aberration_rms_error_fraction.F`: RMS of (fitted − true) aberration coefficients over
  their true RMS, both made `Pupil.canonical` (the global piston and tip/tilt, which no
  data can see, projected out; see `model.pupil`). The per-hole terms are orthonormal
  over equal holes, so this is also the RMS wavefront error over the true RMS wavefront.
* `wavefront_rms_error_nm.F`: RMS over the mask (transmission-weighted) of the optical
  path difference error, fitted − true, nm.
* `volcano_period_h.V`: Io's rotation period fitted to the recovered track of the
  brightest volcano V (`scaling.report.tracks`; with a track of 3 epochs or more).

The image and volcano metrics compare in the frame the fit defines (`truth_in_fit_frame`).
The fit freezes the position of the first exposure of each epoch at its start
(`scaling.fitting.start.freeze_science_positions`), so the epoch image carries that
exposure's pointing: with true position p, frozen position p0 (detector axes, arcsec) and
roll r, the model draws `rotate_image(image, r)` at p0 where the truth is drawn at p, so the
recovered image is the true one moved by R(−r)·(p − p0) in its own (sky) axes, a shift no
data can tell from the pointing. The true images and volcanoes are moved by it first.
"""

import jax
import numpy as np
from scipy.ndimage import fourier_shift, gaussian_filter

from model.constants import ARCSEC, HOLE_CENTRES, HOLE_FLAT_TO_FLAT, IO_ROTATION_PERIOD_H, NM
from model.source import normalise_log_image, rotate_points
from scaling.data.truthfiles import load_truth
from scaling.report.peaks import nearest_peaks, peaks
from scaling.report.tracks import period_metrics, volcano_tracks

FWHM_PER_SIGMA = 2 * np.sqrt(2 * np.log(2))


def resolution_arcsec(wavelength: float) -> float:
    """λ / B_max of the mask (longest centre-to-centre baseline plus a hole), arcsec."""
    d = HOLE_CENTRES[:, None, :] - HOLE_CENTRES[None, :, :]
    longest = np.max(np.hypot(d[..., 0], d[..., 1])) + HOLE_FLAT_TO_FLAT
    return wavelength / longest / ARCSEC


def blur(image: np.ndarray, pixel_scale: float, fwhm_arcsec: float) -> np.ndarray:
    """Gaussian blur to a FWHM in arcsec (flux preserving)."""
    return gaussian_filter(image, fwhm_arcsec / pixel_scale / FWHM_PER_SIGMA, mode="constant")


def centre_crop(image: np.ndarray, n: int) -> np.ndarray:
    """Central n×n part of an odd-sided image (zero-padded if smaller)."""
    m = image.shape[-1]
    if m < n:
        pad = (n - m) // 2
        return np.pad(image, pad)
    start = (m - n) // 2
    return image[start : start + n, start : start + n]


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised cross-correlation (Pearson) of two images of the same shape."""
    a, b = a - a.mean(), b - b.mean()
    return float(np.sum(a * b) / np.sqrt(np.sum(a**2) * np.sum(b**2)))


def compare_with_truth(
    images: np.ndarray, truth_images: np.ndarray, pixel_scale: float, wavelength: float
) -> list[float]:
    """NCC of each recovered epoch image with its truth blurred to λ / B_max."""
    fwhm = resolution_arcsec(wavelength)
    n = images.shape[-1]
    return [
        ncc(blur(im, pixel_scale, fwhm), centre_crop(blur(t, pixel_scale, fwhm), n))
        for im, t in zip(images, truth_images, strict=True)
    ]


def volcano_offsets(
    image: np.ndarray, spot_xy: np.ndarray, weight: np.ndarray, pixel_scale: float, k: int = 3
) -> np.ndarray:
    """Distance (arcsec) from each of the `k` brightest visible true spots (by `weight`,
    e.g. brightness × visibility; spots of weight 0 are hidden) to the nearest recovered
    peak (inf when the image has no peak). Fewer than `k` values when fewer are visible."""
    found = peaks(image, pixel_scale)
    order = [i for i in np.argsort(weight)[::-1][:k] if weight[i] > 0]
    brightest = spot_xy[order]
    if len(found) == 0:
        return np.full(len(brightest), np.inf)
    d = np.hypot(*(brightest[:, None, :] - found[None, :, :]).transpose(2, 0, 1))
    return d.min(axis=1)


BRIGHTEST = 3
"""How many of the brightest visible volcanoes each volcano metric uses."""

VISIBLE = 0.1
"""Visibility (cosine of the angle from the sub-observer point) from which a volcano
counts as visible to the volcano metrics: closer to the limb than about 6° it is
foreshortened into a fraction of a pixel of the darkened limb, which no image shows."""


def aberration_errors(pupil, fitted: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """(RMS coefficient error / RMS true coefficient, RMS OPD error in nm), both on the
    canonical coefficients (module docstring).

    Args:
        pupil: `model.pupil.Pupil` (basis in metres per nm, transmission, projector).
        fitted, true: (nterms,) aberration coefficients, nm.
    """
    error = np.asarray(pupil.canonical(np.asarray(fitted) - np.asarray(true)))
    truth = np.asarray(pupil.canonical(np.asarray(true)))
    weight = np.asarray(pupil.transmission)
    opd = np.asarray(pupil.opd(error)) / NM
    nm = float(np.sqrt(np.sum(weight * opd**2) / np.sum(weight)))
    return float(np.sqrt(np.sum(error**2) / np.sum(truth**2))), nm


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
        moved = nearest_peaks(b, spot_xy[i + 1][order]) - nearest_peaks(a, spot_xy[i][order])
        true = spot_xy[i + 1][order] - spot_xy[i][order]
        out.append(float(np.max(np.hypot(*(moved - true).T))))
    return out


def truth_in_fit_frame(
    meta: dict,
    arrays: dict[str, np.ndarray],
    names: list[str],
    positions: np.ndarray,
    pixel_scale: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(true images, true volcano (x, y) arcsec) of each truth epoch moved by
    R(−r)·(p − p0) into the fit's frame (module docstring).

    Args:
        meta, arrays: the truth (`load_truth`).
        names: the fit's exposure names, in its order (the first of each epoch is frozen).
        positions: (len(names), 2) fitted `position` of each exposure, detector axes, arcsec.
        pixel_scale: arcsec per pixel of the true images.
    """
    images, spot_xy = [], []
    for k, epoch in enumerate(meta["epochs"]):
        i = next(i for i, n in enumerate(names) if meta["exposure_epoch"].get(n) == epoch["name"])
        exposure = meta["exposures"][names[i]]
        moved = arrays["positions"][exposure["index"]] - np.asarray(positions[i])
        shift = np.asarray(rotate_points(moved, -exposure["roll"]))  # (x, y) sky axes
        spectrum = fourier_shift(np.fft.fft2(arrays["images"][k]), shift[::-1] / pixel_scale)
        images.append(np.fft.ifft2(spectrum).real)
        spot_xy.append(arrays["spot_xy"][k] + shift)
    return np.stack(images), np.stack(spot_xy)


def truth_comparison(
    truth_folder: str, model, result, epochs: list[str], names: list[str]
) -> dict[str, float]:
    """The metrics of the module docstring for a fit `result` (anything with `.params`) of
    the exposures `names` (in the fit's order) in `epochs`."""
    meta, arrays = load_truth(truth_folder)
    images = np.asarray(jax.vmap(normalise_log_image)(result.params["epoch"]["log_image"]))
    scale = model.optics.psf_pixel_scale
    pixel = meta["detector_pixel_scale"]
    wavelength = min(b.centre for b in model.bandpasses.values())
    positions = np.asarray(result.params["exposure"]["position"])
    truth_images, spot_xy = truth_in_fit_frame(meta, arrays, names, positions, scale)
    nccs = compare_with_truth(images, truth_images, scale, wavelength)
    brightness = np.asarray([v["brightness"] for v in meta["config"]["io"]["volcanoes"]])
    visibility = np.where(arrays["spot_visibility"] >= VISIBLE, arrays["spot_visibility"], 0.0)
    metrics = {}
    for i, epoch in enumerate(epochs):
        weight = brightness * visibility[i]
        offsets = volcano_offsets(images[i], spot_xy[i], weight, scale, BRIGHTEST)
        metrics[f"ncc.{epoch}"] = nccs[i]
        if offsets.size:
            metrics[f"volcano_offset_pix.{epoch}"] = float(offsets.max()) / pixel
    tracks = volcano_tracks(images, scale, meta, arrays, spot_xy)
    metrics.update(period_metrics(tracks, brightness, IO_ROTATION_PERIOD_H))
    motion = volcano_motion_errors(images, spot_xy, visibility, brightness, scale)
    for i, error in enumerate(motion):
        if not np.isnan(error):
            metrics[f"volcano_motion_error_pix.{epochs[i]}-{epochs[i + 1]}"] = error / pixel
    for row, filt in enumerate(meta["filters"]):
        fitted = np.asarray(result.params["shared"]["aberrations"][filt])
        true = arrays["aberrations"][row]
        if fitted.shape == true.shape:
            fraction, nm = aberration_errors(model.optics.pupil, fitted, true)
            metrics[f"aberration_rms_error_fraction.{filt}"] = fraction
            metrics[f"wavefront_rms_error_nm.{filt}"] = nm
    return metrics
