"""The start of a fit: observations read from the store, starting parameters, settings.

Shared by the single process (`scaling.fitting.stepper.InProcess`) and the cluster's
shard workers, so both start from the same point.
"""

import jax
import jax.numpy as jnp
import numpy as np

from model import ExposureModel, make_spec, nominal_detector
from scaling.config import FitConfig
from scaling.config.roles import ROLES
from scaling.data.store import Campaign
from scaling.fitting.engine import FitSettings, join
from scaling.fitting.params import Observation


def load_observations(campaign: Campaign, names) -> list[Observation]:
    """Observations of the named exposures, read from the store (float64, bool masks); a
    rate exposure (kind 'rate') brings its rate e-/s and variance (e-/s)², (1, p, p)."""
    records = campaign.read(names)
    observations = []
    for name in names:
        info, rec = campaign.info(name), records[name]
        spec = make_spec(
            info.filter,
            info.ngroups,
            roll=info.roll,
            group_time=info.group_time,
            nints=info.nints,
            dither=(info.dither_x, info.dither_y),
        )
        variance = rec.variance if info.kind == "rate" else None
        observations.append(
            Observation(name, info.epoch, spec, rec.slope, rec.badpix, info.kind, variance)
        )
    return observations


def initial_shared(config: FitConfig, model: ExposureModel) -> dict:
    """Starting shared parameters: nominal detector, no aberration, the `[binary]` start
    when enabled (float64); a per-filter parameter (`ROLES`) starts with the same value in
    every filter of the model."""
    shared = nominal_detector(model.npix)
    shared["jitter"] = jnp.asarray(config.jitter)
    shared["read_noise"] = jnp.asarray(config.read_noise)
    shared["aberrations"] = jnp.zeros(model.optics.pupil.basis.shape[0])
    if config.binary.enabled:
        shared["separation"] = jnp.asarray(config.binary.separation)
        shared["position_angle"] = jnp.asarray(config.binary.position_angle)
        shared["contrast"] = jnp.asarray(config.binary.contrast)
    filters = sorted(model.bandpasses)
    shared = {
        name: {f: value for f in filters} if ROLES[name].per_filter else value
        for name, value in shared.items()
    }
    return jax.tree.map(lambda x: jnp.asarray(x, dtype=jnp.float64), shared)


def initial_local(config: FitConfig, observations: list[Observation], n_epochs: int) -> dict:
    """Starting local parameters: centred sources, flat images (float64).

    Each exposure's flux starts at its measured count rate (good pixels: the rate, or
    the mean slope over the group time).
    """
    rates = [
        np.sum(np.where(o.bad, 0.0, o.slopes).mean(axis=0))
        / (1.0 if o.kind == "rate" else float(o.spec.group_time))
        for o in observations
    ]
    n = len(observations)
    exposure = {
        "position": jnp.zeros((n, 2)),
        "log_flux": jnp.log10(jnp.asarray(rates)),
        "spectral_slope": jnp.zeros(n),
    }
    images = jnp.zeros((n_epochs, config.image_npix, config.image_npix))
    local = {"epoch": {"log_image": images}, "exposure": exposure}
    return jax.tree.map(lambda x: jnp.asarray(x, dtype=jnp.float64), local)


def initial_params(
    config: FitConfig, model: ExposureModel, observations: list[Observation], epochs: list[str]
) -> dict:
    """Starting point of a single-process fit (`initial_shared` and `initial_local`)."""
    return join(
        {"shared": initial_shared(config, model)},
        initial_local(config, observations, len(epochs)),
    )


def freeze_science_positions(observations: list[Observation]):
    """Gradient hook freezing the position of the first exposure of each epoch.

    That exposure's pointing is carried by the epoch image (as in the seed notebook,
    where an image belongs to one exposure); the other exposures of the epoch fit their
    pointing relative to it, which one image cannot carry for all of them. Calibrator
    positions stay free. `observations` must hold whole epochs (as a shard does).
    """
    firsts = {}
    for i, o in enumerate(observations):
        if o.epoch is not None:
            firsts.setdefault(o.epoch, i)
    frozen = set(firsts.values())
    free = jnp.asarray([[0.0] if i in frozen else [1.0] for i in range(len(observations))])

    def hook(grads, params):
        if "exposure" not in grads or "position" not in grads["exposure"]:
            return grads
        exposure = {**grads["exposure"], "position": grads["exposure"]["position"] * free}
        return {**grads, "exposure": exposure}

    return hook


def settings_from(config: FitConfig, observations: list[Observation]) -> FitSettings:
    """Engine settings of a fit config."""
    return FitSettings(
        dict(config.optimisers),
        dict(config.regularisers),
        config.diagonal,
        grad_hook=freeze_science_positions(observations),
    )
