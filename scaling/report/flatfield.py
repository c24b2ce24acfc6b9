"""A star-field (pixel-calibration) fit against its simulation's truth: metrics, pictures.

Metrics (F a filter), as the seed notebook reports them:

* `flat_mae_bright`: mean |fitted − true| pixel response over the pixels whose mean
  signal per exposure (electrons in the fitted slopes, from the true scene) is at least
  `SIGNAL_THRESHOLD` (the notebook's threshold), bad pixels left out, after scaling the
  fitted response to the true one's mean over those pixels: a pixel response times c
  and every star's flux over c give the same data, so only the response relative to its
  mean is measured (`flat_mae_bright_raw`: without that scaling, as the seed reports
  it; `flat_scale`: the factor); `flat_bright_pixels` counts them.
* `zernike_rel_error.F`: |fitted − true| / |true| of the canonical aberration vectors.
* `star_position_rms_mas`, `star_log_flux_rms`: each true star against the nearest
  fitted one. The fit holds the first exposure's pointing and flux scale at 0 (the
  stars carry them), so the true stars are first moved by that exposure's true pointing
  and scaled by its true flux scale; the fitted fluxes are divided by `flat_scale`.
"""

import os
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from model import ExposureModel, make_spec, nominal_detector
from scaling.data.truthfiles import load_truth
from scaling.report.plots import _cmap, _figure

SIGNAL_THRESHOLD = 2500.0
"""Mean electrons per exposure above which a pixel's response counts (the notebook's)."""


def is_star_field(truth_folder: str) -> bool:
    """True when the simulation at `truth_folder` is a star field (kind "flatfield")."""
    return load_truth(truth_folder)[0]["kind"] == "flatfield"


@eqx.filter_jit
def _mean_rate(model: ExposureModel, params: dict, specs, pointings, log_scales):
    def one(spec, pointing, log_scale):
        return model.rate({**params, "pointing": pointing, "log_scale": log_scale}, spec)

    return jnp.mean(jax.vmap(one)(specs, pointings, log_scales), axis=0)


def mean_signal(model: ExposureModel, truth_folder: str) -> np.ndarray:
    """(p, p) mean electrons per exposure in the slopes of the true scene (unit flat)."""
    meta, arrays = load_truth(truth_folder)
    cfg = meta["config"]
    filt = meta["filters"][0]
    specs = [make_spec(filt, cfg["ngroups"], dither=d) for d in arrays["dithers"]]
    specs = jax.tree.map(lambda *xs: jnp.stack(xs), *specs)
    params = {
        **nominal_detector(model.npix, 1),
        "aberrations": jnp.asarray(arrays["aberrations"]),
        "positions": jnp.asarray(arrays["positions"]),
        "log_fluxes": jnp.asarray(arrays["log_fluxes"]),
        "spectral_slope": jnp.asarray(0.0),
    }
    rate = _mean_rate(
        model, params, specs, jnp.asarray(arrays["pointings"]), jnp.asarray(arrays["log_scales"])
    )
    exposure_time = (cfg["ngroups"] - 1) * cfg["instrument"]["group_time"]
    return np.asarray(rate) * exposure_time


def bright_pixels(model: ExposureModel, truth_folder: str) -> tuple[np.ndarray, np.ndarray]:
    """(`mean_signal`, (p, p) mask of the good pixels at or above `SIGNAL_THRESHOLD`)."""
    signal = mean_signal(model, truth_folder)
    return signal, (signal >= SIGNAL_THRESHOLD) & ~load_truth(truth_folder)[1]["bad_pixels"]


def flatfield_comparison(truth_folder: str, model: ExposureModel, params: dict) -> dict:
    """The metrics of the module docstring for fitted `params` (a parameter tree)."""
    meta, arrays = load_truth(truth_folder)
    shared = params["shared"]
    bright = bright_pixels(model, truth_folder)[1]
    fitted, true = np.asarray(shared["flat"]), arrays["flat"]
    scale = true[bright].mean() / fitted[bright].mean() if bright.any() else 1.0
    metrics = {
        "flat_mae_bright": float(np.abs(scale * fitted - true)[bright].mean()),
        "flat_mae_bright_raw": float(np.abs(fitted - true)[bright].mean()),
        "flat_scale": float(scale),
        "flat_bright_pixels": float(bright.sum()),
    }
    pupil = model.optics.pupil
    for filt in meta["filters"]:
        true = np.asarray(pupil.canonical(jnp.asarray(arrays["aberrations"])))
        fitted = np.asarray(pupil.canonical(jnp.asarray(shared["aberrations"][filt])))
        metrics[f"zernike_rel_error.{filt}"] = float(
            np.linalg.norm(fitted - true) / np.linalg.norm(true)
        )
    found = np.asarray(shared["positions"])
    true_xy = arrays["positions"] + arrays["pointings"][0]
    d = np.hypot(*(true_xy[:, None, :] - found[None, :, :]).transpose(2, 0, 1))
    nearest = d.argmin(axis=1)
    metrics["star_position_rms_mas"] = float(1e3 * np.sqrt(np.mean(d.min(axis=1) ** 2)))
    true_log_fluxes = arrays["log_fluxes"] + arrays["log_scales"][0]
    fitted_log_fluxes = np.asarray(shared["log_fluxes"])[nearest] - np.log10(scale)
    flux_error = fitted_log_fluxes - true_log_fluxes
    metrics["star_log_flux_rms"] = float(np.sqrt(np.mean(flux_error**2)))
    return metrics


def write_flatfield_pictures(
    folder: str | os.PathLike, model: ExposureModel, params: dict, truth_folder: str
) -> Path:
    """flat.png (true, recovered and residual pixel response, pixels below the signal
    threshold grey) and flat_error.png (|error| against mean signal) into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _, arrays = load_truth(truth_folder)
    signal, bright = bright_pixels(model, truth_folder)
    true, fitted = arrays["flat"], np.asarray(params["shared"]["flat"])
    fig, axes = _figure(1, 3)
    spread = 3 * np.std(true[bright]) if bright.any() else 0.1
    panels = [("true", true), ("recovered", fitted), ("residual", fitted - true)]
    for ax, (title, image) in zip(axes[0], panels, strict=True):
        centre = 0.0 if title == "residual" else 1.0
        shown = np.where(bright, image, np.nan)
        im = ax.imshow(
            shown, origin="lower", cmap=_cmap(), vmin=centre - spread, vmax=centre + spread
        )
        ax.set_title(f"pixel response: {title}")
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.savefig(folder / "flat.png", dpi=90)
    fig, axes = _figure(1, 1)
    good = ~arrays["bad_pixels"] & (signal > 0)
    axes[0, 0].loglog(signal[good], np.abs(fitted - true)[good], ",", alpha=0.5)
    axes[0, 0].axvline(SIGNAL_THRESHOLD, color="k", lw=0.8)
    axes[0, 0].set(xlabel="mean signal per exposure (e-)", ylabel="|pixel response error|")
    fig.savefig(folder / "flat_error.png", dpi=90)
    return folder
