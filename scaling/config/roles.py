"""The role of every fitted parameter: one table read by config validation and the engine.

A campaign's parameters form one pytree with three parts (see `scaling.fitting.params`):
a **shared** parameter has one copy for the whole campaign (one per filter where
`per_filter`: a dict filter → array), an **epoch** parameter one row per epoch, an
**exposure** parameter one row per exposure. Shapes of one exposure's values are those of
`model.PARAMETER_UNITS`; a part stacks them along a leading axis (epochs or exposures).
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Role:
    """part: "shared", "epoch" or "exposure"; per_filter: one value per filter (shared);
    source: a shared parameter of the target, not of the instrument (a binary's), which a
    calibration from another star never carries (`FitConfig.calibration`): a binary's, a
    star field's stars (the same sky in every dither, so shared)."""

    part: str
    per_filter: bool = False
    source: bool = False


ROLES: dict[str, Role] = {
    "aberrations": Role("shared", per_filter=True),
    "flat": Role("shared"),
    "ipc": Role("shared"),
    "bfe": Role("shared"),
    "nonlinearity": Role("shared"),
    "dark": Role("shared"),
    "jitter": Role("shared"),
    "read_noise": Role("shared"),
    "positions": Role("shared", source=True),
    "log_fluxes": Role("shared", source=True),
    "separation": Role("shared", source=True),
    "position_angle": Role("shared", source=True),
    "contrast": Role("shared", per_filter=True, source=True),
    "log_image": Role("epoch"),
    "position": Role("exposure"),
    "log_flux": Role("exposure"),
    "spectral_slope": Role("exposure"),
    "pointing": Role("exposure"),
    "log_scale": Role("exposure"),
}
"""Role of every fitted parameter name."""
