"""Suite-wide setup: float64 JAX, no implicit rank promotion, and session-scoped tiny models
shared by the physics tests.

`import model` turns float64 on; the assertion below fails loudly if that ever changes,
because every tolerance in the physics tests assumes double precision.

Implicit rank promotion (`x + y` with arrays of different rank) raises, as in equinox's own
suite: every broadcast in `model/` and `scaling/` must be spelled out. The environment
variable carries the same setting into the subprocesses and Ray workers the tests start.
"""

import os
from pathlib import Path

import jax
import pytest

import model  # noqa: F401
from tests.helpers import (
    generic_ami_params,
    generic_field_params,
    tiny_ami_model,
    tiny_field_model,
)

jax.config.update("jax_numpy_rank_promotion", "raise")
os.environ["JAX_NUMPY_RANK_PROMOTION"] = "raise"  # subprocesses and Ray workers
assert jax.config.jax_enable_x64, "import model must enable float64"


@pytest.fixture(scope="session")
def ami():
    """Tiny NIRISS AMI exposure model (16 px, 2× oversampled, 64² pupil, 3 wavelengths)."""
    return tiny_ami_model()


@pytest.fixture(scope="session")
def field():
    """Tiny filled-aperture star-field model on the same grids."""
    return tiny_field_model()


@pytest.fixture(scope="session")
def ami_params():
    """Generic resolved-source parameters: off-centre, aberrated, non-flat image, BFE, …"""
    return generic_ami_params()


@pytest.fixture(scope="session")
def field_params():
    """Generic three-star field parameters."""
    return generic_field_params()


DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "jw01093"
"""The real NIRISS AMI files of JWST program 1093, beside the repository (`../shared/`)."""


@pytest.fixture(scope="session")
def real_files() -> list[Path]:
    """The 20 real `_cal` files; the test is skipped where they are absent (a user's clone)."""
    files = sorted(DATA.glob("*_cal.fits"))
    if not files:
        pytest.skip(f"real JWST data not present at {DATA}")
    return files
