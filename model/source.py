"""Sources on the sky: rotation into detector axes, convolution with the PSF, binaries."""

import jax
import jax.numpy as jnp
from jax.scipy.ndimage import map_coordinates
from jaxtyping import Array, Float


def normalise_log_image(log_image: Float[Array, "n n"]) -> Float[Array, "n n"]:
    """Unit-sum image from a natural-log intensity image (a softmax over pixels)."""
    return jax.nn.softmax(log_image.ravel()).reshape(log_image.shape)


def rotate_points(
    points: Float[Array, "*k 2"], angle_deg: Float[Array, ""]
) -> Float[Array, "*k 2"]:
    """Rotate (x, y) points (last axis) counter-clockwise by `angle_deg` about the origin."""
    a = jnp.deg2rad(angle_deg)
    c, s = jnp.cos(a), jnp.sin(a)
    x, y = points[..., 0], points[..., 1]
    return jnp.stack([c * x - s * y, s * x + c * y], axis=-1)


def rotate_image(image: Float[Array, "n n"], angle_deg: Float[Array, ""]) -> Float[Array, "n n"]:
    """Rotate an image counter-clockwise (x→y, rows = y) by `angle_deg` about its centre.

    Bilinear interpolation; flux that leaves the grid is lost, flux outside enters as 0.
    This is how a sky image (north up) is turned into detector axes by the roll angle.
    """
    n = image.shape[-1]
    centre = (n - 1) / 2
    yy, xx = jnp.mgrid[0:n, 0:n].astype(image.dtype) - centre
    back = rotate_points(jnp.stack([xx, yy], axis=-1), -angle_deg)
    return map_coordinates(image, [back[..., 1] + centre, back[..., 0] + centre], order=1)


def convolve_same(image: Float[Array, "n n"], psf: Float[Array, "m m"]) -> Float[Array, "m m"]:
    """Linear (zero-padded) convolution of a centred image with a PSF, on the PSF's grid.

    Exact discrete convolution by FFT. The image side must be odd so that its centre
    pixel, index (n-1)/2, maps onto the PSF grid's centre.
    """
    n, m = image.shape[-1], psf.shape[-1]
    if n % 2 == 0:
        raise ValueError(f"source image side must be odd so it has a centre pixel, got {n}")
    size = n + m - 1
    full = jnp.fft.irfft2(
        jnp.fft.rfft2(image, s=(size, size)) * jnp.fft.rfft2(psf, s=(size, size)), s=(size, size)
    )
    start = (n - 1) // 2
    return full[start : start + m, start : start + m]


def companion_offset(
    separation: Float[Array, ""], position_angle: Float[Array, ""], roll: Float[Array, ""]
) -> Float[Array, "2"]:
    """Detector-axis offset (x, y) of a companion, arcsec.

    `separation` in mas, `position_angle` in degrees east of north (north = sky +y,
    east = sky -x: sky axes have x to the west, as the resolved source's image). The sky
    offset is turned into detector axes by `roll` exactly as `rotate_image` turns a sky
    image (`rotate_points`, counter-clockwise).
    """
    pa = jnp.deg2rad(position_angle)
    sky = 1e-3 * separation * jnp.stack([-jnp.sin(pa), jnp.cos(pa)])
    return rotate_points(sky, roll)


def binary_components(
    position: Float[Array, "2"],
    log_flux: Float[Array, ""],
    separation: Float[Array, ""],
    position_angle: Float[Array, ""],
    contrast: Float[Array, ""],
    roll: Float[Array, ""],
) -> tuple[Float[Array, "2 2"], Float[Array, "2"]]:
    """Positions (2, 2) arcsec and count rates (2,) e-/s of a binary's primary and companion.

    The primary sits at `position`; the companion at `companion_offset` from it. The total
    count rate 10**log_flux is split by the flux ratio 10**(-0.4 contrast) (`contrast`:
    companion minus primary magnitude, Δm; > 0 for a fainter companion).
    """
    ratio = 10.0 ** (-0.4 * contrast)
    fluxes = 10.0**log_flux * jnp.stack([1.0 / (1.0 + ratio), ratio / (1.0 + ratio)])
    positions = jnp.stack([position, position + companion_offset(separation, position_angle, roll)])
    return positions, fluxes
