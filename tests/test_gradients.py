"""Reverse-mode gradients of `ExposureModel.nll` against central finite differences.

For every parameter group the automatic directional derivative ⟨∇L, v⟩ along a random
direction v must match a Richardson-extrapolated central difference to RTOL relative, in
float64; groups of at most MAX_ELEMENTWISE entries are also checked element by element.
The point is generic (off-centre source, tens of nm of aberration, non-zero jitter, BFE,
non-linearity, IPC and dark, a non-flat image, a roll), the data are noisy slopes simulated
at nearby true parameters, so every residual and every gradient is non-zero.

Steps are per group, in each parameter's own unit along a unit-RMS direction: large enough
that round-off (≈1e-16 × |L| / step, with |L| ≈ 5e3) stays below 1e-10 relative, small
enough that the O(step⁴) Richardson truncation does too. Observed errors are 1e-13 … 1e-9.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import PARAMETER_UNITS, ExposureModel
from tests.helpers import (
    NPIX,
    ami_spec,
    directional_derivative,
    field_spec,
    simulate,
)

RTOL = 1e-6
MAX_ELEMENTWISE = 16

STEPS = {
    "position": 2e-4,  # arcsec (AMI fringe period ≈ 0.17 arcsec)
    "positions": 5e-4,  # arcsec (field PSF core ≈ 0.9 arcsec)
    "log_flux": 1e-3,  # dex
    "log_fluxes": 1e-3,  # dex
    "pointing": 5e-4,  # arcsec
    "log_scale": 1e-3,  # dex
    "spectral_slope": 3e-2,
    "aberrations": 1e-1,  # nm (coefficients are tens of nm)
    "log_image": 3e-3,
    "flat": 1e-3,
    "ipc": 1e-3,
    "bfe": 1e-2,
    "nonlinearity": 1e-2,
    "jitter": 1e-3,  # detector pixels
    "dark": 1e-2,  # e-/s
    "read_noise": 1e-2,  # e-
    "separation": 2e-1,  # mas
    "position_angle": 1e-1,  # degrees (≈ 0.2 mas at 140 mas)
    "contrast": 2e-3,  # mag
}

AMI_GROUPS = [
    "position",
    "log_flux",
    "spectral_slope",
    "aberrations",
    "log_image",
    "flat",
    "ipc",
    "bfe",
    "nonlinearity",
    "jitter",
    "dark",
    "read_noise",
]
POINT_GROUPS = ["position", "log_flux", "spectral_slope", "aberrations"]
FIELD_GROUPS = ["positions", "log_fluxes", "pointing", "log_scale", "aberrations", "flat"]
SHARED_PSF_GROUPS = ["positions", "pointing", "aberrations"]
BINARY_GROUPS = ["separation", "position_angle", "contrast", "position", "log_flux"]


def _perturbed(truth: dict, seed: int) -> dict:
    """Move every parameter by ~2 % of its size (sign-preserving for positive ones)."""
    rng = np.random.default_rng(seed)
    return {
        k: v + 0.02 * (jnp.abs(v) + 0.01) * jnp.asarray(rng.standard_normal(np.shape(v)))
        for k, v in truth.items()
    }


class Problem:
    """A compiled loss and gradient at one generic point."""

    def __init__(self, exposure, truth, spec, seed):
        data, _ = simulate(exposure, truth, spec, seed)
        bad = jnp.zeros((NPIX, NPIX), dtype=bool).at[3, 4].set(True).at[11, 7].set(True)

        def loss(p):
            return exposure.nll(p, spec, data, bad)

        self.loss = eqx.filter_jit(loss)
        self.params = _perturbed(truth, seed + 100)
        self.grad = eqx.filter_jit(jax.grad(loss))(self.params)

    def check_direction(self, name: str, direction) -> float:
        """Relative error of ⟨∇L, v⟩ against the finite difference along v."""
        ad = float(jnp.vdot(self.grad[name], direction))
        fd = directional_derivative(self.loss, self.params, name, direction, STEPS[name])
        assert ad != 0.0, f"{name}: zero directional derivative, the check would be vacuous"
        return abs(fd - ad) / abs(ad)


@pytest.fixture(scope="module")
def ami_problem(ami, ami_params):
    return Problem(ami, ami_params, ami_spec(), seed=1)


@pytest.fixture(scope="module")
def point_problem(ami, ami_params):
    truth = {k: v for k, v in ami_params.items() if k != "log_image"}
    return Problem(ami, truth, ami_spec(), seed=2)


@pytest.fixture(scope="module")
def binary_problem(ami, ami_params):
    """A binary: companion 140 mas away at PA 63°, 1.2 mag fainter."""
    truth = {k: v for k, v in ami_params.items() if k != "log_image"}
    binary = {"separation": 140.0, "position_angle": 63.0, "contrast": 1.2}
    truth.update({k: jnp.asarray(v) for k, v in binary.items()})
    return Problem(ami, truth, ami_spec(), seed=4)


@pytest.fixture(scope="module")
def field_problem(field, field_params):
    return Problem(field, field_params, field_spec(), seed=3)


@pytest.fixture(scope="module")
def shared_psf_problem(field, field_params):
    """The star field rendered from the shared PSF (`model.shared_psf`)."""
    shared = ExposureModel(field.optics, field.bandpasses, field.oversample, NPIX + 8)
    return Problem(shared, field_params, field_spec(), seed=5)


def _check_group(problem: Problem, name: str, seed: int):
    value = problem.params[name]
    rng = np.random.default_rng(seed)
    direction = jnp.asarray(rng.standard_normal(np.shape(value)))
    errors = {"random": problem.check_direction(name, direction)}
    if np.size(value) <= MAX_ELEMENTWISE:
        for i in range(np.size(value)):
            unit = jnp.zeros(np.size(value)).at[i].set(1.0).reshape(np.shape(value))
            errors[f"[{i}]"] = problem.check_direction(name, unit)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= RTOL, f"{name}{worst}: relative error {errors[worst]:.2e}"
    return errors


def test_every_documented_parameter_is_checked(ami_params, field_params):
    assert set(AMI_GROUPS) | set(FIELD_GROUPS) | set(BINARY_GROUPS) == set(PARAMETER_UNITS)
    assert set(AMI_GROUPS) == set(ami_params)
    assert set(FIELD_GROUPS) <= set(field_params)
    assert set(STEPS) == set(PARAMETER_UNITS)


@pytest.mark.parametrize("name", AMI_GROUPS)
def test_ami_resolved_source_gradient(ami_problem, name):
    _check_group(ami_problem, name, seed=AMI_GROUPS.index(name))


@pytest.mark.parametrize("name", POINT_GROUPS)
def test_ami_point_source_gradient(point_problem, name):
    _check_group(point_problem, name, seed=7)


@pytest.mark.parametrize("name", BINARY_GROUPS)
def test_binary_gradient(binary_problem, name):
    _check_group(binary_problem, name, seed=13)


@pytest.mark.parametrize("name", FIELD_GROUPS)
def test_star_field_gradient(field_problem, name):
    _check_group(field_problem, name, seed=11)


@pytest.mark.parametrize("name", SHARED_PSF_GROUPS)
def test_shared_psf_star_field_gradient(shared_psf_problem, name):
    _check_group(shared_psf_problem, name, seed=15)
