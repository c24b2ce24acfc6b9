"""The start of a fit: the exposures it uses, observations read from the store,
starting parameters, settings.

Shared by the single process (`scaling.fitting.stepper.InProcess`) and the cluster's
coordinator and shard workers, so all of them fit the same exposures from the same point.
"""

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from model import ExposureModel, make_spec, nominal_detector
from model.constants import ARCSEC, PIXEL_SCALE
from scaling.config import FitConfig, StarFieldFitConfig
from scaling.config.roles import ROLES
from scaling.data.results import Results
from scaling.data.store import Campaign
from scaling.fitting.engine import FitSettings, join
from scaling.fitting.params import Batch, Observation, make_batches
from scaling.fitting.starfield import find_stars
from scaling.fitting.validation import split_held_out

_SELECT_FIELDS = {"target": "targets", "filter": "filters", "observation": "observations"}


def open_selection(config: FitConfig) -> Campaign:
    """The exposures a fit uses: the campaign store `config.campaign` narrowed by the
    config's `[select]` table (all of it when that is empty).

    Every path of a fit opens its campaign here (the single process, the cluster's
    coordinator, which partitions this selection, and its workers), so all fit the same
    exposures.

    Raises:
        ValueError: a listed target, filter or observation matches no exposure of the
            store (naming the `select` key and what the store holds).
    """
    campaign = Campaign.open(config.campaign)
    for field, values in config.select.criteria.items():
        present = {getattr(e, field) for e in campaign.exposures}
        for i, value in enumerate(values):
            if value not in present:
                key = f"select.{_SELECT_FIELDS[field]}[{i}]"
                raise ValueError(
                    f"{key}: {value!r} matches no exposure of {campaign.where}; "
                    f"it holds {_SELECT_FIELDS[field]} {sorted(present)}"
                )
    selected = campaign.select(**config.select.criteria)
    if not selected.names:
        raise ValueError(
            f"select: no exposure of {campaign.where} matches every list of "
            f"{dict(config.select.criteria)}"
        )
    return selected


def load_observations(campaign: Campaign, names) -> list[Observation]:
    """Observations of the named exposures, read from the store (float64, bool masks); a
    rate exposure (kind 'rate') brings its rate e-/s and variance (e-/s)², (1, p, p);
    slopes from ramps bring their slope masks and integration counts."""
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
        masks = {"slope_mask": rec.slope_mask, "counts": rec.counts}
        masks["pair_counts"] = rec.pair_counts
        observations.append(
            Observation(name, info.epoch, spec, rec.slope, rec.badpix, info.kind, variance, **masks)
        )
    return observations


@dataclass
class FitData:
    """What a fit of some exposures works on: the training observations and their
    batches, and the batches of the held-out validation pixels ([] when none are)."""

    observations: list[Observation]
    batches: list[Batch]
    validation: list[Batch]


def fit_data(config: FitConfig, campaign: Campaign, names, epochs: list[str]) -> FitData:
    """The named exposures read from the store, their validation pixels held out as
    `config.validation_fraction` asks (see `scaling.fitting.validation`), batched."""
    observations, validation = load_observations(campaign, names), []
    if config.validation_fraction:
        observations, held = split_held_out(
            observations, config.validation_fraction, config.validation_seed
        )
        validation = make_batches(held, list(names), epochs)
    return FitData(observations, make_batches(observations, list(names), epochs), validation)


def initial_shared(
    config: FitConfig, model: ExposureModel, campaign: Campaign | None = None
) -> dict:
    """Starting shared parameters: nominal detector, no aberration, the `[binary]` start
    when enabled, for a star field (`StarFieldFitConfig`) the stars found in the first
    exposure of `campaign` (`star_field_start`) (float64); a per-filter parameter
    (`ROLES`) starts with the same value in every filter of the model. With
    `config.calibration`, the instrument's parameters saved there replace these
    (`calibration_values`)."""
    shared = nominal_detector(model.npix)
    shared["jitter"] = jnp.asarray(config.jitter)
    shared["read_noise"] = jnp.asarray(config.read_noise)
    shared["aberrations"] = jnp.zeros(model.optics.pupil.basis.shape[0])
    if isinstance(config, StarFieldFitConfig):
        if campaign is None:
            raise ValueError("a star-field fit starts from its campaign's first exposure")
        shared.update(star_field_start(config, campaign, model))
    if config.binary.enabled:
        shared["separation"] = jnp.asarray(config.binary.separation)
        shared["position_angle"] = jnp.asarray(config.binary.position_angle)
        shared["contrast"] = jnp.asarray(config.binary.contrast)
    filters = sorted(model.bandpasses)
    shared = {
        name: {f: value for f in filters} if ROLES[name].per_filter else value
        for name, value in shared.items()
    }
    shared = jax.tree.map(lambda x: jnp.asarray(x, dtype=jnp.float64), shared)
    if config.calibration:
        shared.update(calibration_values(config.calibration, shared))
    return shared


