"""Simulation configs: the Io campaign (`CampaignConfig`) and the dithered star field
for pixel calibration (`FlatFieldConfig`). Every key has a default."""

import functools
import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from model import ExposureModel, ami_model, field_model
from model.constants import PIXEL_SCALE
from scaling.config.checks import check_filter, non_negative, positive_ints, require

# --- the Io campaign -------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _ami_model(instrument: "InstrumentConfig", filters: tuple[str, ...]) -> ExposureModel:
    i = instrument
    return ami_model(
        i.npix, i.oversample, i.pupil_npix, i.nwavels, i.n_hole_zernikes, filters,
        psf_pad=i.psf_pad,
    )  # fmt: skip


@dataclass(frozen=True)
class SamplingConfig:
    """How finely an imager is sampled; both instrument configs extend it (the
    defaults are the AMI demo's).

    npix: detector side, pixels; oversample: optical pixels per detector pixel;
    pupil_npix: pupil samples across the aperture; nwavels: wavelengths per filter;
    psf_pad: 0 computes each exposure's PSF (or each star's) by its own MFT (exact),
    > 0 renders them from one shared PSF per wavelength on the optical grid padded by
    this many optical pixels a side (at least the largest pointing, dither or star
    offset; see `model.shared_psf`).
    """

    npix: int = 80
    oversample: int = 3
    pupil_npix: int = 256
    nwavels: int = 5
    psf_pad: int = 0

    def __post_init__(self):
        positive_ints(self, "oversample", "nwavels")
        positive_ints(self, "psf_pad", minimum=0)
        positive_ints(self, "npix", "pupil_npix", minimum=8)


@dataclass(frozen=True)
class InstrumentConfig(SamplingConfig):
    """Sizes of the AMI forward model (see `model.ami_model`): the sampling
    (`SamplingConfig`, whose defaults are the AMI's) and n_hole_zernikes, the aberration
    terms per mask hole.
    """

    n_hole_zernikes: int = 3

    def __post_init__(self):
        super().__post_init__()
        positive_ints(self, "n_hole_zernikes")

    def build(self, filters) -> ExposureModel:
        """The AMI exposure model at these sizes for `filters` (names). Models are
        immutable, so one built before with the same sizes and filters is reused (a
        256-sample pupil takes seconds to build)."""
        return _ami_model(self, tuple(filters))

    @property
    def image_pixel_scale(self) -> float:
        """Oversampled PSF pixel on which resolved-source images live, arcsec."""
        return PIXEL_SCALE / self.oversample


@dataclass(frozen=True)
class VolcanoConfig:
    """An unresolved hot spot: latitude and west longitude (degrees), brightness relative
    to the disk's total flux when seen face-on."""

    name: str
    latitude: float
    longitude: float
    brightness: float

    def __post_init__(self):
        require(-90 <= self.latitude <= 90, "latitude", "degrees in [-90, 90]", self.latitude)
        non_negative(self, "brightness")


DEFAULT_VOLCANOES = (
    VolcanoConfig("Loki", 13.0, 309.0, 0.08),
    VolcanoConfig("Pele", -19.0, 255.0, 0.03),
    VolcanoConfig("Kanehekili", -18.0, 37.0, 0.03),
    VolcanoConfig("Amirani", 24.0, 115.0, 0.02),
)
"""Well-known Io hot spots (positions rounded), with illustrative 4 µm brightnesses."""


