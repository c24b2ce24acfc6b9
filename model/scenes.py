"""An Io-like scene: a limb-darkened disk with unresolved volcanic hot spots.

Sky axes: rows are y (north up), columns x with x increasing to celestial west, i.e. the
image as it appears on the sky with east to the left. Longitudes are west longitudes, as for
Io: the sub-observer longitude grows with time, so spots cross the disk from the east
(left) limb to the west (right) limb. Io's spin axis is taken to point to celestial north.
"""

import equinox as eqx
import jax.numpy as jnp
from jax.scipy.special import erf
from jaxtyping import Array, Float

from model.constants import IO_ROTATION_PERIOD_H


def sub_observer_longitude(
    mjd: Float[Array, ""],
    reference_mjd: float,
    reference_longitude: float,
    period_h: float = IO_ROTATION_PERIOD_H,
) -> Float[Array, ""]:
    """West longitude of the sub-observer point at `mjd`, degrees in [0, 360).

    Args:
        mjd: time, MJD (days).
        reference_mjd: time at which the sub-observer longitude is `reference_longitude`.
        reference_longitude: sub-observer west longitude at `reference_mjd`, degrees.
        period_h: rotation period, hours.
    """
    hours = (mjd - reference_mjd) * 24.0
    return jnp.mod(reference_longitude + 360.0 * hours / period_h, 360.0)


def spot_geometry(
    latitudes: Float[Array, " k"],
    longitudes: Float[Array, " k"],
    sub_longitude: Float[Array, ""],
    sub_latitude: float,
    diameter: float,
) -> tuple[Float[Array, "k 2"], Float[Array, " k"]]:
    """Orthographic projection of surface points onto the sky.

    Args:
        latitudes: (k,) planetographic latitudes, degrees.
        longitudes: (k,) west longitudes, degrees.
        sub_longitude: sub-observer west longitude, degrees.
        sub_latitude: sub-observer latitude, degrees.
        diameter: disk diameter, arcsec.

    Returns:
        xy: (k, 2) sky offsets (x west, y north) from the disk centre, arcsec.
        mu: (k,) cosine of each point's angle from the sub-observer point (< 0: far side).
    """
    lat, lon = jnp.deg2rad(latitudes), jnp.deg2rad(longitudes)
    lat0, lon0 = jnp.deg2rad(sub_latitude), jnp.deg2rad(sub_longitude)
    radius = diameter / 2
    x = radius * jnp.cos(lat) * jnp.sin(lon0 - lon)
    y = radius * (jnp.cos(lat0) * jnp.sin(lat) - jnp.sin(lat0) * jnp.cos(lat) * jnp.cos(lon - lon0))
    mu = jnp.sin(lat0) * jnp.sin(lat) + jnp.cos(lat0) * jnp.cos(lat) * jnp.cos(lon - lon0)
    return jnp.stack([x, y], axis=-1), mu


def limb_darkened_disk(
    n: int, pixel_scale: float, diameter: float, limb_darkening: float, subsample: int = 5
) -> Float[Array, "n n"]:
    """Unit-sum image of a disk with linear limb darkening I(μ) = 1 - u (1 - μ).

    Each pixel averages `subsample`² samples, which anti-aliases the limb.

    Args:
        n: image side, pixels (odd: the disk is centred on the central pixel).
        pixel_scale: arcsec per pixel.
        diameter: disk diameter, arcsec.
        limb_darkening: u in [0, 1].
        subsample: samples per pixel per axis.
    """
    offsets = (jnp.arange(subsample, dtype=jnp.float64) + 0.5) / subsample - 0.5
    centres = jnp.arange(n, dtype=jnp.float64) - (n - 1) / 2
    axis = ((centres[:, None] + offsets[None, :]) * pixel_scale).ravel()
    r2 = (axis[:, None] ** 2 + axis[None, :] ** 2) / (diameter / 2) ** 2
    mu = jnp.sqrt(jnp.clip(1.0 - r2, 0.0, None))
    intensity = jnp.where(r2 < 1.0, 1.0 - limb_darkening * (1.0 - mu), 0.0)
    image = intensity.reshape(n, subsample, n, subsample).sum(axis=(1, 3))
    return image / jnp.sum(image)


