"""Pictures and truth comparisons of a fit: images beside the truth, residuals, losses, GIF."""

import os
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
from matplotlib.animation import PillowWriter
from matplotlib.figure import Figure
from scipy.ndimage import gaussian_filter, maximum_filter

from model import ExposureModel
from model.constants import ARCSEC, HOLE_CENTRES, HOLE_FLAT_TO_FLAT
from model.likelihood import whitened_residuals
from model.pupil import NM
from model.source import normalise_log_image
from scaling.partition import Observation, exposure_params, make_batches
from scaling.plots import _cmap, _figure, _spread
from scaling.simulate import load_truth

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


def peaks(image: np.ndarray, pixel_scale: float, count: int = 8) -> np.ndarray:
    """(count, 2) (x, y) arcsec of the strongest compact peaks (local maxima of the image
    minus its 3-pixel Gaussian blur), strongest first; origin at the image centre."""
    detail = image - gaussian_filter(image, 3.0)
    local = (detail == maximum_filter(detail, size=5)) & (detail > 0)
    rows, cols = np.nonzero(local)
    order = np.argsort(detail[rows, cols])[::-1][:count]
    centre = (image.shape[-1] - 1) / 2
    return np.stack([cols[order] - centre, rows[order] - centre], axis=-1) * pixel_scale


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


@eqx.filter_jit
def _whitened(model: ExposureModel, params: dict, batch):
    def one(i_exp, i_epoch, spec, slopes):
        p = exposure_params(params, batch, i_exp, i_epoch)
        y, _ = whitened_residuals(slopes, model.slopes(p, spec), p["read_noise"], spec.nints)
        return y

    return jax.vmap(one)(batch.exposure_index, batch.epoch_index, batch.spec, batch.slopes)


def residual_maps(model: ExposureModel, params: dict, observations: list[Observation], epochs):
    """{exposure name: (p, p) mean whitened residual over slopes, NaN on bad pixels}."""
    names = [o.name for o in observations]
    out = {}
    for batch in make_batches(observations, names, epochs):
        y = np.asarray(_whitened(model, params, batch)).mean(axis=1)
        for k, i in enumerate(np.asarray(batch.exposure_index)):
            out[names[i]] = np.where(np.asarray(batch.bad[k]), np.nan, y[k])
    return out


def _extent(n: int, pixel_scale: float) -> list[float]:
    half = n * pixel_scale / 2
    return [-half, half, -half, half]


def _images_png(path, images, names, pixel_scale, truth, fwhm) -> None:
    """Recovered images; with the truth, a row of it blurred to `fwhm` arcsec."""
    idx = _spread(len(images))
    fig, axes = _figure(2 if truth is not None else 1, len(idx))
    for col, i in enumerate(idx):
        ext = _extent(images.shape[-1], pixel_scale)
        axes[0, col].imshow(images[i], origin="lower", cmap=_cmap(), extent=ext)
        axes[0, col].set_title(f"{names[i]} recovered")
        if truth is not None:
            t = centre_crop(blur(truth[i], pixel_scale, fwhm), images.shape[-1])
            axes[1, col].imshow(t, origin="lower", cmap=_cmap(), extent=ext)
            axes[1, col].set_title(f"{names[i]} truth at {1000 * fwhm:.0f} mas")
    for ax in axes.ravel():
        ax.set_xlabel("x (arcsec)")
    fig.savefig(path, dpi=90)


def _loss_png(path, history: dict[str, np.ndarray]) -> None:
    fig, axes = _figure(1, 2)
    for key in ("total", "nll", "regulariser"):
        if key in history:
            axes[0, 0].plot(np.abs(history[key]), label=key)
    axes[0, 0].set(yscale="log", xlabel="step", title="loss terms")
    axes[0, 0].legend()
    axes[0, 1].plot(history.get("grad_norm", []))
    axes[0, 1].set(yscale="log", xlabel="step", title="preconditioned gradient norm")
    fig.savefig(path, dpi=90)