@dataclass(frozen=True)
class IoConfig:
    """Io's appearance (see `model.scenes.IoScene`).

    image_npix: side of the source image (odd), at the oversampled PSF pixel;
    diameter: arcsec; limb_darkening: linear coefficient u in [0, 1];
    start_longitude: sub-observer west longitude at the first epoch, degrees;
    sub_latitude: sub-observer latitude, degrees; volcanoes: the hot spots.
    """

    image_npix: int = 67
    diameter: float = 1.1
    limb_darkening: float = 0.3
    start_longitude: float = 300.0
    sub_latitude: float = 0.0
    volcanoes: tuple[VolcanoConfig, ...] = DEFAULT_VOLCANOES

    def __post_init__(self):
        n = self.image_npix
        require(n >= 3 and n % 2 == 1, "image_npix", "an odd integer >= 3", n)
        require(self.diameter > 0, "diameter", "arcsec > 0", self.diameter)
        u = self.limb_darkening
        require(0 <= u <= 1, "limb_darkening", "a number in [0, 1]", u)


@dataclass(frozen=True)
class EpochsConfig:
    """When and how Io is observed.

    count epochs, `spacing_hours` apart from `start_mjd`; per epoch and filter,
    `exposures` exposures of `nints` integrations and up to `ngroups` groups (truncated
    so the brightest pixel stays below the well depth). log_flux: log10 e-/s, with a
    per-exposure Gaussian scatter; position_scatter: pointing offsets, arcsec;
    spectral_slope (and scatter): power-law index; rolls: degrees, cycled over an
    epoch's exposures.
    """

    count: int = 3
    start_mjd: float = 60000.0
    spacing_hours: float = 7.0
    exposures: int = 2
    nints: int = 20
    ngroups: int = 20
    log_flux: float = 6.3
    log_flux_scatter: float = 0.01
    position_scatter: float = 0.01
    spectral_slope: float = 0.0
    spectral_slope_scatter: float = 0.1
    rolls: tuple[float, ...] = (0.0, 10.0)

    def __post_init__(self):
        positive_ints(self, "count", "exposures", "nints")
        positive_ints(self, "ngroups", minimum=2)
        non_negative(
            self, "spacing_hours", "log_flux_scatter", "position_scatter", "spectral_slope_scatter"
        )
        require(len(self.rolls) > 0, "rolls", "at least one roll angle", self.rolls)


@dataclass(frozen=True)
class CalibratorsConfig:
    """Point-source calibrator stars, one visit each in every filter, 1 h after epochs
    spread evenly over the campaign (star c after epoch ⌊c × epochs / count⌋).

    count: number of stars; log_flux: log10 e-/s; nints, ngroups: as for the science
    exposures (ngroups is also truncated below the well depth).
    """

    count: int = 2
    log_flux: float = 6.0
    nints: int = 10
    ngroups: int = 12

    def __post_init__(self):
        positive_ints(self, "count", minimum=0)
        positive_ints(self, "nints")
        positive_ints(self, "ngroups", minimum=2)


@dataclass(frozen=True)
class TruthConfig:
    """True optics and detector of the simulation.

    aberration_rms: rms of every aberration coefficient, nm, as drawn per filter
        (the truth is then `Pupil.canonical` of the draw: no global piston or tip/tilt);
    flat_scatter: rms pixel-response scatter; ipc_coupling: fraction of charge seen by
    each of the 4 nearest neighbours; bfe: (x, y) brighter-fatter fraction per 1e4 e-;
    nonlinearity: coefficients per 1e4 e- (see `model.ramp.nonlinearity`; the default
    loses 3% at 3e4 e-); dark: e-/s; jitter: detector pixels; read_noise: e- per read;
    well_depth: e-, slope and rate products truncate the ramp below it, the reads of
    `_uncal`/`_ramp` products clip at it; bad_pixel_fraction: random bad pixels (the
    outermost ring is always bad); cosmic_ray_rate: hits per pixel per second in
    `_uncal`/`_ramp` products (default ~5 per cm² per s on 18 µm pixels).
    """

    aberration_rms: float = 20.0
    flat_scatter: float = 0.02
    ipc_coupling: float = 0.006
    bfe: tuple[float, float] = (0.01, 0.01)
    nonlinearity: tuple[float, ...] = (-0.01,)
    dark: float = 0.02
    jitter: float = 0.05
    read_noise: float = 12.0
    well_depth: float = 30000.0
    bad_pixel_fraction: float = 0.005
    cosmic_ray_rate: float = 1.6e-5

    def __post_init__(self):
        non_negative(self, "aberration_rms", "flat_scatter", "dark", "jitter", "cosmic_ray_rate")
        c = self.ipc_coupling
        require(0 <= c < 0.25, "ipc_coupling", "a number in [0, 0.25)", c)
        require(min(self.bfe) >= 0, "bfe", "numbers >= 0", self.bfe)
        require(len(self.nonlinearity) > 0, "nonlinearity", "at least one coefficient", ())
        require(self.read_noise > 0, "read_noise", "e- > 0", self.read_noise)
        require(self.well_depth > 0, "well_depth", "e- > 0 (inf: no truncation)", self.well_depth)
        f = self.bad_pixel_fraction
        require(0 <= f < 1, "bad_pixel_fraction", "a number in [0, 1)", f)


