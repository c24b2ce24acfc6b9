"""Pictures and truth comparisons of a fit: images beside the truth, residuals, losses, GIF."""

import os
from pathlib import Path

import jax
import numpy as np
from matplotlib.animation import PillowWriter
from matplotlib.figure import Figure

from model import ExposureModel
from model.constants import IO_ROTATION_PERIOD_H, NM
from model.source import normalise_log_image
from scaling.data.truthfiles import load_truth
from scaling.report.plots import _cmap, _figure, _spread
from scaling.report.tracks import volcano_tracks, write_tracks_png
from scaling.report.truth import blur, centre_crop, resolution_arcsec, truth_in_fit_frame


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
    names: list[str],
) -> Path:
    """images.png, loss.png, residuals.png, aberrations.png and epochs.gif of a fit into
    `folder`, and volcano_tracks.png when the truth has volcanoes
    (`scaling.report.tracks`).

    `residuals` maps exposure names to (p, p) residual maps (see `residual_maps`);
    `names` are the fit's exposures in its order (to move the truth into the fit's frame,
    `truth_in_fit_frame`).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pixel_scale = model.optics.psf_pixel_scale
    log_images = result.params["epoch"].get("log_image", np.zeros((0, 1, 1)))
    images = np.asarray(jax.vmap(normalise_log_image)(log_images))
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
    if images.size and "spot_xy" in arrays:
        positions = np.asarray(result.params["exposure"]["position"])
        _, spot_xy = truth_in_fit_frame(meta, arrays, names, positions, pixel_scale)
        tracks = volcano_tracks(images, pixel_scale, meta, arrays, spot_xy)
        write_tracks_png(folder / "volcano_tracks.png", tracks, IO_ROTATION_PERIOD_H)
    _loss_png(folder / "loss.png", result.history)
    _residuals_png(folder / "residuals.png", residuals)
    _aberrations_png(folder / "aberrations.png", model.optics.pupil, fitted, true_aberrations)
    return folder
