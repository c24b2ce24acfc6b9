"""Pupil planes sampled on a grid: transmission and aberration bases.

Built once with dLux's geometry and Zernike utilities (plain arrays), then held fixed by
the optics: evaluating a precomputed basis is much faster than rebuilding apertures.
"""

import dLux.utils as dlu
import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from model.constants import HOLE_CENTRES, HOLE_FLAT_TO_FLAT, PRIMARY_DIAMETER

NM = 1e-9


class Pupil(eqx.Module):
    """A sampled pupil: amplitude transmission and an OPD basis.

    Attributes:
        transmission: (n, n) intensity transmission in [0, 1].
        basis: (nterms, n, n) optical path difference per unit coefficient, metres per nm.
        pixel_scale: pupil sample spacing, metres.
    """

    transmission: Float[Array, "n n"]
    basis: Float[Array, "nterms n n"]
    pixel_scale: float = eqx.field(static=True)

    @property
    def npix(self) -> int:
        return self.transmission.shape[-1]

    def opd(self, coefficients: Float[Array, " nterms"]) -> Float[Array, "n n"]:
        """Optical path difference (metres) for coefficients in nm."""
        return jnp.tensordot(coefficients, self.basis, axes=1)


def _coords(npix: int, diameter: float) -> Float[Array, "2 n n"]:
    return dlu.pixel_coords(npix, diameter=diameter)


def hexagon(coords: Float[Array, "2 n n"], centre, flat_to_flat: float, soft: float):
    """Anti-aliased hexagon (flats along y) of the given flat-to-flat width, metres."""
    local = dlu.translate_coords(coords, jnp.asarray(centre))
    return dlu.soft_reg_polygon(local, flat_to_flat / np.sqrt(3.0), 6, clip_dist=soft)


def ami_pupil(
    npix: int = 256,
    n_hole_zernikes: int = 3,
    diameter: float = PRIMARY_DIAMETER,
    hole_centres=HOLE_CENTRES,
    flat_to_flat: float = HOLE_FLAT_TO_FLAT,
) -> Pupil:
    """The NIRISS non-redundant mask on the primary.

    Basis terms, in order: `n_hole_zernikes` hexike (Noll 1, 2, 3, …) terms for each of
    the 7 holes (hole-major), then a defocus (Noll 4) over the whole primary.

    Args:
        npix: pupil samples across `diameter`.
        n_hole_zernikes: Zernike terms per hole (1 = piston only).
        diameter: side of the sampled square, metres.
        hole_centres: (7, 2) hole centres, metres.
        flat_to_flat: hole width, metres.
    """
    if n_hole_zernikes < 1:
        raise ValueError(f"n_hole_zernikes must be >= 1, got {n_hole_zernikes}")
    coords = _coords(npix, diameter)
    pixel_scale = diameter / npix
    primary = dlu.soft_circle(coords, diameter / 2, clip_dist=pixel_scale / 2)
    js = list(range(1, n_hole_zernikes + 1))
    circumscribed = 2 * flat_to_flat / np.sqrt(3.0)
    holes, hole_basis = [], []
    for centre in np.asarray(hole_centres):
        hole = hexagon(coords, centre, flat_to_flat, pixel_scale / 2)
        local = dlu.translate_coords(coords, jnp.asarray(centre))
        zern = dlu.polike_basis(6, js, local, circumscribed)
        holes.append(hole)
        hole_basis.append(zern * (hole > 0))
    mask = jnp.clip(sum(holes), 0.0, 1.0) * primary
    defocus = dlu.zernike(4, coords, diameter) * (mask > 0)
    basis = jnp.concatenate([jnp.concatenate(hole_basis), defocus[None]]) * NM
    return Pupil(mask, basis, pixel_scale)


def circular_pupil(
    npix: int = 128,
    diameter: float = 1.0,
    zernike_js: tuple[int, ...] = (4, 5, 6, 7, 8, 9, 10),
) -> Pupil:
    """A filled circular aperture with a Zernike (Noll `zernike_js`) basis over it."""
    coords = _coords(npix, diameter)
    pixel_scale = diameter / npix
    mask = dlu.soft_circle(coords, diameter / 2, clip_dist=pixel_scale / 2)
    basis = dlu.zernike_basis(list(zernike_js), coords, diameter) * (mask > 0) * NM
    return Pupil(mask, basis, pixel_scale)
