"""Image regularisers: pure functions of a unit-sum image, each multiplied by a weight.

All take an (n, n) non-negative image that sums to 1 and return a scalar penalty.
"""

import jax.numpy as jnp
from jaxtyping import Array, Float


def _gradients(image):
    return jnp.diff(image, axis=-1)[:-1, :], jnp.diff(image, axis=-2)[:, :-1]


def total_variation(image: Float[Array, "n n"], eps: float = 1e-12) -> Float[Array, ""]:
    """Isotropic total variation Σ sqrt(∂x² + ∂y² + eps) (l1 of the gradient, smoothed)."""
    gx, gy = _gradients(image)
    return jnp.sum(jnp.sqrt(gx**2 + gy**2 + eps))


def total_squared_variation(image: Float[Array, "n n"]) -> Float[Array, ""]:
    """Σ (∂x² + ∂y²): the l2 (smooth) form of total variation."""
    gx, gy = _gradients(image)
    return jnp.sum(gx**2 + gy**2)


def max_entropy(image: Float[Array, "n n"], floor: float = 1e-30) -> Float[Array, ""]:
    """Relative entropy Σ p log(p / q) to the flat prior q = 1/npix (≥ 0, 0 when flat)."""
    p = jnp.maximum(image, floor)
    return jnp.sum(p * jnp.log(p * image.size))


def l1(image: Float[Array, "n n"]) -> Float[Array, ""]:
    """Σ |p|."""
    return jnp.sum(jnp.abs(image))


def l2(image: Float[Array, "n n"]) -> Float[Array, ""]:
    """Σ p² (Tikhonov)."""
    return jnp.sum(image**2)


REGULARISERS = {
    "tv": total_variation,
    "tsv": total_squared_variation,
    "maxent": max_entropy,
    "l1": l1,
    "l2": l2,
}
"""Regularisers by the names used in configs."""


def regularisation(image: Float[Array, "n n"], weights: dict[str, float]) -> Float[Array, ""]:
    """Weighted sum of the named regularisers, e.g. {"tv": 1.0, "maxent": 0.1}."""
    unknown = set(weights) - set(REGULARISERS)
    if unknown:
        raise ValueError(f"unknown regulariser(s) {sorted(unknown)}; known: {sorted(REGULARISERS)}")
    return sum(w * REGULARISERS[name](image) for name, w in weights.items())
