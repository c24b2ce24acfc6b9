"""Monochromatic and polychromatic PSFs by matrix Fourier transform (dLux MFT)."""

import dLux.utils as dlu
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from model.constants import ARCSEC
from model.pupil import Pupil


class Optics(eqx.Module):
    """Pupil → oversampled focal plane by MFT.

    Attributes:
        pupil: the sampled pupil and its aberration basis.
        psf_npix: side of the oversampled PSF grid, pixels.
        psf_pixel_scale: oversampled PSF pixel, arcsec.
    """

    pupil: Pupil
    psf_npix: int = eqx.field(static=True)
    psf_pixel_scale: float = eqx.field(static=True)

    def _field(
        self, wavelength: Float[Array, ""], opd: Float[Array, "n n"], shift_pix: Float[Array, "2"]
    ) -> Float[Array, "m m"]:
        """Intensity at λ as a fraction of the unit-transmission pupil's power per pixel.

        dLux's MFT preserves Σ|phasor|² over one full period of the focal plane, so
        dividing by Σ transmission makes an open, unaberrated pupil sum to exactly 1.
        """
        phase = 2 * jnp.pi / wavelength * opd
        amplitude = jnp.sqrt(self.pupil.transmission)
        phasor = amplitude * jnp.exp(1j * phase)
        out = dlu.MFT(
            phasor,
            wavelength,
            self.pupil.pixel_scale,
            self.psf_npix,
            self.psf_pixel_scale * ARCSEC,
            shift=shift_pix,
        )
        return jnp.abs(out) ** 2 / jnp.sum(self.pupil.transmission)

    def psf(
        self,
        wavelengths: Float[Array, " nwavels"],
        weights: Float[Array, " nwavels"],
        coefficients: Float[Array, " nterms"],
        position: Float[Array, "2"],
    ) -> Float[Array, "m m"]:
        """Polychromatic PSF of a point source.

        Args:
            wavelengths: (nwavels,) metres.
            weights: (nwavels,) spectral weights, unit sum.
            coefficients: (nterms,) aberration coefficients, nm.
            position: (x, y) offset of the source from the grid centre, arcsec.

        Returns:
            (psf_npix, psf_npix) fraction of the source flux per oversampled pixel.
        """
        fields = self.monochromatic(wavelengths, coefficients, position)
        return jnp.tensordot(weights, fields, axes=1)

    def monochromatic(
        self,
        wavelengths: Float[Array, " nwavels"],
        coefficients: Float[Array, " nterms"],
        position: Float[Array, "2"],
    ) -> Float[Array, "nwavels m m"]:
        """(nwavels, psf_npix, psf_npix) PSF of each wavelength alone (each sums to 1 over
        a full period for an open pupil); arguments as `psf`."""
        opd = self.pupil.opd(coefficients)
        shift = position / self.psf_pixel_scale
        return jax.vmap(lambda w: self._field(w, opd, shift))(wavelengths)
