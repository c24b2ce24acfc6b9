"""Simulation configs: TOML files validated into frozen, typed dataclasses.

A file names its workload with a top-level `kind`: "io" (an AMI campaign of Io and
calibrators, `CampaignConfig`) or "flatfield" (a dithered star field for pixel
calibration, `FlatFieldConfig`). Every key has a default, so a file holding only `kind`
is valid. An unknown key, a wrong type or an invalid value is a `ConfigError` (a
ValueError) naming the file, the dotted key and what was expected.
"""

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from model.constants import FILTERS, PIXEL_SCALE
from model.regularisers import REGULARISERS
from scaling.partition import ROLES


class ConfigError(ValueError):
    """An invalid config entry: the dotted `key`, the `problem`, and the `file` if known."""

    def __init__(self, key: str, problem: str, file: str = ""):
        self.key, self.problem, self.file = key, problem, file
        super().__init__(f"{file}: {key}: {problem}" if file else f"{key}: {problem}")


def _expected(expected: str, got: Any) -> str:
    return f"expected {expected}, got {got!r}"


def _require(ok: bool, key: str, expected: str, got: Any) -> None:
    if not ok:
        raise ConfigError(key, _expected(expected, got))


def _positive_ints(obj, *names: str, minimum: int = 1) -> None:
    for name in names:
        value = getattr(obj, name)
        _require(value >= minimum, name, f"an integer >= {minimum}", value)