def _pixel_integrals(centres: Float[Array, " k"], n: int, sigma: float) -> Float[Array, "k n"]:
    """Fraction of a 1-D Gaussian (centre and sigma in pixels) falling in each of n pixels."""
    edges = jnp.arange(n + 1, dtype=jnp.float64) - 0.5
    cdf = 0.5 * erf((edges[None, :] - centres[:, None]) / (jnp.sqrt(2.0) * sigma))
    return jnp.diff(cdf, axis=-1)


def point_sources(
    xy: Float[Array, "k 2"],
    weights: Float[Array, " k"],
    n: int,
    pixel_scale: float,
    sigma_pix: float = 0.5,
) -> Float[Array, "n n"]:
    """Compact Gaussians (pixel-integrated, sigma in pixels) of the given total weights.

    Args:
        xy: (k, 2) offsets (x, y) from the central pixel, arcsec.
        weights: (k,) flux of each source.
        n: image side, pixels.
        pixel_scale: arcsec per pixel.
        sigma_pix: Gaussian sigma, pixels.
    """
    centre = (n - 1) / 2
    gx = _pixel_integrals(xy[:, 0] / pixel_scale + centre, n, sigma_pix)
    gy = _pixel_integrals(xy[:, 1] / pixel_scale + centre, n, sigma_pix)
    return jnp.einsum("k,ki,kj->ij", weights, gy, gx)


class IoScene(eqx.Module):
    """Io as a limb-darkened disk with volcanoes, rotating with period `period_h`.

    Attributes:
        latitudes: (k,) volcano latitudes, degrees.
        longitudes: (k,) volcano west longitudes, degrees.
        brightness: (k,) volcano flux relative to the disk's total flux (seen face-on).
        diameter: disk diameter, arcsec.
        limb_darkening: linear limb-darkening coefficient u.
        reference_mjd: time at which the sub-observer longitude is `reference_longitude`.
        reference_longitude: sub-observer west longitude at `reference_mjd`, degrees.
        sub_latitude: sub-observer latitude, degrees.
        period_h: rotation period, hours.
    """

    latitudes: Float[Array, " k"]
    longitudes: Float[Array, " k"]
    brightness: Float[Array, " k"]
    diameter: float = eqx.field(static=True)
    limb_darkening: float = eqx.field(static=True)
    reference_mjd: float = eqx.field(static=True)
    reference_longitude: float = eqx.field(static=True)
    sub_latitude: float = eqx.field(static=True, default=0.0)
    period_h: float = eqx.field(static=True, default=IO_ROTATION_PERIOD_H)

    def sub_longitude(self, mjd: Float[Array, ""]) -> Float[Array, ""]:
        """Sub-observer west longitude at `mjd`, degrees."""
        return sub_observer_longitude(
            mjd, self.reference_mjd, self.reference_longitude, self.period_h
        )

    @eqx.filter_jit
    def spots(self, mjd: Float[Array, ""]) -> tuple[Float[Array, "k 2"], Float[Array, " k"]]:
        """(xy, visibility) of the volcanoes at `mjd`.

        xy: (k, 2) sky offsets (x west, y north) from the disk centre, arcsec.
        visibility: (k,) max(cos(angle from the sub-observer point), 0): 0 on the far side.
        """
        xy, mu = spot_geometry(
            self.latitudes,
            self.longitudes,
            self.sub_longitude(mjd),
            self.sub_latitude,
            self.diameter,
        )
        return xy, jnp.maximum(mu, 0.0)

    @eqx.filter_jit
    def image(
        self, mjd: Float[Array, ""], n: int, pixel_scale: float, sigma_pix: float = 0.5
    ) -> Float[Array, "n n"]:
        """Unit-sum (n, n) image at `mjd`, sky axes, `pixel_scale` arcsec per pixel (n odd)."""
        if n % 2 == 0:
            raise ValueError(f"image side must be odd so the disk has a centre pixel, got {n}")
        xy, visibility = self.spots(mjd)
        weights = self.brightness * visibility
        disk = limb_darkened_disk(n, pixel_scale, self.diameter, self.limb_darkening)
        image = disk + point_sources(xy, weights, n, pixel_scale, sigma_pix)
        return image / jnp.sum(image)
