"""Fit configs: what `scaling fit` reads (`FitConfig`) and its parts."""

import math
from dataclasses import dataclass, field
from typing import ClassVar

import optax

from model.regularisers import REGULARISERS
from scaling.config.checks import check_filter, non_negative, positive_ints, require
from scaling.config.roles import ROLES
from scaling.config.simulation import FieldInstrumentConfig, InstrumentConfig

# --- a fit ----------------------------------------------------------------------------


OPTIMISERS = (
    "sgd", "adam", "adamw", "nadam", "radam", "adamax", "adabelief", "amsgrad", "lion",
    "rmsprop", "adagrad", "yogi", "novograd", "lamb", "lars",
)  # fmt: skip
"""optax optimisers a config may name: each takes the learning rate as its first argument."""


@dataclass(frozen=True)
class OptimiserConfig:
    """How one parameter is fitted.

    kind: optax optimiser name (`OPTIMISERS`); lr: learning rate (with preconditioning,
    in units of a Gauss-Newton step); start: first step at which the parameter moves
    (before it updates are zero and the optimiser state is left untouched);
    precondition: divide its gradient by its Fisher information.
    """

    kind: str = "adam"
    lr: float = 1e-2
    start: int = 0
    precondition: bool = False

    def __post_init__(self):
        require(self.kind in OPTIMISERS, "kind", f"one of {', '.join(OPTIMISERS)}", self.kind)
        require(0 < self.lr < math.inf, "lr", "a finite number > 0", self.lr)
        require(self.start >= 0, "start", "an integer >= 0", self.start)

    def transform(self) -> optax.GradientTransformation:
        """The optax optimiser, masked until `start`. Its learning rate lives in the
        optimiser state (a traced value), so fits that differ only in learning rates (a
        sweep's trials) compile to the same program and share the compilation cache."""
        inner = optax.inject_hyperparams(getattr(optax, self.kind))(learning_rate=self.lr)
        if self.start <= 0:
            return inner
        return optax.conditionally_mask(inner, lambda count: count >= self.start)


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
    """Optional second stage (`scaling.fitting.quasi_newton`): `steps` L-BFGS iterations (0: none)
    on `parameters` after the first-order steps, keeping `memory` past gradients; with
    `tolerance` > 0 it stops early once two successive iterations have each lowered the
    loss by less than that (loss units: half a χ²)."""

    steps: int = 0
    parameters: tuple[str, ...] = ("aberrations", "log_flux")
    memory: int = 10
    tolerance: float = 0.0

    def __post_init__(self):
        non_negative(self, "tolerance")
        positive_ints(self, "steps", minimum=0)
        positive_ints(self, "memory")
        for name in self.parameters:
            require(name in ROLES, "parameters", f"names from {sorted(ROLES)}", name)


@dataclass(frozen=True)
class BinaryConfig:
    """Optional binary source: the start of a companion fitted beside the target.

    separation: mas from the primary (0: no binary); position_angle: degrees east of
    north, in [0, 360); contrast: companion minus primary magnitude (Δm >= 0), the start
    of every filter's contrast.
    """

    separation: float = 0.0
    position_angle: float = 0.0
    contrast: float = 2.0

    def __post_init__(self):
        non_negative(self, "separation", "contrast")
        angle = self.position_angle
        require(0.0 <= angle < 360.0, "position_angle", "degrees in [0, 360)", angle)

    @property
    def enabled(self) -> bool:
        """True when the fit models a binary (separation > 0)."""
        return self.separation > 0.0


@dataclass(frozen=True)
class SelectConfig:
    """Which exposures of the campaign store a fit uses: those matching every non-empty
    list (an empty list selects all).

    targets: target names (the store's `TARGPROP`, e.g. "HD-37093"); filters: filter
    names; observations: observation numbers (`OBSERVTN`, e.g. 12).
    """

    targets: tuple[str, ...] = ()
    filters: tuple[str, ...] = ()
    observations: tuple[int, ...] = ()

    def __post_init__(self):
        for i, name in enumerate(self.filters):
            check_filter(f"filters[{i}]", name)
        for i, number in enumerate(self.observations):
            require(number >= 1, f"observations[{i}]", "an integer >= 1", number)
        for i, name in enumerate(self.targets):
            require(bool(name.strip()), f"targets[{i}]", "a non-empty target name", name)

    @property
    def criteria(self) -> dict[str, tuple]:
        """Keyword arguments of `scaling.data.store.Campaign.select` (the lists given)."""
        given = {
            "target": self.targets,
            "filter": self.filters,
            "observation": self.observations,
        }
        return {k: v for k, v in given.items() if v}


POSITION_STARTS = ("centre", "centroid")
"""Where exposure positions start: the frame centre (0, 0) or each exposure's centroid."""


PLACEMENTS = ("PACK", "SPREAD", "STRICT_SPREAD")
TRANSPORTS = ("tasks", "graph", "collective")


