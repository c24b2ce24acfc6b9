"""Sweep configs (`scaling sweep`): a base fit config, a search space over its dotted keys,
a trial budget and how the trials share the cluster. Every key but `fit` has a default.

    kind = "sweep"
    fit = "configs/io_test_fit.toml"       # the base fit config
    [space]                                 # dotted fit-config key → one domain table
    "regularisers.tv" = { loguniform = [0.01, 10.0] }
    "optimisers.log_image.lr" = { grid = [0.02, 0.05] }

Domains: `grid = [values]` (every value, multiplied with the other grids), `choice =
[values]`, `uniform = [low, high]`, `loguniform = [low, high]` (sampled). A sweep runs
`samples` × (product of the grids) trials.
"""

import math
from dataclasses import dataclass, field
from typing import ClassVar

from scaling.config.checks import ConfigError, positive_ints, require

DOMAINS = ("grid", "choice", "uniform", "loguniform")
SCHEDULERS = ("asha", "fifo")


@dataclass(frozen=True)
class SweepConfig:
    """A hyperparameter sweep on Ray Tune.

    fit: base fit config file; name: the sweep's folder under `out` and its MLflow parent
    run's name; out: folder for the Tune experiment and the trials' results stores;
    space: dotted fit-config key → {domain: values} (module docstring); samples: draws
    of the sampled domains (times the grid); concurrent: trials at once;
    workers_per_trial: Ray shard workers of each trial's fit (0: the trial fits in its
    own process); cpus_per_worker: CPUs of each (the trial's driver takes one more);
    address: the Ray cluster to run on ("" starts a local one bound to 127.0.0.1; "auto"
    or "ray://host:port" joins one);
    metric, mode: what chooses the best trial ("validation_nll", "min");
    validation_fraction: pixels held out when the base config holds none out;
    scheduler: "asha" (stop poor trials early, at checkpoints, after `grace_period`
    steps, keeping 1 / `reduction_factor` at each rung) or "fifo" (run all to the end).
    """

    KIND: ClassVar[str] = "sweep"

    fit: str
    name: str = "sweep"
    out: str = "out/sweeps"
    space: dict[str, dict[str, tuple[float, ...]]] = field(default_factory=dict)
    samples: int = 1
    concurrent: int = 2
    workers_per_trial: int = 0
    cpus_per_worker: float = 1.0
    address: str = ""
    metric: str = "validation_nll"
    mode: str = "min"
    validation_fraction: float = 0.05
    scheduler: str = "asha"
    grace_period: int = 2
    reduction_factor: float = 2.0

    def __post_init__(self):
        require(bool(self.space), "space", "at least one dotted key with a domain", self.space)
        for key, domain in self.space.items():
            where = f"space.{key}"
            if len(domain) != 1 or next(iter(domain)) not in DOMAINS:
                raise ConfigError(where, f"expected one of {DOMAINS} = [...], got {domain}")
            kind, values = next(iter(domain.items()))
            require(len(values) > 0, f"{where}.{kind}", "a non-empty list", list(values))
            if kind in ("uniform", "loguniform"):
                lo_hi = len(values) == 2 and values[0] < values[1]
                require(lo_hi, f"{where}.{kind}", "[low, high] with low < high", list(values))
            if kind == "loguniform":
                require(values[0] > 0, f"{where}.{kind}", "low > 0", values[0])
        positive_ints(self, "samples", "concurrent", "grace_period")
        positive_ints(self, "workers_per_trial", minimum=0)
        require(self.cpus_per_worker > 0, "cpus_per_worker", "a number > 0", self.cpus_per_worker)
        require(self.mode in ("min", "max"), "mode", "'min' or 'max'", self.mode)
        f = self.validation_fraction
        require(0 <= f <= 0.5, "validation_fraction", "a number in [0, 0.5]", f)
        require(self.scheduler in SCHEDULERS, "scheduler", f"one of {SCHEDULERS}", self.scheduler)
        rf = self.reduction_factor
        require(rf > 1, "reduction_factor", "a number > 1", rf)
        require("/" not in self.name and self.name, "name", "a folder name", self.name)

    @property
    def trials(self) -> int:
        """How many trials the sweep runs."""
        grids = [len(v["grid"]) for v in self.space.values() if "grid" in v]
        return self.samples * math.prod(grids)