def _non_negative(obj, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        _require(value >= 0, name, "a number >= 0", value)


def _check_filter(key: str, name: str) -> None:
    _require(name in FILTERS, key, f"one of {sorted(FILTERS)}", name)


# --- the Io campaign -------------------------------------------------------------------


@dataclass(frozen=True)
class InstrumentConfig:
    """Sizes of the AMI forward model (see `model.ami_model`).

    npix: detector side, pixels; oversample: optical pixels per detector pixel;
    pupil_npix: pupil samples across the primary; nwavels: wavelengths per filter;
    n_hole_zernikes: aberration terms per mask hole.
    """

    npix: int = 80
    oversample: int = 3
    pupil_npix: int = 256
    nwavels: int = 5
    n_hole_zernikes: int = 3

    def __post_init__(self):
        _positive_ints(self, "oversample", "nwavels", "n_hole_zernikes")
        _positive_ints(self, "npix", "pupil_npix", minimum=8)

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
        _require(-90 <= self.latitude <= 90, "latitude", "degrees in [-90, 90]", self.latitude)
        _non_negative(self, "brightness")


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
        _require(n >= 3 and n % 2 == 1, "image_npix", "an odd integer >= 3", n)
        _require(self.diameter > 0, "diameter", "arcsec > 0", self.diameter)
        u = self.limb_darkening
        _require(0 <= u <= 1, "limb_darkening", "a number in [0, 1]", u)


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
        _positive_ints(self, "count", "exposures", "nints")
        _positive_ints(self, "ngroups", minimum=2)
        _non_negative(
            self, "spacing_hours", "log_flux_scatter", "position_scatter", "spectral_slope_scatter"
        )
        _require(len(self.rolls) > 0, "rolls", "at least one roll angle", self.rolls)


@dataclass(frozen=True)
class CalibratorsConfig:
    """Point-source calibrator stars, one visit each in every filter.

    count: number of stars; log_flux: log10 e-/s; nints, ngroups: as for the science
    exposures (ngroups is also truncated below the well depth).
    """

    count: int = 2
    log_flux: float = 6.0
    nints: int = 10
    ngroups: int = 12

    def __post_init__(self):
        _positive_ints(self, "count", minimum=0)
        _positive_ints(self, "nints")
        _positive_ints(self, "ngroups", minimum=2)


@dataclass(frozen=True)
class TruthConfig:
    """True optics and detector of the simulation.

    aberration_rms: rms of every aberration coefficient, nm, as drawn per filter
        (the truth is then `Pupil.canonical` of the draw: no global piston or tip/tilt);
    flat_scatter: rms pixel-response scatter; ipc_coupling: fraction of charge seen by
    each of the 4 nearest neighbours; bfe: (x, y) brighter-fatter fraction per 1e4 e-;
    nonlinearity: coefficients per 1e4 e- (see `model.ramp.nonlinearity`; the default
    loses 3% at 3e4 e-); dark: e-/s; jitter: detector pixels; read_noise: e- per read;
    well_depth: e-, the ramp is truncated below it; bad_pixel_fraction: random bad
    pixels (the outermost ring is always bad).
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

    def __post_init__(self):
        _non_negative(self, "aberration_rms", "flat_scatter", "dark", "jitter")
        c = self.ipc_coupling
        _require(0 <= c < 0.25, "ipc_coupling", "a number in [0, 0.25)", c)
        _require(min(self.bfe) >= 0, "bfe", "numbers >= 0", self.bfe)
        _require(len(self.nonlinearity) > 0, "nonlinearity", "at least one coefficient", ())
        _require(self.read_noise > 0, "read_noise", "e- > 0", self.read_noise)
        _require(self.well_depth > 0, "well_depth", "e- > 0 (inf: no truncation)", self.well_depth)
        f = self.bad_pixel_fraction
        _require(0 <= f < 1, "bad_pixel_fraction", "a number in [0, 1)", f)


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
        _require(self.seed >= 0, "seed", "an integer >= 0", self.seed)
        _require(0 < self.program < 100000, "program", "an integer in [1, 99999]", self.program)
        _require(len(self.filters) > 0, "filters", "at least one filter", self.filters)
        _require(len(set(self.filters)) == len(self.filters), "filters", "no repeats", self.filters)
        for i, name in enumerate(self.filters):
            _check_filter(f"filters[{i}]", name)
        psf_side = self.instrument.npix * self.instrument.oversample
        n = self.io.image_npix
        _require(n <= psf_side, "io.image_npix", f"at most the PSF grid side {psf_side}", n)
        side = (n - 2) * self.instrument.image_pixel_scale
        _require(
            self.io.diameter <= side,
            "io.diameter",
            f"at most the image side {side:.3f}",
            self.io.diameter,
        )


# --- the flat-field workload -----------------------------------------------------------


@dataclass(frozen=True)
class FieldInstrumentConfig:
    """Sizes of the filled-aperture imager (see `model.field_model`).

    diameter: aperture, metres; pixel_scale: detector pixel, arcsec; n_zernikes:
    aberration terms (Noll 4 onwards); group_time: seconds between reads.
    """

    npix: int = 64
    oversample: int = 2
    pupil_npix: int = 128
    nwavels: int = 3
    diameter: float = 1.0
    pixel_scale: float = 0.375
    n_zernikes: int = 7
    group_time: float = 1.0

    def __post_init__(self):
        _positive_ints(self, "oversample", "nwavels", "n_zernikes")
        _positive_ints(self, "npix", "pupil_npix", minimum=8)
        for name in ("diameter", "pixel_scale", "group_time"):
            _require(getattr(self, name) > 0, name, "a number > 0", getattr(self, name))


@dataclass(frozen=True)
class StarFieldConfig:
    """Stars placed uniformly in a centred square of side `size` arcsec, log10 count
    rates uniform in [log_flux_min, log_flux_max] e-/s."""

    n_stars: int = 15
    size: float = 18.0
    log_flux_min: float = 4.0
    log_flux_max: float = 5.0

    def __post_init__(self):
        _positive_ints(self, "n_stars")
        _require(self.size > 0, "size", "arcsec > 0", self.size)
        lo, hi = self.log_flux_min, self.log_flux_max
        _require(hi >= lo, "log_flux_max", f"a number >= log_flux_min ({lo})", hi)


@dataclass(frozen=True)
class FlatFieldConfig:
    """A star field observed at several known dithers, to calibrate the pixel response.

    dithers: (x, y) pointing offsets, arcsec, one exposure each; aberration_rms: nm;
    pixel_response_scatter: rms of the true flat field; read_noise: e- per read;
    bad_pixel_fraction: random bad pixels (the outermost ring is always bad).
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
    instrument: FieldInstrumentConfig = field(default_factory=FieldInstrumentConfig)
    stars: StarFieldConfig = field(default_factory=StarFieldConfig)

    def __post_init__(self):
        _require(self.seed >= 0, "seed", "an integer >= 0", self.seed)
        _require(0 < self.program < 100000, "program", "an integer in [1, 99999]", self.program)
        _check_filter("filter", self.filter)
        _positive_ints(self, "nints")
        _positive_ints(self, "ngroups", minimum=2)
        _non_negative(self, "aberration_rms", "pixel_response_scatter")
        _require(self.read_noise > 0, "read_noise", "e- > 0", self.read_noise)
        f = self.bad_pixel_fraction
        _require(0 <= f < 1, "bad_pixel_fraction", "a number in [0, 1)", f)
        _require(len(self.dithers) > 0, "dithers", "at least one [x, y] dither", self.dithers)


# --- a fit ----------------------------------------------------------------------------


@dataclass(frozen=True)
class OptimiserConfig:
    """How one parameter is fitted (see `scaling.optimisers.OptimiserSpec`).

    kind: optax optimiser name; lr: learning rate; start: first step it moves;
    precondition: divide its gradient by its Fisher information.
    """

    kind: str = "adam"
    lr: float = 1e-2
    start: int = 0
    precondition: bool = False

    def __post_init__(self):
        _require(self.lr > 0, "lr", "a number > 0", self.lr)
        _require(self.start >= 0, "start", "an integer >= 0", self.start)


def _default_optimisers() -> dict[str, OptimiserConfig]:
    return {
        "position": OptimiserConfig("adam", 2e-3),
        "log_flux": OptimiserConfig("adam", 2e-3),
        "aberrations": OptimiserConfig("adam", 1.0, 20),
        "log_image": OptimiserConfig("adam", 0.05),
    }


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow: `uri` empty → $MLFLOW_TRACKING_URI or ./mlflow.db; run name (optional)."""

    uri: str = ""
    run_name: str = ""


@dataclass(frozen=True)
class QuasiNewtonConfig:
    """Optional second stage (`scaling.quasi_newton`): `steps` L-BFGS iterations (0: none)
    on `parameters` after the first-order steps, keeping `memory` past gradients."""

    steps: int = 0
    parameters: tuple[str, ...] = ("aberrations", "log_flux")
    memory: int = 10

    def __post_init__(self):
        _positive_ints(self, "steps", minimum=0)
        _positive_ints(self, "memory")
        for name in self.parameters:
            _require(name in ROLES, "parameters", f"names from {sorted(ROLES)}", name)


PLACEMENTS = ("PACK", "SPREAD", "STRICT_SPREAD")


@dataclass(frozen=True)
class ClusterConfig:
    """Where a fit runs (`cluster/`).

    workers: Ray shard workers (0: this process alone); address: Ray cluster to join
    ("" starts a local one bound to 127.0.0.1; "auto" or "ray://host:port" joins);
    cpus_per_worker, gpus_per_worker: Ray resources each worker requests (fractions
    allowed); placement: Ray placement-group strategy of the workers; max_restarts:
    lost workers replaced per run before it fails; compile_cache: JAX persistent
    compilation cache folder shared by the workers ("" → a folder beside the results).
    """

    workers: int = 0
    address: str = ""
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    placement: str = "SPREAD"
    max_restarts: int = 3
    compile_cache: str = ""

    def __post_init__(self):
        _positive_ints(self, "workers", "max_restarts", minimum=0)
        _require(self.cpus_per_worker > 0, "cpus_per_worker", "a number > 0", self.cpus_per_worker)
        _non_negative(self, "gpus_per_worker")
        _require(self.placement in PLACEMENTS, "placement", f"one of {PLACEMENTS}", self.placement)


@dataclass(frozen=True)
class FitConfig:
    """A fit of a campaign store (`scaling fit`).

    campaign: campaign store location (path or fsspec URL); results: results store
    location; truth: optional simulation folder holding truth.json/npz to compare with;
    steps: optimisation steps; checkpoint_every: steps between checkpoints;
    image_npix: side of each epoch image (odd), at the oversampled PSF pixel;
    jitter, read_noise: starting detector values (pixels, e-); diagonal: use only the
    diagonal of the slope covariance; regularisers: name → weight per epoch image;
    optimisers: parameter name → how it is fitted (names not listed stay fixed);
    instrument: model sizes; cluster: where it runs (`ClusterConfig`); quasi_newton:
    the optional L-BFGS stage (`QuasiNewtonConfig`).
    """

    KIND: ClassVar[str] = "fit"

    campaign: str = "out/io_demo/campaign.zarr"
    results: str = "out/io_demo/results.zarr"
    truth: str = ""
    steps: int = 100
    checkpoint_every: int = 25
    image_npix: int = 67
    jitter: float = 0.1
    read_noise: float = 10.0
    diagonal: bool = False
    regularisers: dict[str, float] = field(default_factory=lambda: {"tv": 1.0})
    optimisers: dict[str, OptimiserConfig] = field(default_factory=_default_optimisers)
    instrument: InstrumentConfig = field(default_factory=InstrumentConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    quasi_newton: QuasiNewtonConfig = field(default_factory=QuasiNewtonConfig)

    def __post_init__(self):
        _positive_ints(self, "steps", "checkpoint_every")
        _require(self.image_npix % 2 == 1, "image_npix", "an odd integer", self.image_npix)
        _require(self.jitter > 0, "jitter", "pixels > 0 (0 has no gradient)", self.jitter)
        _require(self.read_noise > 0, "read_noise", "e- > 0", self.read_noise)
        for name in self.regularisers:
            _require(
                name in REGULARISERS, f"regularisers.{name}", f"one of {sorted(REGULARISERS)}", name
            )
        for name in self.optimisers:
            _require(name in ROLES, f"optimisers.{name}", f"one of {sorted(ROLES)}", name)


Config = CampaignConfig | FlatFieldConfig | FitConfig
KINDS: dict[str, type[Config]] = {c.KIND: c for c in (CampaignConfig, FlatFieldConfig, FitConfig)}


# --- loading ---------------------------------------------------------------------------


_NAMES = {
    int: ("an integer", "integers"),
    float: ("a number", "numbers"),
    str: ("a string", "strings"),
    bool: ("true or false", "booleans"),
}


def _describe(tp, plural: bool = False) -> str:
    """What a value of type `tp` looks like in TOML, e.g. 'a list of 2 numbers'."""
    if dataclasses.is_dataclass(tp):
        return "tables" if plural else "a table"
    if typing.get_origin(tp) is dict:
        values = _describe(typing.get_args(tp)[1], plural=True)
        return f"tables of {values}" if plural else f"a table of {values}"
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        variadic = len(args) == 2 and args[1] is Ellipsis
        items = _describe(args[0], plural=True)
        what = f"of {items}" if variadic else f"of {len(args)} {items}"
        return f"lists {what}" if plural else f"a list {what}"
    return _NAMES[tp][plural]


def _convert(value: Any, tp, key: str) -> Any:
    """`value` from TOML as type `tp`; ConfigError(key, …) if it is not one."""
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if typing.get_origin(tp) is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, _expected(_describe(tp), value))
        item = typing.get_args(tp)[1]
        return {name: _convert(v, item, f"{key}.{name}") for name, v in value.items()}
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        fixed = not (len(args) == 2 and args[1] is Ellipsis)
        if not isinstance(value, list) or (fixed and len(value) != len(args)):
            raise ConfigError(key, _expected(_describe(tp), value))
        kinds = args if fixed else [args[0]] * len(value)
        return tuple(
            _convert(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, kinds, strict=True))
        )
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[tp]
    if not ok:
        raise ConfigError(key, _expected(_describe(tp), value))
    return float(value) if tp is float else value


def _build(cls: type, table: Any, prefix: str):
    """Instance of dataclass `cls` from a TOML table; keys are reported under `prefix`."""
    dotted = lambda name: f"{prefix}.{name}" if prefix else name  # noqa: E731
    if not isinstance(table, dict):
        raise ConfigError(prefix or "top level", _expected("a table", table))
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in table:
        if name not in fields:
            raise ConfigError(dotted(name), f"unknown key; expected one of {', '.join(fields)}")
    for name, f in fields.items():
        missing = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if missing and name not in table:
            raise ConfigError(dotted(name), f"missing; expected {_describe(hints[name])}")
    values = {name: _convert(v, hints[name], dotted(name)) for name, v in table.items()}
    try:
        return cls(**values)
    except ConfigError as err:
        raise ConfigError(dotted(err.key), err.problem) from None


def parse_config(table: dict[str, Any], file: str = "<config>") -> Config:
    """Config from an already parsed TOML table; errors name `file`."""
    table = dict(table)
    kind = table.pop("kind", CampaignConfig.KIND)
    try:
        if kind not in KINDS:
            raise ConfigError("kind", _expected(f"one of {sorted(KINDS)}", kind))
        return _build(KINDS[kind], table, "")
    except ConfigError as err:
        raise ConfigError(err.key, err.problem, file) from None


def load_config(path: str | os.PathLike) -> Config:
    """Load and validate a TOML config (see the module docstring).

    Raises:
        OSError: the file cannot be read.
        ConfigError: a key is unknown, mistyped or invalid (a ValueError).
    """
    with open(path, "rb") as f:
        try:
            table = tomllib.load(f)
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"{os.fspath(path)}: invalid TOML: {err}") from None
    return parse_config(table, os.fspath(path))


def _plain(value: Any) -> Any:
    """Tuples → lists, recursively: the form TOML and JSON give back."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def config_to_dict(config: Config) -> dict[str, Any]:
    """The config as TOML/JSON-like data with its `kind` (`parse_config` reads it back)."""
    return {"kind": config.KIND, **_plain(dataclasses.asdict(config))}