@dataclass(frozen=True)
class CampaignConfig:
    """An AMI campaign of Io (several epochs) and calibrator stars."""

    KIND: ClassVar[str] = "io"

    seed: int = 0
    program: int = 1373
    filters: tuple[str, ...] = ("F430M",)
    instrument: InstrumentConfig = field(default_factory=InstrumentConfig)
    io: IoConfig = field(default_factory=IoConfig)
    epochs: EpochsConfig = field(default_factory=EpochsConfig)
    calibrators: CalibratorsConfig = field(default_factory=CalibratorsConfig)
    truth: TruthConfig = field(default_factory=TruthConfig)

    def __post_init__(self):
        require(self.seed >= 0, "seed", "an integer >= 0", self.seed)
        require(0 < self.program < 100000, "program", "an integer in [1, 99999]", self.program)
        require(len(self.filters) > 0, "filters", "at least one filter", self.filters)
        require(len(set(self.filters)) == len(self.filters), "filters", "no repeats", self.filters)
        for i, name in enumerate(self.filters):
            check_filter(f"filters[{i}]", name)
        psf_side = self.instrument.npix * self.instrument.oversample
        n = self.io.image_npix
        require(n <= psf_side, "io.image_npix", f"at most the PSF grid side {psf_side}", n)
        pad, scale = self.instrument.psf_pad, self.instrument.image_pixel_scale
        need = math.ceil(5 * self.epochs.position_scatter / scale)
        require(
            not pad or pad >= need,
            "instrument.psf_pad",
            f"0 or at least {need} optical pixels (5 sigma of pointing scatter)",
            pad,
        )
        side = (n - 2) * self.instrument.image_pixel_scale
        require(
            self.io.diameter <= side,
            "io.diameter",
            f"at most the image side {side:.3f}",
            self.io.diameter,
        )


# --- the flat-field workload -----------------------------------------------------------


@dataclass(frozen=True)
class FieldInstrumentConfig(SamplingConfig):
    """Sizes of the filled-aperture imager (see `model.field_model`): the sampling
    (`SamplingConfig`; the flat-field configs set their own sizes), and diameter: aperture, metres;
    pixel_scale: detector pixel, arcsec; n_zernikes: aberration terms (Noll 4 onwards);
    group_time: seconds between reads; vane_width: three spider vanes, metres (0: none;
    they break the sign ambiguity of even Zernikes).
    """

    diameter: float = 1.0
    pixel_scale: float = 0.375
    n_zernikes: int = 7
    group_time: float = 1.0
    vane_width: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        positive_ints(self, "n_zernikes")
        non_negative(self, "vane_width")
        for name in ("diameter", "pixel_scale", "group_time"):
            require(getattr(self, name) > 0, name, "a number > 0", getattr(self, name))

    def build(self, filters) -> ExposureModel:
        """The filled-aperture imager at these sizes (Zernikes Noll 4 onwards) for `filters`."""
        zernikes = tuple(range(4, 4 + self.n_zernikes))
        return field_model(
            self.npix, self.oversample, self.pupil_npix, self.nwavels, self.diameter, zernikes,
            tuple(filters), self.pixel_scale, self.vane_width, self.psf_pad,
        )  # fmt: skip


