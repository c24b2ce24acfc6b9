"""Differentiable physics of JWST aperture-masking exposures (JAX, equinox, dLux).

Importing this package enables float64 in JAX: the likelihoods need it.
"""

import jax

jax.config.update("jax_enable_x64", True)

from model.exposure import PARAMETER_UNITS, ExposureModel, ExposureSpec, make_spec  # noqa: E402
from model.instruments import ami_model, field_model, nominal_detector  # noqa: E402

__all__ = [
    "PARAMETER_UNITS",
    "ExposureModel",
    "ExposureSpec",
    "ami_model",
    "field_model",
    "make_spec",
    "nominal_detector",
]
