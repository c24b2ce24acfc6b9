"""Pupil planes sampled on a grid: transmission and aberration bases.

Built once with dLux's geometry and Zernike utilities (plain arrays), then held fixed by
the optics: evaluating a precomputed basis is much faster than rebuilding apertures.

Every basis is held without its global piston and tip/tilt: a constant OPD over the
whole pupil changes only the phase of the field, and an OPD linear across it is a shift
of every source on the detector, which the source positions carry. Coefficient
combinations that would make only those three modes do nothing (`Pupil.observable`
projects them out), so a fit cannot wander along them and its coefficients can be
compared with the truth directly.
"""

import dLux.utils as dlu
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from model.constants import HOLE_CENTRES, HOLE_FLAT_TO_FLAT, NM, PRIMARY_DIAMETER

NULL_TOLERANCE = 1e-9
"""Eigenvalues of the basis Gram matrix below this fraction of the largest are null."""


def _zernike_basis(js, coords: Float[Array, "2 n n"], diameter: float) -> Float[Array, "k n n"]:
    """`dlu.zernike_basis` (Noll indices `js`), which multiplies arrays of different rank
    inside: allowed there whatever `jax_numpy_rank_promotion` says (the tests make it raise)."""
    with jax.numpy_rank_promotion("allow"):
        return dlu.zernike_basis(list(js), coords, diameter)


class Pupil(eqx.Module):
    """A sampled pupil: amplitude transmission and an OPD basis.

    Attributes:
        transmission: (n, n) intensity transmission in [0, 1].
        basis: (nterms, n, n) optical path difference per unit coefficient, metres per nm,
            with its transmission-weighted global piston and tip/tilt removed.
        observable: (nterms, nterms) orthogonal projector onto the coefficients that
            change the OPD (identity less the null directions of `basis`).
        pixel_scale: pupil sample spacing, metres.
    """

    transmission: Float[Array, "n n"]
    basis: Float[Array, "nterms n n"]
    observable: Float[Array, "nterms nterms"]
    pixel_scale: float = eqx.field(static=True)

    @property
    def npix(self) -> int:
        return self.transmission.shape[-1]

    def opd(self, coefficients: Float[Array, " nterms"]) -> Float[Array, "n n"]:
        """Optical path difference (metres) for coefficients in nm."""
        return jnp.tensordot(coefficients, self.basis, axes=1)

    def canonical(self, coefficients: Float[Array, " nterms"]) -> Float[Array, " nterms"]:
        """The shortest coefficient vector with the same OPD, nm."""
        return self.observable @ coefficients


def make_pupil(transmission, basis, pixel_scale: float) -> Pupil:
    """A `Pupil` from a raw (nterms, n, n) basis in metres per nm: removes the global
    piston and tip/tilt of every term (weighted by transmission) and finds the null
    coefficient directions."""
    weight = np.asarray(transmission, dtype=np.float64)
    raw = np.asarray(basis, dtype=np.float64)
    n = weight.shape[-1]
    xx, yy = np.asarray(_coords(n, n * pixel_scale))
    modes = np.stack([np.ones_like(xx), xx, yy]).reshape(3, -1)
    flat = raw.reshape(raw.shape[0], -1)
    gram_modes = (modes * weight.ravel()) @ modes.T
    fit = np.linalg.solve(gram_modes, (modes * weight.ravel()) @ flat.T)
    cleaned = (flat - fit.T @ modes) * (weight.ravel() > 0)
    gram = (cleaned * weight.ravel()) @ cleaned.T
    values, vectors = np.linalg.eigh(gram)
    null = vectors[:, values < NULL_TOLERANCE * values.max()]
    observable = np.eye(len(flat)) - null @ null.T
    return Pupil(
        jnp.asarray(weight),
        jnp.asarray(cleaned.reshape(raw.shape)),
        jnp.asarray(observable),
        pixel_scale,
    )


def _coords(npix: int, diameter: float) -> Float[Array, "2 n n"]:
    return dlu.pixel_coords(npix, diameter=diameter)


def hexagon(coords: Float[Array, "2 n n"], centre, flat_to_flat: float, soft: float):
    """Anti-aliased hexagon (flats along y) of the given flat-to-flat width, metres."""
    local = dlu.translate_coords(coords, jnp.asarray(centre))
    return dlu.soft_reg_polygon(local, flat_to_flat / np.sqrt(3.0), 6, clip_dist=soft)