@dataclass(frozen=True)
class StarFieldConfig:
    """Stars placed uniformly in a centred square of side `size` arcsec, log10 count
    rates uniform in [log_flux_min, log_flux_max] e-/s."""

    n_stars: int = 15
    size: float = 18.0
    log_flux_min: float = 4.0
    log_flux_max: float = 5.0

    def __post_init__(self):
        positive_ints(self, "n_stars")
        require(self.size > 0, "size", "arcsec > 0", self.size)
        lo, hi = self.log_flux_min, self.log_flux_max
        require(hi >= lo, "log_flux_max", f"a number >= log_flux_min ({lo})", hi)


@dataclass(frozen=True)
class FlatFieldConfig:
    """A star field observed at several known dithers, to calibrate the pixel response.

    dithers: (x, y) pointing offsets, arcsec, one exposure each; dither_count: when > 0,
    that many dithers instead, the first at (0, 0) and the others drawn uniformly in a
    centred square of side `dither_size` arcsec (seeded; a smaller count gives the first
    dithers of a larger one); pointing_scatter: rms error of each exposure's pointing about its
    known dither, arcsec; flux_scale_scatter: rms of each exposure's flux scale, dex;
    aberration_rms: nm; pixel_response_scatter: rms of the true flat field; read_noise:
    e- per read; bad_pixel_fraction: random bad pixels (the outermost ring is always bad).
    Field exposures are written as calibration exposures (IS_PSF), one unit each.
    """

    KIND: ClassVar[str] = "flatfield"

    seed: int = 0
    program: int = 9999
    filter: str = "F430M"
    start_mjd: float = 60000.0
    nints: int = 1
    ngroups: int = 3
    aberration_rms: float = 20.0
    pixel_response_scatter: float = 0.05
    read_noise: float = 10.0
    bad_pixel_fraction: float = 0.0
    dithers: tuple[tuple[float, float], ...] = (
        (0.0, 0.0),
        (0.5, 0.2),
        (-0.3, 0.6),
        (0.7, -0.5),
        (-0.6, -0.3),
    )
    dither_count: int = 0
    dither_size: float = 2.0
    pointing_scatter: float = 0.0
    flux_scale_scatter: float = 0.0
    instrument: FieldInstrumentConfig = field(default_factory=FieldInstrumentConfig)
    stars: StarFieldConfig = field(default_factory=StarFieldConfig)

    def __post_init__(self):
        require(self.seed >= 0, "seed", "an integer >= 0", self.seed)
        require(0 < self.program < 100000, "program", "an integer in [1, 99999]", self.program)
        check_filter("filter", self.filter)
        positive_ints(self, "nints")
        positive_ints(self, "ngroups", minimum=2)
        non_negative(self, "aberration_rms", "pixel_response_scatter")
        require(self.read_noise > 0, "read_noise", "e- > 0", self.read_noise)
        f = self.bad_pixel_fraction
        require(0 <= f < 1, "bad_pixel_fraction", "a number in [0, 1)", f)
        require(len(self.dithers) > 0, "dithers", "at least one [x, y] dither", self.dithers)
        positive_ints(self, "dither_count", minimum=0)
        non_negative(self, "dither_size", "pointing_scatter", "flux_scale_scatter")

    def dither_offsets(self) -> np.ndarray:
        """(n, 2) dithers, arcsec: `dithers`, or `dither_count` drawn from the seed."""
        if not self.dither_count:
            return np.asarray(self.dithers, dtype=np.float64)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 15]))
        half = self.dither_size / 2
        drawn = rng.uniform(-half, half, (self.dither_count, 2))
        return np.concatenate([np.zeros((1, 2)), drawn[:-1]])
