"""Comparison of a fit with the truth of a simulated campaign (metrics logged to MLflow)."""

import jax
import numpy as np

from model.source import normalise_log_image
from scaling.fit_plots import compare_with_truth, volcano_offsets
from scaling.simulate import load_truth


def truth_comparison(truth_folder: str, model, result, epochs) -> dict[str, float]:
    """Per epoch: NCC of the image with the truth blurred to λ/B_max
    (`ncc.E`) and the worst distance of the 3 brightest visible volcanoes to a recovered
    peak, in detector pixels (`volcano_offset_pix.E`)."""
    meta, arrays = load_truth(truth_folder)
    images = np.asarray(jax.vmap(normalise_log_image)(result.params["epoch"]["log_image"]))
    scale = model.optics.psf_pixel_scale
    wavelength = min(b.centre for b in model.bandpasses.values())
    nccs = compare_with_truth(images, arrays["images"], scale, wavelength)
    brightness = np.asarray([v["brightness"] for v in meta["config"]["io"]["volcanoes"]])
    metrics = {}
    for i, epoch in enumerate(epochs):
        weight = brightness * arrays["spot_visibility"][i]
        offsets = volcano_offsets(images[i], arrays["spot_xy"][i], weight, scale)
        metrics[f"ncc.{epoch}"] = nccs[i]
        if offsets.size:
            worst = float(offsets.max()) / meta["detector_pixel_scale"]
            metrics[f"volcano_offset_pix.{epoch}"] = worst
    for row, filt in enumerate(meta["filters"]):
        fitted = np.asarray(result.params["shared"]["aberrations"][filt])
        true = arrays["aberrations"][row]
        if fitted.shape == true.shape:
            rms = np.sqrt(np.mean((fitted - true) ** 2) / np.mean(true**2))
            metrics[f"aberration_rms_error_fraction.{filt}"] = float(rms)
    return metrics