def orthonormalise(terms: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Gram–Schmidt of (k, n, n) maps in order, each of unit weighted RMS over `weight`."""
    total = np.sum(weight)
    out: list[np.ndarray] = []
    for term in terms:
        for _ in range(2):
            for done in out:
                term = term - np.sum(weight * done * term) / total * done
        out.append(term / np.sqrt(np.sum(weight * term**2) / total))
    return np.stack(out)


def ami_pupil(
    npix: int = 256,
    n_hole_zernikes: int = 3,
    diameter: float = PRIMARY_DIAMETER,
    hole_centres=HOLE_CENTRES,
    flat_to_flat: float = HOLE_FLAT_TO_FLAT,
) -> Pupil:
    """The NIRISS non-redundant mask on the primary.

    Basis terms, hole-major: for each of the 7 holes, the Zernike polynomials Noll 1 to
    `n_hole_zernikes` (piston, tip, tilt, …) made orthonormal over that hole's
    transmission (hexikes: a coefficient of 1 nm is 1 nm RMS over the hole; the piston
    is flat). The polynomials are evaluated over twice the circumscribed circle, so that
    no anti-aliased edge pixel is cut off. A defocus of the whole primary is
    not a separate term: over the holes it is a piston and tilt per hole plus a
    curvature common to all holes, which the fringes see only at second order.

    Args:
        npix: pupil samples across `diameter`.
        n_hole_zernikes: terms per hole (1 = piston only, 3 = piston and tip/tilt).
        diameter: side of the sampled square, metres.
        hole_centres: (7, 2) hole centres, metres.
        flat_to_flat: hole width, metres.
    """
    if n_hole_zernikes < 1:
        raise ValueError(f"n_hole_zernikes must be >= 1, got {n_hole_zernikes}")
    coords = _coords(npix, diameter)
    pixel_scale = diameter / npix
    primary = np.asarray(dlu.soft_circle(coords, diameter / 2, clip_dist=pixel_scale / 2))
    js = list(range(1, n_hole_zernikes + 1))
    circumscribed = 2 * flat_to_flat / np.sqrt(3.0)
    holes, hole_basis = [], []
    for centre in np.asarray(hole_centres):
        hole = np.asarray(hexagon(coords, centre, flat_to_flat, pixel_scale / 2))
        local = dlu.translate_coords(coords, jnp.asarray(centre))
        zernikes = np.asarray(_zernike_basis(js, local, 2 * circumscribed))
        terms = zernikes * (hole > 0)
        holes.append(hole)
        hole_basis.append(orthonormalise(terms, hole))
    mask = np.clip(sum(holes), 0.0, 1.0) * primary
    return make_pupil(mask, np.concatenate(hole_basis) * NM, pixel_scale)


def circular_pupil(
    npix: int = 128,
    diameter: float = 1.0,
    zernike_js: tuple[int, ...] = (4, 5, 6, 7, 8, 9, 10),
    vane_width: float = 0.0,
) -> Pupil:
    """A filled circular aperture with a Zernike (Noll `zernike_js`) basis over it.

    With `vane_width` > 0 (metres), three spider vanes from the centre at 90°, 210° and
    330° block the aperture. They make it asymmetric under a half turn: the PSF of a
    centro-symmetric pupil is the same for an OPD φ(r) and -φ(-r), so the signs of the
    even Zernike terms (defocus, astigmatism, …) could not be told apart from in-focus
    images.
    """
    coords = _coords(npix, diameter)
    pixel_scale = diameter / npix
    mask = dlu.soft_circle(coords, diameter / 2, clip_dist=pixel_scale / 2)
    if vane_width > 0:
        mask = mask * _vanes(coords, vane_width, pixel_scale)
    basis = _zernike_basis(zernike_js, coords, diameter) * (mask > 0)[None] * NM
    return make_pupil(mask, basis, pixel_scale)


def _vanes(coords: Float[Array, "2 n n"], width: float, soft: float) -> Float[Array, "n n"]:
    """Transmission (n, n) of three radial vanes of `width` metres at 90°, 210°, 330°."""
    x, y = coords
    clear = jnp.ones_like(x)
    for angle in np.deg2rad([90.0, 210.0, 330.0]):
        along = x * np.cos(angle) + y * np.sin(angle)
        across = -x * np.sin(angle) + y * np.cos(angle)
        blocked = jnp.clip((width / 2 - jnp.abs(across)) / soft + 0.5, 0.0, 1.0)
        clear = clear * (1.0 - jnp.where(along > 0, blocked, 0.0))
    return clear
