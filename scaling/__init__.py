"""The engine and I/O around the physics in `model`, in layers that import downwards only.

* `scaling.config`: TOML configs validated into dataclasses; the parameter roles.
* `scaling.data`: FITS exposures, the Zarr campaign and results stores, exports.
* `scaling.fitting`: the parameter tree, loss, preconditioning, optimisers, the step,
  its plain-loop reference, the quasi-Newton stage, and what starts and runs a fit.
* `scaling.report`: comparison with the truth, pictures, MLflow tracking.
* the commands: `scaling.simulate`, `scaling.fit`, `scaling.bench`, `scaling.cli`.
"""

from scaling.config import CampaignConfig, ConfigError, FlatFieldConfig, load_config
from scaling.data.fitsio import ExposureRecord, read_exposure, write_exposure

__all__ = [
    "CampaignConfig",
    "ConfigError",
    "ExposureRecord",
    "FlatFieldConfig",
    "load_config",
    "read_exposure",
    "write_exposure",
]
