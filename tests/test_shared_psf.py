"""Scenes rendered from one shared PSF per wavelength equal one MFT per source.

Measured on the suite's tiny field model (16 pixels, 2× oversampled, 64² pupil, 3
wavelengths, 25 nm of aberration): with the grid padded by half its side plus 8 optical
pixels, the largest difference is 3.6e-7 of the peak for three stars and a dither, 3.8e-7
for one point source (1.7e-6 and 1.9e-6 with no margin: the far wings that the padded
grid truncates are the error). At 64 pixels, 5 stars: 1.7e-8 with no margin.

A resolved source (the tiny AMI model, a 9-pixel image rolled by 23°, a pointing and a
dither of ~1.7 optical pixels, spectral slope 0.7) is compared with the exact mode on a
grid padded as much and cropped: the exact mode on the image's own grid drops the light
that the PSF carries past that grid's edge, which on the tiny AMI grid (smaller than the
PSF) is 6% of the flux. Largest difference: 1.8e-3 of the peak with 6 pixels of padding,
1.5e-4 with 8, 3.6e-5 with 12, 5.1e-6 with 16 (the tiny AMI PSF is still bright at the
padded grid's edge, which the Fourier shift wraps round).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import ExposureModel, make_spec
from model.optics import Optics
from tests.helpers import FILTER, NGROUPS, NPIX, OVERSAMPLE

TOLERANCE = 1e-6
"""Largest difference allowed, as a fraction of the image's peak."""

PAD = NPIX * OVERSAMPLE // 2 + 8
"""Optical pixels added a side: the field's half width plus a margin for the wings."""


def shared(field: ExposureModel) -> ExposureModel:
    return ExposureModel(field.optics, field.bandpasses, field.oversample, PAD)


@pytest.fixture(scope="module")
def illumination():
    return eqx.filter_jit(lambda m, p, s: m.illumination(p, s))


def _peak_difference(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.asarray(b)))


def test_star_field_matches_one_mft_per_star(field, field_params, illumination):
    spec = make_spec(FILTER, NGROUPS, dither=(0.41, -0.23))
    exact = illumination(field, field_params, spec)
    fast = illumination(shared(field), field_params, spec)
    assert _peak_difference(fast, exact) < TOLERANCE


def test_one_point_source_is_the_one_star_case(field, field_params, illumination):
    params = {
        k: v
        for k, v in field_params.items()
        if k not in ("positions", "log_fluxes", "pointing", "log_scale")
    }
    params.update(position=jnp.array([1.3, -0.8]), log_flux=jnp.asarray(5.0))
    spec = make_spec(FILTER, NGROUPS, dither=(-0.2, 0.1))
    exact = illumination(field, params, spec)
    fast = illumination(shared(field), params, spec)
    assert _peak_difference(fast, exact) < TOLERANCE
    np.testing.assert_allclose(float(jnp.sum(fast)), float(jnp.sum(exact)), rtol=1e-6)


RESOLVED_PAD = 16
"""Optical pixels added a side for the resolved source (its half width is 4)."""

RESOLVED_TOLERANCE = 2e-5
"""Largest difference allowed for the resolved source's image, fraction of the peak."""

GRADIENT_TOLERANCE = 2e-3
"""Largest difference allowed for the gradients of a random projection of the image,
fraction of each gradient's largest entry (measured: 1.1e-3 for the spectral slope, whose
gradient is a difference between wavelengths, 1.8e-4 for the aberrations, 1.0e-4 for the
position, 4e-5 for the image, 1e-6 for the flux)."""


def _exact_and_shared(ami: ExposureModel) -> tuple[ExposureModel, ExposureModel]:
    """The exact mode on the optical grid padded by `RESOLVED_PAD` a side, and the
    shared-PSF mode on the model's own grid padded as much."""
    o = ami.optics
    padded = Optics(o.pupil, o.psf_npix + 2 * RESOLVED_PAD, o.psf_pixel_scale)
    exact = ExposureModel(padded, ami.bandpasses, ami.oversample)
    return exact, ExposureModel(o, ami.bandpasses, ami.oversample, RESOLVED_PAD)


def test_resolved_source_and_its_gradient_match_the_exact_convolution(ami, ami_params):
    exact, fast = _exact_and_shared(ami)
    spec = make_spec(FILTER, NGROUPS, roll=23.0, dither=(0.05, -0.03))
    project = jnp.asarray(np.random.default_rng(0).standard_normal((ami.optics.psf_npix,) * 2))
    crop = slice(RESOLVED_PAD, -RESOLVED_PAD)

    def value_and_grad(m: ExposureModel, padded: bool):
        def f(p):
            image = m.illumination(p, spec)
            image = image[crop, crop] if padded else image
            return jnp.sum(project * image), image

        return eqx.filter_jit(jax.value_and_grad(f, has_aux=True))(ami_params)

    (_, want), grad_want = value_and_grad(exact, True)
    (_, got), grad_got = value_and_grad(fast, False)
    assert _peak_difference(got, want) < RESOLVED_TOLERANCE
    np.testing.assert_allclose(float(jnp.sum(got)), float(jnp.sum(want)), rtol=1e-6)
    for name in ("position", "aberrations", "log_image", "spectral_slope", "log_flux"):
        g, w = np.asarray(grad_got[name]), np.asarray(grad_want[name])
        assert np.max(np.abs(g - w)) < GRADIENT_TOLERANCE * np.max(np.abs(w)), name
