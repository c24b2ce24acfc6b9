"""Image regularisers: minimal where they should be, finite gradients, strict names."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.regularisers import (
    REGULARISERS,
    l1,
    l2,
    max_entropy,
    regularisation,
    total_squared_variation,
    total_variation,
)
from model.source import normalise_log_image

N = 11
FLAT = jnp.full((N, N), 1.0 / N**2)


def _random_image(seed=0):
    rng = np.random.default_rng(seed)
    return normalise_log_image(jnp.asarray(rng.standard_normal((N, N))))


def _point_image():
    return jnp.zeros((N, N)).at[N // 2, N // 2].set(1.0)


def test_flat_image_is_the_minimum_of_the_smoothness_and_entropy_terms():
    """TV ≈ 0 (only the √eps smoothing per pixel pair), TSV = 0 and relative entropy = 0
    for a flat image; all three are larger for any structured unit-sum image."""
    eps = 1e-12
    assert float(total_variation(FLAT, eps)) <= (N - 1) ** 2 * np.sqrt(eps) * (1 + 1e-12)
    assert float(total_squared_variation(FLAT)) == 0.0
    assert abs(float(max_entropy(FLAT))) < 1e-15
    for image in (_random_image(0), _random_image(1), _point_image()):
        assert float(total_variation(image)) > 1e-3
        assert float(total_squared_variation(image)) > 1e-6
        assert float(max_entropy(image)) > 1e-3


def test_max_entropy_is_the_kl_divergence_to_flat():
    """Σ p log(p N²) = KL(p ‖ flat); a point source reaches the maximum log(N²)."""
    image = np.asarray(_random_image(2))
    expected = np.sum(image * np.log(image * image.size))
    np.testing.assert_allclose(max_entropy(jnp.asarray(image)), expected, rtol=1e-12)
    np.testing.assert_allclose(max_entropy(_point_image()), np.log(N**2), rtol=1e-12)


def test_total_variation_of_a_step_is_its_height_times_length():
    """A vertical step of height h between columns: TV = h × (N-1) rows (plus √eps terms)."""
    h = 0.01
    image = jnp.zeros((N, N)).at[:, N // 2 :].set(h)
    assert abs(float(total_variation(image, eps=0.0)) - h * (N - 1)) < 1e-15
    assert abs(float(total_squared_variation(image)) - h**2 * (N - 1)) < 1e-15


def test_l1_and_l2_of_unit_sum_images():
    """l1 is 1 for every non-negative unit-sum image; l2 is smallest (1/N²) when flat."""
    for image in (FLAT, _random_image(3), _point_image()):
        np.testing.assert_allclose(l1(image), 1.0, rtol=1e-12)
    np.testing.assert_allclose(l2(FLAT), 1.0 / N**2, rtol=1e-12)
    assert float(l2(_random_image(3))) > float(l2(FLAT))
    np.testing.assert_allclose(l2(_point_image()), 1.0)


@pytest.mark.parametrize("name", sorted(REGULARISERS))
@pytest.mark.parametrize("which", ["flat", "random", "point"])
def test_gradients_are_finite(name, which):
    """Through the softmax image parametrisation, at a flat image (TV's kink), a random one
    and a near-point image (max-entropy's log near 0)."""
    logs = {
        "flat": jnp.zeros((N, N)),
        "random": jnp.asarray(np.random.default_rng(4).standard_normal((N, N))),
        "point": jnp.full((N, N), -60.0).at[N // 2, N // 2].set(0.0),
    }

    def penalty(log_image):
        return REGULARISERS[name](normalise_log_image(log_image))

    grad = jax.grad(penalty)(logs[which])
    assert np.all(np.isfinite(grad))
    # Directly in the image too, where the point image has exact zeros.
    image = {"flat": FLAT, "random": _random_image(4), "point": _point_image()}[which]
    assert np.all(np.isfinite(jax.grad(REGULARISERS[name])(image)))


def test_regularisation_is_the_weighted_sum():
    image = _random_image(5)
    weights = {"tv": 2.0, "maxent": 0.3, "l2": 5.0}
    expected = 2.0 * total_variation(image) + 0.3 * max_entropy(image) + 5.0 * l2(image)
    np.testing.assert_allclose(regularisation(image, weights), expected, rtol=1e-14)
    assert float(regularisation(image, {})) == 0.0


def test_regularisation_rejects_unknown_names():
    with pytest.raises(ValueError, match="entropy"):
        regularisation(FLAT, {"tv": 1.0, "entropy": 1.0})
