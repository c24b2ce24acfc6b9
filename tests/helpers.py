"""Shared builders and numerical helpers for the physics tests.

Everything here is deliberately tiny (16-pixel detectors, 64-sample pupils, 3 wavelengths,
5 groups) so the whole physics suite runs in well under a minute per file on 2 CPU cores.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import model  # noqa: F401  (enables float64 before any array is made)
from model import ExposureModel, ExposureSpec, ami_model, field_model, make_spec, nominal_detector
from model.noise import noisy_slopes

NPIX = 16
OVERSAMPLE = 2
PUPIL_NPIX = 64
NWAVELS = 3
NGROUPS = 5
IMAGE_SIDE = 9
FILTER = "F430M"


def tiny_ami_model() -> ExposureModel:
    """NIRISS AMI with 16 detector pixels, 2× oversampling, a 64² pupil and 3 wavelengths.

    Aberrations: 2 hexike terms per hole (piston, tip) = 14 coefficients, nm.
    """
    return ami_model(
        npix=NPIX,
        oversample=OVERSAMPLE,
        pupil_npix=PUPIL_NPIX,
        nwavels=NWAVELS,
        n_hole_zernikes=2,
        filters=(FILTER,),
    )


def tiny_field_model() -> ExposureModel:
    """Filled-aperture star-field imager on the same tiny grids (7 Zernike terms)."""
    return field_model(
        npix=NPIX, oversample=OVERSAMPLE, pupil_npix=PUPIL_NPIX, nwavels=NWAVELS, filters=(FILTER,)
    )


def generic_detector(rng: np.random.Generator, npix: int = NPIX) -> dict[str, jax.Array]:
    """Detector parameters away from every special value: non-unit flat, asymmetric IPC
    (unit sum), non-zero BFE, negative non-linearity, jitter, dark and read noise."""
    params = nominal_detector(npix, nonlinearity_terms=2)
    ipc = np.array([[0.002, 0.015, 0.001], [0.018, 0.0, 0.012], [0.003, 0.017, 0.002]])
    ipc[1, 1] = 1.0 - ipc.sum()
    params.update(
        flat=jnp.asarray(1.0 + 0.03 * rng.standard_normal((npix, npix))),
        ipc=jnp.asarray(ipc),
        bfe=jnp.array([0.021, 0.013]),
        nonlinearity=jnp.array([-0.031, 0.004]),
        dark=jnp.asarray(2.3),
        jitter=jnp.asarray(0.31),
        read_noise=jnp.asarray(11.0),
    )
    return params


def generic_ami_params(seed: int = 0) -> dict[str, jax.Array]:
    """A resolved source off centre with tens of nm of aberration and a non-flat image."""
    rng = np.random.default_rng(seed)
    params = generic_detector(rng)
    params.update(
        position=jnp.array([0.023, -0.017]),
        log_flux=jnp.asarray(5.2),
        spectral_slope=jnp.asarray(0.7),
        aberrations=jnp.asarray(30.0 * rng.standard_normal(14)),
        log_image=jnp.asarray(0.8 * rng.standard_normal((IMAGE_SIDE, IMAGE_SIDE))),
    )
    return params


def generic_field_params(seed: int = 0) -> dict[str, jax.Array]:
    """Three stars of different brightness scattered over the tiny field."""
    rng = np.random.default_rng(seed)
    params = generic_detector(rng)
    params.update(
        positions=jnp.array([[-1.1, 0.6], [0.9, 1.2], [0.3, -1.4]]),
        log_fluxes=jnp.array([4.6, 4.9, 4.3]),
        pointing=jnp.array([0.07, -0.05]),
        log_scale=jnp.asarray(0.02),
        spectral_slope=jnp.asarray(-0.4),
        aberrations=jnp.asarray(25.0 * rng.standard_normal(7)),
    )
    return params


def ami_spec(nints: int = 20) -> ExposureSpec:
    return make_spec(FILTER, NGROUPS, roll=23.0, nints=nints)


def field_spec(nints: int = 20) -> ExposureSpec:
    return make_spec(FILTER, NGROUPS, roll=0.0, nints=nints, dither=(0.19, -0.11))


def simulate(
    exposure: ExposureModel, params: dict, spec: ExposureSpec, seed: int
) -> tuple[jax.Array, np.ndarray]:
    """Noisy slopes from the model's mean slopes at `params` (read noise from `params`)."""
    mean = np.asarray(eqx.filter_jit(exposure.slopes)(params, spec))
    rng = np.random.default_rng(seed)
    nints = int(spec.nints)
    return jnp.asarray(noisy_slopes(rng, mean, float(params["read_noise"]), nints)), mean


def directional_derivative(
    f: Callable[[dict], jax.Array], params: dict, name: str, direction: jax.Array, step: float
) -> float:
    """Central finite difference of f along `direction` in parameter `name`, with one
    Richardson extrapolation: (4 D(h/2) - D(h)) / 3, error O(h⁴) instead of O(h²)."""

    def at(t):
        return float(f({**params, name: params[name] + t * direction}))

    def central(h):
        return (at(h) - at(-h)) / (2 * h)

    return (4 * central(step / 2) - central(step)) / 3


def tree_allclose(a, b, rtol: float = 1e-7, atol: float = 0.0) -> bool:
    """True when two pytrees have the same structure and all leaves are close."""
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    if ta != tb:
        return False
    return all(
        np.shape(x) == np.shape(y) and np.allclose(x, y, rtol=rtol, atol=atol)
        for x, y in zip(la, lb, strict=True)
    )
