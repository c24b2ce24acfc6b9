"""Point sources rendered from one shared PSF per wavelength (a Fourier-domain shift).

When the PSF does not depend on where a source sits in the field, the image of k point
sources is each wavelength's PSF convolved with k weighted delta functions at sub-pixel
offsets. `shared_psf` computes the PSF of every wavelength once, centred, on a grid
padded by `pad` pixels on each side, and keeps its spectrum; `SharedPSF.render` places
sources by summing their phase ramps, weighted by flux, and takes one inverse FFT:

    image = crop( IFFT( Σ_λ w_λ FFT(psf_λ) · Σ_k f_k exp(-2πi (u x_k + v y_k)) ) )

The PSF depends only on the aberrations, so every exposure of a filter shares it (a
fit's loss makes it once per filter per step, `ExposureModel.with_shared_psfs`), and
sources cost a phase ramp each, not one propagation each. A single point source with a
pointing offset is the 1-source case. A resolved source (`SharedPSF.convolve`)
multiplies the same spectrum by its image's spectrum and one phase ramp (its pointing
and dither): one forward and one inverse FFT per exposure, in place of one MFT per
wavelength and a convolution.

The shift is exact for a PSF sampled above Nyquist, up to the PSF light that falls past
the padded grid's edge: a source at offset d (pixels) needs `pad >= |d|` per axis, and
what the grid truncates (the far wings) is the error (`tests/test_shared_psf.py`
measures it against one MFT per source).
"""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Complex, Float

from model.optics import Optics


class SharedPSF(eqx.Module):
    """Spectra of the per-wavelength PSFs on a padded grid, shared by every source.

    Attributes:
        spectra: (nwavels, M, M // 2 + 1) `rfft2` of each wavelength's PSF, centred on the
            padded grid of side M = npix + 2 pad (fraction of the flux per pixel).
        npix: side of the rendered image, pixels.
        pad: pixels added on each side of the image grid.
        pixel_scale: pixel of both grids, arcsec.
    """

    spectra: Complex[Array, "nwavels M Mr"]
    npix: int = eqx.field(static=True)
    pad: int = eqx.field(static=True)
    pixel_scale: float = eqx.field(static=True)

    def render(
        self,
        weights: Float[Array, " nwavels"],
        offsets: Float[Array, "k 2"],
        fluxes: Float[Array, " k"],
    ) -> Float[Array, "npix npix"]:
        """Image of k point sources, (npix, npix), in the units of `fluxes` per pixel.

        Args:
            weights: (nwavels,) spectral weights (unit sum for a unit-flux PSF).
            offsets: (k, 2) source offsets (x, y) from the grid centre, arcsec; each must
                lie within `pad` pixels of the centre per axis.
            fluxes: (k,) flux of each source.
        """
        return self._synthesise(weights, self._ramps(offsets / self.pixel_scale, fluxes))

    def convolve(
        self,
        weights: Float[Array, " nwavels"],
        image: Float[Array, "n n"],
        offset: Float[Array, "2"],
    ) -> Float[Array, "npix npix"]:
        """An extended source's image convolved with the PSF, (npix, npix), per pixel.

        The image's centre pixel, index (n - 1) / 2, lands at `offset` from the grid
        centre, as `model.source.convolve_same` places it on a PSF computed at `offset`.
        The image is zero-padded onto the padded grid (its spectrum is one `rfft2`) and
        moved there by the phase ramp of `offset` less its half width.

        Args:
            weights: (nwavels,) spectral weights.
            image: (n, n) source on the PSF's pixel grid, n odd and at most the padded side.
            offset: (x, y) of the image centre from the grid centre, arcsec; light of
                the image that the PSF carries past the padded grid's edge wraps round
                (a pad of (n - 1) / 2 pixels plus the offset keeps it out).
        """
        n, side = image.shape[-1], self.npix + 2 * self.pad
        if n % 2 == 0 or n > side:
            raise ValueError(f"source image side must be odd and at most {side}, got {n}")
        shift = offset[None, :] / self.pixel_scale - (n - 1) / 2
        source = jnp.fft.rfft2(image, s=(side, side))
        return self._synthesise(weights, source * self._ramps(shift, jnp.ones(1)))

    def _ramps(
        self, shifts: Float[Array, "k 2"], fluxes: Float[Array, " k"]
    ) -> Complex[Array, "M Mr"]:
        """Σ_k f_k exp(-2πi (u x_k + v y_k)) on the `rfft2` grid; shifts (x, y) in pixels."""
        side = self.npix + 2 * self.pad
        fy = jnp.fft.fftfreq(side)
        fx = jnp.fft.rfftfreq(side)
        ramp_y = jnp.exp(-2j * jnp.pi * shifts[:, 1:2] * fy[None, :]) * fluxes[:, None]
        ramp_x = jnp.exp(-2j * jnp.pi * shifts[:, 0:1] * fx[None, :])
        return ramp_y.T @ ramp_x  # Σ_k f_k e_y,k ⊗ e_x,k: (side, side // 2 + 1)

    def _synthesise(
        self, weights: Float[Array, " nwavels"], factor: Complex[Array, "M Mr"]
    ) -> Float[Array, "npix npix"]:
        """crop(IFFT(Σ_λ w_λ FFT(psf_λ) · factor)): the image on the unpadded grid."""
        side = self.npix + 2 * self.pad
        spectrum = jnp.tensordot(weights, self.spectra, axes=1)
        image = jnp.fft.irfft2(spectrum * factor, s=(side, side))
        return image[self.pad : self.pad + self.npix, self.pad : self.pad + self.npix]


def shared_psf(
    optics: Optics,
    wavelengths: Float[Array, " nwavels"],
    coefficients: Float[Array, " nterms"],
    pad: int,
) -> SharedPSF:
    """Each wavelength's centred PSF on `optics`' grid padded by `pad` pixels a side.

    Args:
        optics: pupil and PSF sampling; the rendered image has its grid
            (`psf_npix`, `psf_pixel_scale`).
        wavelengths: (nwavels,) metres.
        coefficients: (nterms,) aberration coefficients, nm.
        pad: pixels added on each side (at least the largest source offset, in pixels).
    """
    if pad < 0:
        raise ValueError(f"pad must be >= 0 pixels, got {pad}")
    padded = Optics(optics.pupil, optics.psf_npix + 2 * pad, optics.psf_pixel_scale)
    psfs = padded.monochromatic(wavelengths, coefficients, jnp.zeros(2))
    return SharedPSF(jnp.fft.rfft2(psfs), optics.psf_npix, pad, optics.psf_pixel_scale)
