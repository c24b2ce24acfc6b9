"""Point sources rendered from one shared PSF per wavelength (a Fourier-domain shift).

When the PSF does not depend on where a source sits in the field, the image of k point
sources is each wavelength's PSF convolved with k weighted delta functions at sub-pixel
offsets. `shared_psf` computes the PSF of every wavelength once, centred, on a grid
padded by `pad` pixels on each side, and keeps its spectrum; `SharedPSF.render` places
sources by summing their phase ramps, weighted by flux, and takes one inverse FFT:

    image = crop( IFFT( Σ_λ w_λ FFT(psf_λ) · Σ_k f_k exp(-2πi (u x_k + v y_k)) ) )

The PSF depends only on the aberrations, so every exposure of a step shares it (under
`jax.vmap` over exposures it is computed once), and sources cost a phase ramp each, not
one propagation each. A single point source with a pointing offset is the 1-source case.

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
        side = self.npix + 2 * self.pad
        spectrum = jnp.tensordot(weights, self.spectra, axes=1)
        shift = offsets / self.pixel_scale
        fy = jnp.fft.fftfreq(side)
        fx = jnp.fft.rfftfreq(side)
        ramp_y = jnp.exp(-2j * jnp.pi * shift[:, 1:2] * fy[None, :]) * fluxes[:, None]
        ramp_x = jnp.exp(-2j * jnp.pi * shift[:, 0:1] * fx[None, :])
        ramps = ramp_y.T @ ramp_x  # Σ_k f_k e_y,k ⊗ e_x,k: (side, side // 2 + 1)
        image = jnp.fft.irfft2(spectrum * ramps, s=(side, side))
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
