"""Ready-made exposure models: NIRISS AMI and a filled-aperture calibration imager."""

import jax.numpy as jnp

from model.constants import FILTERS, PIXEL_SCALE, SUB80_NPIX
from model.exposure import ExposureModel
from model.optics import Optics
from model.pupil import ami_pupil, circular_pupil
from model.spectrum import bandpass


def ami_model(
    npix: int = SUB80_NPIX,
    oversample: int = 3,
    pupil_npix: int = 256,
    nwavels: int = 5,
    n_hole_zernikes: int = 3,
    filters: tuple[str, ...] = tuple(FILTERS),
    pixel_scale: float = PIXEL_SCALE,
    psf_pad: int = 0,
) -> ExposureModel:
    """JWST NIRISS AMI: 7-hole mask, per-hole hexikes, SUB80 at 65.6 mas.

    The aberration vector has 7 * n_hole_zernikes entries (see `model.pupil.ami_pupil`).
    `psf_pad` (optical pixels): 0 computes each exposure's PSF by its own MFT (exact);
    > 0 renders every exposure from one shared PSF per wavelength on the grid padded by
    that much a side (`ExposureModel.psf_pad`).
    """
    optics = Optics(
        ami_pupil(pupil_npix, n_hole_zernikes), npix * oversample, pixel_scale / oversample
    )
    bandpasses = {f: bandpass(f, nwavels) for f in filters}
    return ExposureModel(optics, bandpasses, oversample, psf_pad)


def field_model(
    npix: int = 64,
    oversample: int = 2,
    pupil_npix: int = 128,
    nwavels: int = 3,
    diameter: float = 1.0,
    zernike_js: tuple[int, ...] = (4, 5, 6, 7, 8, 9, 10),
    filters: tuple[str, ...] = ("F430M",),
    pixel_scale: float = 0.375,
    vane_width: float = 0.0,
    psf_pad: int = 0,
) -> ExposureModel:
    """A filled circular telescope imaging a star field (the pixel-calibration workload).

    Defaults: a 1 m aperture at 4.3 µm is Nyquist-sampled at ~0.44 arcsec, so detector
    pixels of 0.375 arcsec with 2× oversampling resolve the PSF. `vane_width` (metres):
    three spider vanes (`model.pupil.circular_pupil`); `psf_pad` (optical pixels): render
    the stars from one shared PSF per wavelength (`ExposureModel.psf_pad`), 0: one MFT
    per star.
    """
    optics = Optics(
        circular_pupil(pupil_npix, diameter, zernike_js, vane_width),
        npix * oversample,
        pixel_scale / oversample,
    )
    bandpasses = {f: bandpass(f, nwavels) for f in filters}
    return ExposureModel(optics, bandpasses, oversample, psf_pad)


def nominal_detector(npix: int, nonlinearity_terms: int = 2) -> dict:
    """Detector parameters of an ideal detector: unit flat, no IPC/BFE/non-linearity/dark."""
    ipc = jnp.zeros((3, 3)).at[1, 1].set(1.0)
    return {
        "flat": jnp.ones((npix, npix)),
        "ipc": ipc,
        "bfe": jnp.zeros(2),
        "nonlinearity": jnp.zeros(nonlinearity_terms),
        "dark": jnp.asarray(0.0),
        "jitter": jnp.asarray(0.0),
        "read_noise": jnp.asarray(10.0),
    }
