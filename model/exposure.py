"""The forward model of one exposure: sky → optics → detector → ramp slopes → likelihood.

Parameters of one exposure live in a flat dict of arrays (names and shapes below); which
of them are shared by the campaign, per epoch or per exposure is decided by the engine,
not here. `PARAMETER_UNITS` documents every name.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from model.constants import FRAME_TIME
from model.detector import apply_ipc, apply_jitter, downsample
from model.likelihood import (
    SlopeCounts,
    chi_squared,
    gaussian_nll,
    rate_chi_squared,
    rate_nll,
)
from model.optics import Optics
from model.ramp import ramp_signal
from model.shared_psf import SharedPSF, shared_psf
from model.source import binary_components, convolve_same, normalise_log_image, rotate_image
from model.spectrum import Bandpass

Params = dict[str, Array]

PARAMETER_UNITS = {
    "aberrations": "(nterms,) Zernike coefficients of the pupil basis, nm",
    "position": "(2,) source offset (x, y) from the subarray centre in detector axes, arcsec",
    "positions": "(k, 2) offsets of k point sources (star field), arcsec",
    "log_flux": "() log10 of the source's total count rate (a binary: both stars), e-/s",
    "log_fluxes": "(k,) log10 count rates of k point sources, e-/s",
    "pointing": "(2,) star field: the exposure's pointing offset beyond its known dither, arcsec",
    "log_scale": "() star field: log10 of the exposure's flux scale (0: nominal), dex",
    "spectral_slope": "() power-law index of the spectrum across the band",
    "separation": "() binary: companion's distance from the primary (at `position`), mas",
    "position_angle": "() binary: companion's direction, degrees east of north on the sky",
    "contrast": "() binary: companion minus primary magnitude (Δm, > 0: fainter), mag",
    "log_image": "(n, n) natural-log intensity of a resolved source, sky axes (north up)",
    "flat": "(p, p) pixel response (flat field), dimensionless, 1 = nominal",
    "ipc": "(3, 3) inter-pixel capacitance kernel",
    "bfe": "(2,) brighter-fatter migration (x, y), fraction per 1e4 e- collected",
    "nonlinearity": "(k,) polynomial coefficients of the ramp non-linearity per 1e4 e-",
    "dark": "() dark current, e-/s per pixel",
    "jitter": "() Gaussian pointing jitter sigma, detector pixels",
    "read_noise": "() read noise per read, e-",
}


def star_field(params: Params) -> tuple[Float[Array, "k 2"], Float[Array, " k"]]:
    """(offsets (k, 2) arcsec before the known dither, count rates (k,) e-/s) of a star
    field: the stars' `positions` moved by the exposure's `pointing`, their rates scaled
    by its `log_scale`."""
    offsets = params["positions"] + params["pointing"][None, :]
    return offsets, 10.0 ** (params["log_fluxes"] + params["log_scale"])


def point_sources(
    params: Params, spec: "ExposureSpec"
) -> tuple[Float[Array, "k 2"], Float[Array, " k"]]:
    """(offsets (k, 2) from the grid centre incl. the known dither, arcsec; count rates
    (k,) e-/s) of a point-like scene: a star field, a binary or one point source."""
    if "positions" in params:
        offsets, fluxes = star_field(params)
    elif "separation" in params:
        offsets, fluxes = binary_components(
            params["position"],
            params["log_flux"],
            params["separation"],
            params["position_angle"],
            params["contrast"],
            spec.roll,
        )
    else:
        offsets, fluxes = params["position"][None, :], (10.0 ** params["log_flux"])[None]
    return offsets + spec.dither[None, :], fluxes


def source_image(params: Params, spec: "ExposureSpec") -> Float[Array, "n n"]:
    """A resolved source's unit-sum image in detector axes (`log_image` normalised and
    rotated by the exposure's roll), (n, n) at the optical pixel."""
    return rotate_image(normalise_log_image(params["log_image"]), spec.roll)