def _residuals_png(path, maps: dict[str, np.ndarray]) -> None:
    names = list(maps)
    idx = _spread(len(names))
    fig, axes = _figure(1, len(idx))
    for col, i in enumerate(idx):
        im = axes[0, col].imshow(maps[names[i]], origin="lower", cmap="RdBu_r", vmin=-3, vmax=3)
        axes[0, col].set_title(names[i][-12:], fontsize=8)
    fig.colorbar(im, ax=axes[0, -1], label="mean whitened residual (σ)")
    fig.savefig(path, dpi=90)


def _aberrations_png(path, pupil, fitted: dict, true: dict) -> None:
    """Per filter, the fitted OPD over the mask (nm); with the truth, it and the error."""
    inside = np.asarray(pupil.transmission) > 0
    half = pupil.npix * pupil.pixel_scale / 2
    ext = [-half, half, -half, half]

    def opd(coefficients):
        return np.where(inside, np.asarray(pupil.opd(coefficients)) / NM, np.nan)

    panels = []
    for filt, c in sorted(fitted.items()):
        row = [(f"{filt} fitted", opd(c))]
        if filt in true:
            row += [(f"{filt} truth", opd(true[filt])), (f"{filt} error", opd(c - true[filt]))]
        panels.append(row)
    fig, axes = _figure(len(panels), max(len(r) for r in panels))
    for r, row in enumerate(panels):
        limit = np.nanmax(np.abs(row[min(1, len(row) - 1)][1]))  # the truth's range
        for col, (title, image) in enumerate(row):
            im = axes[r, col].imshow(
                image, origin="lower", cmap="RdBu_r", vmin=-limit, vmax=limit, extent=ext
            )
            rms = np.sqrt(np.nanmean(image**2))
            axes[r, col].set_title(f"{title}\n{rms:.1f} nm RMS", fontsize=9)
            axes[r, col].set_xlabel("pupil x (m)")
        fig.colorbar(im, ax=axes[r, len(row) - 1], label="OPD (nm)")
    fig.savefig(path, dpi=90)


def _gif(path, images, names, pixel_scale) -> None:
    fig = Figure(figsize=(4, 4), layout="constrained")
    ax = fig.subplots()
    writer = PillowWriter(fps=2)
    with writer.saving(fig, str(path), dpi=80):
        for image, name in zip(images, names, strict=True):
            ax.clear()
            ext = _extent(image.shape[-1], pixel_scale)
            ax.imshow(image, origin="lower", cmap=_cmap(), extent=ext)
            ax.set_title(name)
            writer.grab_frame()


def write_fit_pictures(
    folder: str | os.PathLike,
    model: ExposureModel,
    result,
    residuals: dict[str, np.ndarray],
    epochs: list[str],
    truth_folder: str | None,
) -> Path:
    """images.png, loss.png, residuals.png, aberrations.png and epochs.gif of a fit into
    `folder`.

    `residuals` maps exposure names to (p, p) residual maps (see `residual_maps`).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pixel_scale = model.optics.psf_pixel_scale
    images = np.asarray(jax.vmap(normalise_log_image)(result.params["epoch"]["log_image"]))
    meta, arrays = load_truth(truth_folder) if truth_folder else ({"filters": []}, {})
    truth = arrays.get("images")
    fitted = {f: np.asarray(a) for f, a in result.params["shared"]["aberrations"].items()}
    true_aberrations = {
        f: row
        for f, row in zip(meta["filters"], arrays.get("aberrations", []), strict=False)
        if f in fitted and row.shape == fitted[f].shape
    }
    fwhm = resolution_arcsec(min(b.centre for b in model.bandpasses.values()))
    if images.size:
        _images_png(folder / "images.png", images, epochs, pixel_scale, truth, fwhm)
        _gif(folder / "epochs.gif", images, epochs, pixel_scale)
    _loss_png(folder / "loss.png", result.history)
    _residuals_png(folder / "residuals.png", residuals)
    _aberrations_png(folder / "aberrations.png", model.optics.pupil, fitted, true_aberrations)
    return folder