def star_field_start(config: StarFieldFitConfig, campaign: Campaign, model) -> dict:
    """{"positions", "log_fluxes"} of the `config.stars` brightest stars of the
    campaign's first exposure (`find_stars`).

    Raises:
        ValueError: a star at some exposure's known dither would leave the shared PSF's
            padded grid (naming `instrument.psf_pad`).
    """
    first = load_observations(campaign, campaign.names[:1])[0]
    band = next(iter(model.bandpasses.values()))
    fwhm = band.centre / config.instrument.diameter / ARCSEC
    positions, log_fluxes = find_stars(first, config.stars, config.instrument.pixel_scale, fwhm)
    dithers = np.array(
        [[campaign.info(n).dither_x, campaign.info(n).dither_y] for n in campaign.names]
    )
    reach = np.abs(positions).max() + np.abs(dithers).max() + 2 * fwhm
    check_psf_pad(model, reach, "stars and dithers (with 2 FWHM of margin)")
    return {"positions": jnp.asarray(positions), "log_fluxes": jnp.asarray(log_fluxes)}


POINTING_MARGIN = 0.1
"""arcsec a source may move in a fit beyond its start, allowed for by the shared PSF's pad."""


def check_psf_pad(model: ExposureModel, reach: float, what: str) -> None:
    """Check that light `reach` arcsec from the grid centre (per axis) stays within the
    shared PSF's padded grid (`ExposureModel.psf_pad`; nothing to check when it is 0).

    Raises:
        ValueError: the pad is smaller, naming `instrument.psf_pad` and `what` reaches.
    """
    need = int(np.ceil(reach / model.optics.psf_pixel_scale))
    if model.psf_pad and need > model.psf_pad:
        raise ValueError(
            f"instrument.psf_pad: {what} reach {reach:.2f} arcsec from the centre, {need} "
            f"optical pixels; got {model.psf_pad}"
        )


def calibration_values(location: str, like: dict) -> dict:
    """The shared instrument parameters of `like` (a fit's starting shared tree) as saved
    in the results store at `location`: every name of `like` the store holds, except a
    target's own (`Role.source`: a binary's); per filter, the filters of `like` (the
    store may hold more). Names the store lacks keep their start.

    Raises:
        StoreError: no results store there, or nothing saved in it.
        ValueError: the store lacks one of `like`'s filters for a per-filter parameter,
            or a value's shape differs (another model size), naming the parameter.
    """
    saved = Results.open(location).load().shared
    out = {}
    for name, start in like.items():
        if name not in saved or ROLES[name].source:
            continue
        if ROLES[name].per_filter:
            missing = sorted(set(start) - set(saved[name]))
            if missing:
                raise ValueError(
                    f"calibration: {location} holds {name} for {sorted(saved[name])}, not "
                    f"for {missing}; calibrate those filters too or select fewer"
                )
            value = {f: saved[name][f] for f in start}
        else:
            value = saved[name]
        for got, want in zip(jax.tree.leaves(value), jax.tree.leaves(start), strict=True):
            if np.shape(got) != np.shape(want):
                raise ValueError(
                    f"calibration: {location} holds {name} of shape {np.shape(got)}, this "
                    f"fit's model needs {np.shape(want)} (fit with the same [instrument])"
                )
        out[name] = jax.tree.map(lambda x: jnp.asarray(x, dtype=jnp.float64), value)
    return out


def centroid_position(
    observation: Observation, pixel_scale: float = PIXEL_SCALE, window: int | None = None
) -> np.ndarray:
    """(x, y) position of the light of an exposure, arcsec from the frame centre in
    detector axes, as the model's `position` (x along columns, y along rows, the centre at
    pixel (npix - 1) / 2, the known dither taken off).

    The centroid of the good pixels' mean slope (negative values as 0), then three times
    the centroid within a square of half-side `window` pixels (default npix // 4) about
    the last one, so that the frame edge pulls it less towards the centre.
    """
    light = np.where(observation.bad, 0.0, observation.mean_slope())
    light = np.where(np.isfinite(light), np.maximum(light, 0.0), 0.0)  # bad pixels may be NaN
    npix = light.shape[-1]
    half = npix // 4 if window is None else window
    yy, xx = np.mgrid[:npix, :npix].astype(np.float64)
    near = np.ones_like(light, dtype=bool)
    for _ in range(4):
        weight = np.where(near, light, 0.0)
        total = weight.sum()
        if total <= 0:
            return np.zeros(2)
        x, y = (weight * xx).sum() / total, (weight * yy).sum() / total
        near = (np.abs(xx - x) <= half) & (np.abs(yy - y) <= half)
    centre = (npix - 1) / 2
    offset = np.array([x - centre, y - centre]) * pixel_scale
    return offset - np.asarray(observation.spec.dither)


