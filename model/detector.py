"""Detector stages acting on images: jitter, pixel integration, inter-pixel capacitance."""

import jax.numpy as jnp
from jaxtyping import Array, Float


def apply_jitter(image: Float[Array, "m m"], sigma_pix: Float[Array, ""]) -> Float[Array, "m m"]:
    """Gaussian pointing jitter of standard deviation `sigma_pix` (in this image's pixels).

    Multiplies the image's spectrum by the Gaussian transfer function (flux preserving,
    differentiable in sigma, periodic at the grid edge: keep flux away from the edge).
    """
    m = image.shape[-1]
    f = jnp.fft.fftfreq(m)
    fr = jnp.fft.rfftfreq(m)
    transfer = jnp.exp(-2 * jnp.pi**2 * sigma_pix**2 * (f[:, None] ** 2 + fr[None, :] ** 2))
    return jnp.fft.irfft2(jnp.fft.rfft2(image) * transfer, s=image.shape)


def downsample(image: Float[Array, "m m"], factor: int) -> Float[Array, "p p"]:
    """Sum `factor`×`factor` blocks: oversampled pixels → detector pixels."""
    m = image.shape[-1]
    if m % factor:
        raise ValueError(f"grid of {m} pixels is not divisible by oversample {factor}")
    p = m // factor
    return image.reshape(p, factor, p, factor).sum(axis=(1, 3))


def apply_ipc(
    charge: Float[Array, "... p q"], kernel: Float[Array, "3 3"]
) -> Float[Array, "... p q"]:
    """Inter-pixel capacitance: 3×3 convolution of each frame (zero outside the array).

    Written as nine shifted, weighted copies rather than a convolution op: XLA:CPU's
    float64 convolution with implicit padding reads before its input for frames 16, 32,
    64 or 128 pixels wide (jax 0.10.2), which can segfault.
    """
    p, q = charge.shape[-2:]
    padded = jnp.pad(charge, [(0, 0)] * (charge.ndim - 2) + [(1, 1), (1, 1)])
    return sum(
        kernel[a, b] * padded[..., 2 - a : 2 - a + p, 2 - b : 2 - b + q]
        for a in range(3)
        for b in range(3)
    )
