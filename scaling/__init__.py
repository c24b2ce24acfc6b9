"""The engine and I/O around the physics in `model`.

Configs (`scaling.config`), FITS exposures (`scaling.fitsio`), the campaign simulator
(`scaling.simulate`), pictures (`scaling.plots`) and the `scaling` command line
(`scaling.cli`); the fitting engine lives in `scaling.partition`, `scaling.objective`,
`scaling.optimisers`, `scaling.precondition`, `scaling.engine` and `scaling.reference`.
"""

from scaling.config import CampaignConfig, ConfigError, FlatFieldConfig, load_config
from scaling.fitsio import ExposureRecord, read_exposure, write_exposure

__all__ = [
    "CampaignConfig",
    "ConfigError",
    "ExposureRecord",
    "FlatFieldConfig",
    "load_config",
    "read_exposure",
    "write_exposure",
]