@dataclass(frozen=True)
class ClusterConfig:
    """Where a fit runs (`cluster/`).

    workers: Ray shard workers (0: this process alone); address: Ray cluster to join
    ("" starts a local one bound to 127.0.0.1; "auto" or "ray://host:port" joins);
    cpus_per_worker, gpus_per_worker: Ray resources each worker requests (fractions
    allowed); placement: Ray placement-group strategy of the workers; max_restarts:
    lost workers replaced per run before it fails; compile_cache: JAX persistent
    compilation cache folder shared by the workers ("" → $JAX_COMPILATION_CACHE_DIR, else
    ~/.cache/ami-scaling/jax on each node); transport: how the steps reach the workers:
    "tasks" (an object-store put and one actor task per worker per step, the driver
    summing and updating), "collective" (the workers sum the shared gradient among
    themselves with JAX's multi-process collectives and each applies the same shared
    update; the driver calls them once per checkpoint interval: less time per step, but
    JAX writes the persistent compilation cache from a group's first process only, so
    the other workers compile at every fit's start) or "graph" (as "tasks" through a Ray
    Compiled Graph: shared-memory channels read by polling in every process, which slows
    CPU workers); BENCHMARKS.md compares them.
    """

    workers: int = 0
    address: str = ""
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    placement: str = "SPREAD"
    max_restarts: int = 3
    compile_cache: str = ""
    transport: str = "tasks"

    def __post_init__(self):
        positive_ints(self, "workers", "max_restarts", minimum=0)
        require(self.transport in TRANSPORTS, "transport", f"one of {TRANSPORTS}", self.transport)
        require(self.cpus_per_worker > 0, "cpus_per_worker", "a number > 0", self.cpus_per_worker)
        non_negative(self, "gpus_per_worker")
        require(self.placement in PLACEMENTS, "placement", f"one of {PLACEMENTS}", self.placement)


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
    the optional L-BFGS stage (`QuasiNewtonConfig`); binary: the start of a binary
    source (`BinaryConfig`, off by default); select: the exposures fitted
    (`SelectConfig`, default all); calibration: a results store whose saved shared
    instrument parameters (aberrations of this fit's filters, detector terms) replace
    the nominal start ("" for none; those without an optimiser then stay fixed);
    position_start: "centre" (every position starts at the frame centre, the default)
    or "centroid" (at the centroid of the exposure's good pixels: real targets are not
    centred); validation_fraction: share of each exposure's good pixels held out of the
    training loss and scored as the validation NLL (0: none; see
    `scaling.fitting.validation`); validation_seed: which pixels; fisher_refresh:
    steps before which the Fisher diagonal of the preconditioned parameters is evaluated
    again at the current parameters (e.g. the step a pixel response starts, once the
    stars have settled: a diagonal taken at the start, where the stars are misplaced,
    is several times too small on some pixels; the optimiser states are kept).
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
    binary: BinaryConfig = field(default_factory=BinaryConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    calibration: str = ""
    position_start: str = "centre"
    validation_fraction: float = 0.0
    validation_seed: int = 0
    fisher_refresh: tuple[int, ...] = ()

    def __post_init__(self):
        positive_ints(self, "steps", "checkpoint_every")
        for step in self.fisher_refresh:
            require(
                isinstance(step, int) and 0 < step < self.steps,
                "fisher_refresh",
                f"steps in 1…{self.steps - 1} (the fit's steps - 1)",
                step,
            )
        f = self.validation_fraction
        require(0 <= f <= 0.5, "validation_fraction", "a number in [0, 0.5]", f)
        positive_ints(self, "validation_seed", minimum=0)
        require(
            self.position_start in POSITION_STARTS,
            "position_start",
            f"one of {POSITION_STARTS}",
            self.position_start,
        )
        require(self.image_npix % 2 == 1, "image_npix", "an odd integer", self.image_npix)
        require(self.jitter > 0, "jitter", "pixels > 0 (0 has no gradient)", self.jitter)
        require(self.read_noise > 0, "read_noise", "e- > 0", self.read_noise)
        for name, weight in self.regularisers.items():
            key = f"regularisers.{name}"
            require(name in REGULARISERS, key, f"one of {sorted(REGULARISERS)}", name)
            require(0 <= weight < math.inf, key, "a finite weight >= 0", weight)
        for name in self.optimisers:
            require(name in ROLES, f"optimisers.{name}", f"one of {sorted(ROLES)}", name)


def _star_field_optimisers() -> dict[str, OptimiserConfig]:
    return {
        "positions": OptimiserConfig("sgd", 0.5, precondition=True),
        "log_fluxes": OptimiserConfig("sgd", 0.5, precondition=True),
        "aberrations": OptimiserConfig("sgd", 0.5, 5, precondition=True),
        "pointing": OptimiserConfig("sgd", 0.5, precondition=True),
        "log_scale": OptimiserConfig("sgd", 0.5, precondition=True),
        "flat": OptimiserConfig("adam", 2e-3, 20),
    }


@dataclass(frozen=True)
class StarFieldFitConfig(FitConfig):
    """A pixel-calibration fit of dithered star-field exposures (`kind = "flatfield_fit"`).

    As `FitConfig`, with the filled-aperture `instrument` (`FieldInstrumentConfig`) and
    `stars`: how many stars the fit finds in the campaign's first exposure to start from
    (`scaling.fitting.starfield`). Shared: `flat`, `aberrations`, the stars' `positions`
    and `log_fluxes`; per exposure: `pointing` (about the known dither, DITHX/DITHY) and
    `log_scale`, both held at 0 in the first exposure (they and the stars' positions and
    fluxes would otherwise trade off freely). No epoch images, so no regularisers.
    """

    KIND: ClassVar[str] = "flatfield_fit"

    campaign: str = "out/flatfield_demo/campaign.zarr"
    results: str = "out/flatfield_demo/results.zarr"
    jitter: float = 1e-3
    regularisers: dict[str, float] = field(default_factory=dict)
    optimisers: dict[str, OptimiserConfig] = field(default_factory=_star_field_optimisers)
    instrument: FieldInstrumentConfig = field(default_factory=FieldInstrumentConfig)
    stars: int = 15

    def __post_init__(self):
        super().__post_init__()
        positive_ints(self, "stars")
        require(not self.regularisers, "regularisers", "none (no image)", dict(self.regularisers))
        separation = self.binary.separation
        require(not self.binary.enabled, "binary.separation", "0 for a star field", separation)