def initial_local(config: FitConfig, observations: list[Observation], n_epochs: int) -> dict:
    """Starting local parameters: sources at the frame centre (or, with `position_start =
    "centroid"`, at each exposure's `centroid_position`), flat images (float64).

    Each exposure's flux starts at its measured count rate (good pixels: the rate, or
    the mean slope over the group time).
    """
    rates = [
        np.sum(o.mean_slope()) / (1.0 if o.kind == "rate" else float(o.spec.group_time))
        for o in observations
    ]
    n = len(observations)
    if isinstance(config, StarFieldFitConfig):
        exposure = {"pointing": jnp.zeros((n, 2)), "log_scale": jnp.zeros(n)}
        exposure["spectral_slope"] = jnp.zeros(n)
        return jax.tree.map(
            lambda x: jnp.asarray(x, dtype=jnp.float64), {"epoch": {}, "exposure": exposure}
        )
    if config.position_start == "centroid":
        positions = jnp.asarray(np.stack([centroid_position(o) for o in observations]))
    else:
        positions = jnp.zeros((n, 2))
    exposure = {
        "position": positions,
        "log_flux": jnp.log10(jnp.asarray(rates)),
        "spectral_slope": jnp.zeros(n),
    }
    images = jnp.zeros((n_epochs, config.image_npix, config.image_npix))
    local = {"epoch": {"log_image": images}, "exposure": exposure}
    return jax.tree.map(lambda x: jnp.asarray(x, dtype=jnp.float64), local)


def initial_params(
    config: FitConfig,
    model: ExposureModel,
    observations: list[Observation],
    epochs: list[str],
    campaign: Campaign | None = None,
) -> dict:
    """Starting point of a fit of `observations` (`initial_shared` with `campaign`, the
    fit's whole selection, and `initial_local`).

    Raises:
        ValueError: with the shared PSF, a source at its start, with its dither, a
            binary's separation and `POINTING_MARGIN`, would reach past the padded grid
            (`check_psf_pad`). An epoch image's half width need not fit: the PSF wings
            of its outer light that pass the padded grid's edge wrap round to the far
            edge (`model.shared_psf`), as the exact mode drops them.
    """
    shared = initial_shared(config, model, campaign)
    local = initial_local(config, observations, len(epochs))
    if "position" in local["exposure"]:
        dithers = np.stack([np.asarray(o.spec.dither) for o in observations])
        offsets = np.asarray(local["exposure"]["position"]) + dithers
        extent = 1e-3 * config.binary.separation if config.binary.enabled else 0.0
        reach = np.abs(offsets).max() + extent + POINTING_MARGIN
        what = f"sources at their start with dithers, separation and {POINTING_MARGIN} arcsec"
        check_psf_pad(model, reach, what)
    return join({"shared": shared}, local)


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


def freeze_reference_exposure(observations: list[Observation], reference: str):
    """Gradient hook holding the `pointing` and `log_scale` of exposure `reference` (the
    campaign's first) at their start: the shared stars carry the field's position and
    flux scale, measured from that exposure. `observations` may be a shard without it."""
    keep = jnp.asarray([0.0 if o.name == reference else 1.0 for o in observations])

    def hook(grads, params):
        if "exposure" not in grads or "pointing" not in grads["exposure"]:
            return grads
        exposure = dict(grads["exposure"])
        exposure["pointing"] = exposure["pointing"] * keep[:, None]
        exposure["log_scale"] = exposure["log_scale"] * keep
        return {**grads, "exposure": exposure}

    return hook


def settings_from(
    config: FitConfig, observations: list[Observation], reference: str | None = None
) -> FitSettings:
    """Engine settings of a fit config.

    The first position of each epoch is frozen (`freeze_science_positions`) only when the
    epoch image is fitted and drawn: a binary fit ignores the image, and an image held
    fixed cannot carry a pointing, so there every position is free. A star field holds
    the pointing and flux scale of the `reference` exposure, the campaign's first
    (`freeze_reference_exposure`).
    """
    images_carry_pointing = "log_image" in config.optimisers and not config.binary.enabled
    hook = freeze_science_positions(observations) if images_carry_pointing else None
    if isinstance(config, StarFieldFitConfig) and reference is not None:
        hook = freeze_reference_exposure(observations, reference)
    return FitSettings(
        dict(config.optimisers), dict(config.regularisers), config.diagonal, grad_hook=hook
    )
