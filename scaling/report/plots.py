"""Pictures of a simulated campaign folder (PNG via matplotlib's Agg, no pyplot state).

All images are drawn with origin lower (row 0 at the bottom) and the inferno colour map.
"""

import os
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from scaling.data.fitsio import read_exposure
from scaling.data.truthfiles import load_truth

CMAP = "inferno"
MAX_PANELS = 8
"""At most this many epochs or exposures (evenly spaced) are drawn side by side."""


def _spread(n: int) -> list[int]:
    """Indices of at most MAX_PANELS items evenly spread over n."""
    return sorted(set(np.linspace(0, n - 1, min(n, MAX_PANELS)).round().astype(int).tolist()))


def _figure(nrows: int, ncols: int) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(3.2 * ncols, 3.0 * nrows), layout="constrained")
    axes = np.atleast_2d(fig.subplots(nrows, ncols, squeeze=False))
    return fig, axes


def _cmap():
    """The colour map, with NaN (bad pixels) drawn grey."""
    return colormaps[CMAP].with_extremes(bad="0.5")


def plot_true_images(folder: str | os.PathLike, path: str | os.PathLike) -> Path:
    """True Io image of each epoch (log stretch, arcsec axes, north up, east left), with
    the volcanoes on the visible hemisphere circled and named."""
    truth, arrays = load_truth(folder)
    images, xy, visible = arrays["images"], arrays["spot_xy"], arrays["spot_visibility"]
    half = images.shape[-1] * truth["image_pixel_scale"] / 2
    picks = _spread(len(images))
    fig, axes = _figure(1, len(picks))
    for ax, i in zip(axes[0], picks, strict=True):
        epoch = truth["epochs"][i]
        norm = LogNorm(vmin=images[i].max() * 1e-3, vmax=images[i].max(), clip=True)
        ax.imshow(
            images[i], origin="lower", cmap=_cmap(), norm=norm, extent=(-half, half, -half, half)
        )
        for (x, y), v, name in zip(xy[i], visible[i], truth["volcanoes"], strict=True):
            if v > 0:
                ax.plot(x, y, "o", ms=12, mfc="none", mec="cyan", mew=1.0)
                ax.annotate(
                    name, (x, y), (6, 6), textcoords="offset points", color="cyan", fontsize=7
                )
        ax.set_title(
            f"{epoch['name']}  MJD {epoch['mjd']:.3f}\nsub-observer {epoch['sub_longitude']:.0f}°W",
            fontsize=9,
        )
        ax.set_xlabel("x (arcsec, west →)")
    axes[0, 0].set_ylabel("y (arcsec, north ↑)")
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_exposures(folder: str | os.PathLike, path: str | os.PathLike) -> Path:
    """First slope of each exposure (bad pixels grey): linear (top) and log (bottom)."""
    files = sorted(Path(folder).glob("*_calslope.fits"))
    if not files:
        raise ValueError(f"{folder}: no *_calslope.fits exposures to plot")
    picks = _spread(len(files))
    fig, axes = _figure(2, len(picks))
    for column, i in enumerate(picks):
        record = read_exposure(files[i])
        first = np.where(record.badpix, np.nan, record.slope[0])
        top, bottom = axes[0, column], axes[1, column]
        top.imshow(first, origin="lower", cmap=_cmap())
        peak = np.nanmax(first)
        log = np.where(first > 0, first, np.nan)
        bottom.imshow(log, origin="lower", cmap=_cmap(), norm=LogNorm(peak * 1e-3, peak, clip=True))
        if record.pupil == "CLEAR":
            pointing = f"dither ({record.dither_x:+.2f}, {record.dither_y:+.2f})″"
        else:
            pointing = f"roll {record.roll:.0f}°"
        top.set_title(
            f"{record.target} {record.filter} {pointing}\n"
            f"{record.nints} ints × {record.ngroups} groups",
            fontsize=9,
        )
        bottom.set_xlabel("x (pixels)")
    axes[0, 0].set_ylabel("slope 1, e-/group")
    axes[1, 0].set_ylabel("log stretch")
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_flatfield(folder: str | os.PathLike, path: str | os.PathLike) -> Path:
    """The flat-field workload: the true pixel response and the first dithered frame."""
    truth, arrays = load_truth(folder)
    files = sorted(Path(folder).glob("*_calslope.fits"))
    record = read_exposure(files[0])
    fig, axes = _figure(1, 2)
    flat = np.where(arrays["bad_pixels"], np.nan, arrays["flat"])
    shown = axes[0, 0].imshow(flat, origin="lower", cmap=_cmap())
    fig.colorbar(shown, ax=axes[0, 0], shrink=0.8)
    axes[0, 0].set_title("true pixel response", fontsize=9)
    frame = np.where(record.badpix | (record.slope[0] <= 0), np.nan, record.slope[0])
    peak = np.nanmax(frame)
    shown = axes[0, 1].imshow(
        frame, origin="lower", cmap=_cmap(), norm=LogNorm(peak * 1e-4, peak, clip=True)
    )
    fig.colorbar(shown, ax=axes[0, 1], shrink=0.8, label="e-/group")
    dx, dy = record.dither_x, record.dither_y
    axes[0, 1].set_title(
        f"{len(truth['exposures'])} dithers; first at ({dx:+.2f}, {dy:+.2f}) arcsec", fontsize=9
    )
    for ax in axes[0]:
        ax.set_xlabel("x (pixels)")
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_campaign(folder: str | os.PathLike) -> list[Path]:
    """All pictures of a simulated folder, written into it; returns their paths."""
    folder = Path(folder)
    truth, _ = load_truth(folder)
    if truth["kind"] == "flatfield":
        first = plot_flatfield(folder, folder / "flatfield.png")
    else:
        first = plot_true_images(folder, folder / "true_images.png")
    return [first, plot_exposures(folder, folder / "exposures.png")]