class ExposureSpec(eqx.Module):
    """What the physics needs to know of an exposure besides the parameters.

    Attributes:
        filter: filter name (static: selects the bandpass).
        ngroups: groups up the ramp (static: sets the output shape).
        roll: position angle rotating sky axes into detector axes, degrees.
        group_time: seconds between group reads.
        nints: integrations averaged into the slopes.
        dither: (2,) known pointing offset added to every source, arcsec.
        resolved: True where a `log_image` in the params is the source; False for a point
            source whose params carry one anyway (a calibrator batched with resolved
            exposures: its illumination is the PSF, exactly).
    """

    filter: str = eqx.field(static=True)
    ngroups: int = eqx.field(static=True)
    roll: Float[Array, ""]
    group_time: Float[Array, ""]
    nints: Float[Array, ""]
    dither: Float[Array, "2"]
    resolved: Bool[Array, ""]


def make_spec(
    filter, ngroups, roll=0.0, group_time=FRAME_TIME, nints=1, dither=(0.0, 0.0), resolved=True
):
    """ExposureSpec with float64 arrays for the traced fields."""
    f = lambda x: jnp.asarray(x, dtype=jnp.float64)  # noqa: E731
    flag = jnp.asarray(resolved, dtype=bool)
    return ExposureSpec(filter, int(ngroups), f(roll), f(group_time), f(nints), f(dither), flag)


