"""Run and simulation configs: TOML files validated into frozen, typed dataclasses.

`checks` (errors and value checks), `simulation` (the Io campaign and the star field),
`fitting` (a fit and where it runs), `sweep` (hyperparameter sweeps) and `load` (kinds,
parsing, loading, writing back).
"""

from scaling.config.checks import ConfigError
from scaling.config.fitting import (
    BinaryConfig,
    ClusterConfig,
    FitConfig,
    OptimiserConfig,
    QuasiNewtonConfig,
    SelectConfig,
    StarFieldFitConfig,
    TrackingConfig,
)
from scaling.config.load import KINDS, Config, config_to_dict, load_config, parse_config
from scaling.config.simulation import (
    CalibratorsConfig,
    CampaignConfig,
    EpochsConfig,
    FieldInstrumentConfig,
    FlatFieldConfig,
    InstrumentConfig,
    IoConfig,
    StarFieldConfig,
    TruthConfig,
    VolcanoConfig,
)
from scaling.config.sweep import SweepConfig

__all__ = [
    "KINDS",
    "BinaryConfig",
    "CalibratorsConfig",
    "CampaignConfig",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "EpochsConfig",
    "FieldInstrumentConfig",
    "FitConfig",
    "FlatFieldConfig",
    "InstrumentConfig",
    "IoConfig",
    "OptimiserConfig",
    "QuasiNewtonConfig",
    "SelectConfig",
    "StarFieldConfig",
    "StarFieldFitConfig",
    "SweepConfig",
    "TrackingConfig",
    "TruthConfig",
    "VolcanoConfig",
    "config_to_dict",
    "load_config",
    "parse_config",
]