class ExposureModel(eqx.Module):
    """Optics and bandpasses of an instrument; maps parameters to slopes.

    Attributes:
        optics: pupil and focal-plane sampling (oversampled grid of `npix * oversample`).
        bandpasses: filter name → sampled bandpass.
        oversample: optical pixels per detector pixel (per axis).
        psf_pad: 0 computes each exposure's PSF by its own MFT per source (exact); > 0
            renders every scene from one PSF per wavelength on the optical grid padded
            by this many optical pixels a side, placed by Fourier phase ramps
            (`model.shared_psf`): point sources must stay within `psf_pad` pixels of
            the centre; a resolved image's light stays off the wrapped edge when its
            half width plus its offset is within `psf_pad`.
        psfs: filter → its shared PSF, made once for every exposure that follows
            (`with_shared_psfs`); a filter not here has its PSF made per exposure.
    """

    optics: Optics
    bandpasses: dict[str, Bandpass]
    oversample: int = eqx.field(static=True)
    psf_pad: int = eqx.field(static=True, default=0)
    psfs: dict[str, SharedPSF] = eqx.field(default_factory=dict)

    def with_shared_psfs(self, aberrations: dict[str, Array]) -> "ExposureModel":
        """This model with each filter's shared PSF made once from `aberrations` (filter →
        (nterms,) coefficients, nm; the filters this model has) for all the exposures it
        then renders, which must have those aberrations: one PSF per filter per step,
        whatever the batches (`psf_pad` > 0)."""
        psfs = {
            f: shared_psf(self.optics, self.bandpasses[f].wavelengths, a, self.psf_pad)
            for f, a in aberrations.items()
            if f in self.bandpasses
        }
        return ExposureModel(self.optics, self.bandpasses, self.oversample, self.psf_pad, psfs)

    @property
    def npix(self) -> int:
        """Detector pixels per side."""
        return self.optics.psf_npix // self.oversample

    def illumination(self, params: Params, spec: ExposureSpec) -> Float[Array, "m m"]:
        """Oversampled count rate of the scene on the detector, e-/s per optical pixel.

        The scene is a star field (`positions`), a binary (`separation`; it ignores any
        `log_image`), a resolved source (`log_image`) or a point source.
        """
        band = self.bandpasses[spec.filter]
        weights = band.weights(params["spectral_slope"])
        resolved = "log_image" in params and not ("positions" in params or "separation" in params)
        if self.psf_pad:
            psf = self.psfs.get(spec.filter)
            if psf is None:
                psf = shared_psf(self.optics, band.wavelengths, params["aberrations"], self.psf_pad)
            if not resolved:
                return psf.render(weights, *point_sources(params, spec))
            offset = params["position"] + spec.dither
            image = source_image(params, spec)
            centre = image.shape[-1] // 2  # a point source batched with resolved ones
            point = jnp.zeros_like(image).at[centre, centre].set(1.0)
            image = psf.convolve(weights, jnp.where(spec.resolved, image, point), offset)
            return 10.0 ** params["log_flux"] * image
        psf_at = lambda pos: self.optics.psf(  # noqa: E731
            band.wavelengths, weights, params["aberrations"], pos
        )
        if "positions" in params or "separation" in params:
            offsets, fluxes = point_sources(params, spec)
            return jnp.tensordot(fluxes, jax.vmap(psf_at)(offsets), axes=1)
        psf = psf_at(params["position"] + spec.dither)
        if resolved:
            psf = jnp.where(spec.resolved, convolve_same(source_image(params, spec), psf), psf)
        return 10.0 ** params["log_flux"] * psf

    def rate(self, params: Params, spec: ExposureSpec) -> Float[Array, "p p"]:
        """Detector count rate after jitter, pixel integration, flat field and dark, e-/s."""
        blurred = apply_jitter(self.illumination(params, spec), params["jitter"] * self.oversample)
        return downsample(blurred, self.oversample) * params["flat"] + params["dark"]

    def mean_rate(self, params: Params, spec: ExposureSpec) -> Float[Array, "p p"]:
        """Mean count rate (p, p) as the pipeline measures it from a ramp, e-/s.

        `rate` with inter-pixel capacitance, which acts on the collected charge and so on a
        ramp's slope. What a rate cannot see of the ramp: the non-linearity (the pipeline
        corrects it), the brighter-fatter effect (it depends on the charge collected, not
        on the rate) and the read noise shared by adjacent group differences; `bfe`,
        `nonlinearity` and `read_noise` do not enter.
        """
        return apply_ipc(self.rate(params, spec), params["ipc"])

    def ramp(self, params: Params, spec: ExposureSpec) -> Float[Array, "g p p"]:
        """Model signal at each group read (ngroups, p, p), electrons (`slopes` are its
        differences)."""
        return ramp_signal(
            self.rate(params, spec),
            spec.ngroups,
            spec.group_time,
            params["bfe"],
            params["ipc"],
            params["nonlinearity"],
        )

    def slopes(self, params: Params, spec: ExposureSpec) -> Float[Array, "s p p"]:
        """Model group-difference slopes (ngroups-1, p, p), electrons per group."""
        return jnp.diff(self.ramp(params, spec), axis=0)

    def nll(
        self,
        params: Params,
        spec: ExposureSpec,
        data: Float[Array, "s p p"],
        bad: Bool[Array, "p p"],
        diagonal: bool = False,
        counts: SlopeCounts | None = None,
    ) -> Float[Array, ""]:
        """Gaussian negative log-likelihood of measured slopes (see `model.likelihood`);
        `counts` masks slopes and counts their integrations (default: none masked, all
        from `spec.nints`)."""
        return gaussian_nll(
            data, self.slopes(params, spec), params["read_noise"], spec.nints, bad, diagonal, counts
        )

    def chi_squared(self, params, spec, data, bad, diagonal: bool = False, counts=None):
        """(χ², number of kept slopes) of measured slopes under the model."""
        return chi_squared(
            data, self.slopes(params, spec), params["read_noise"], spec.nints, bad, diagonal, counts
        )

    def rate_nll(
        self,
        params: Params,
        spec: ExposureSpec,
        data: Float[Array, "p p"],
        variance: Float[Array, "p p"],
        bad: Bool[Array, "p p"],
    ) -> Float[Array, ""]:
        """Gaussian negative log-likelihood of a measured rate (e-/s) with the file's
        variance ((e-/s)², fixed; see `model.likelihood.rate_nll`)."""
        return rate_nll(data, self.mean_rate(params, spec), variance, bad)

    def rate_chi_squared(self, params, spec, data, variance, bad):
        """(χ², number of good pixels) of a measured rate under the model."""
        return rate_chi_squared(data, self.mean_rate(params, spec), variance, bad)
