"""Simulated campaigns: true parameters → noisy JWST-like exposures on disk, plus the truth.

`simulate(config, out)` writes one FITS file per exposure, the truth as `truth.json`
(scalars, the exposure → epoch map, the config echoed) and `truth.npz` (arrays), all into a
temporary folder beside `out` that is renamed to `out` at the end, so a failure leaves
nothing half-written. Randomness comes only from NumPy generators spawned from the config's
seed: the same seed gives byte-identical files.

Products: "slopes" (default) writes our slope files, NAME_calslope.fits
(`scaling.data.fitsio`); "rate" writes JWST-like stage-2 products, NAME_cal.fits
(`scaling.data.products.write_rate_product`, DN/s with NIRISS's gain), whose rate is what a
pipeline measures, kept simple (`noisy_rate`): the noiseless rate of the linear,
IPC-convolved ramp (`ExposureModel.mean_rate`: the pipeline corrects the non-linearity, and
the brighter-fatter effect is left out) plus Gaussian noise with the variance of the
first-to-last-read slope averaged over NINTS integrations. "uncal" and "ramp" write JWST
ramps, NAME_uncal.fits (raw uint16 DN, bias included, no DQ) or NAME_ramp.fits (stage-1
float32 DN, GROUPDQ SATURATED and JUMP_DET, PIXELDQ DO_NOT_USE on the bad pixels)
(`scaling.data.products.write_ramp_product`): every group read of every integration
(`model.noise.noisy_ramps`: Poisson increments, cosmic-ray jumps at `truth.cosmic_ray_rate`,
charge clipped at `truth.well_depth`, read noise), none truncated; the truth adds each
exposure's noiseless slopes (`slopes_NAME`, (ngroups-1, p, p) e-/group) and its cosmic rays
(`cosmic_rays_NAME`, rows of integration, group, y, x, electrons). An `_uncal` file carries
no pixel flags, so its bad pixels read like the others.
"""

import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from numpy.typing import NDArray
from tqdm.auto import tqdm

from model import ExposureModel, ExposureSpec, make_spec, nominal_detector
from model.constants import FRAME_TIME
from model.noise import noisy_ramps, noisy_slopes
from model.scenes import IoScene
from scaling.config import CampaignConfig, Config, FlatFieldConfig, config_to_dict
from scaling.data.fitsio import ExposureMeta, ExposureRecord, exposure_name, write_exposure
from scaling.data.jwst import NIRISS_SUBARRAYS
from scaling.data.products import (
    PRODUCTS,
    RAMP,
    RATE,
    SLOPES,
    UNCAL,
    write_ramp_product,
    write_rate_product,
)
from scaling.data.ramps import DEFAULT_SATURATION_DN
from scaling.data.staging import staged_folder
from scaling.data.truthfiles import write_truth

LOG_FLOOR = 1e-12
"""Relative floor under the true image before taking its log (pixels off the disk)."""

HOT_RANGE = (1e3, 3e4)
"""Range of the (log-uniform) values written into bad pixels, electrons per group."""

SUFFIXES = {SLOPES: "_calslope.fits", RATE: "_cal.fits", UNCAL: "_uncal.fits", RAMP: "_ramp.fits"}
RAMPS = (UNCAL, RAMP)
"""Products holding every group read (not truncated below the well)."""
"""File name ending of each kind of product."""


@eqx.filter_jit
def _forward(model: ExposureModel, params: dict, spec: ExposureSpec):
    """(mean slopes (ngroups-1, p, p) e-/group, peak count rate e-/s) of one exposure."""
    return model.slopes(params, spec), jnp.max(model.rate(params, spec))


@eqx.filter_jit
def _ramp(model: ExposureModel, params: dict, spec: ExposureSpec):
    """(mean signal at each read (ngroups, p, p) e-, mean slopes (ngroups-1, p, p) e-/group)."""
    return model.ramp(params, spec), model.slopes(params, spec)


@eqx.filter_jit
def _mean_rate(model: ExposureModel, params: dict, spec: ExposureSpec):
    """Noiseless rate a pipeline measures, (p, p) e-/s (`ExposureModel.mean_rate`)."""
    return model.mean_rate(params, spec)


@dataclass(frozen=True)
class _Readout:
    """What every exposure of a workload shares: readout and file metadata.

    read_noise: e- per read; group_time: s; well_depth: e- (inf: no ramp truncation);
    pupil: 'NRM' or 'CLEAR'; program: programme id; pixel_scale: arcsec per detector
    pixel; products: one of `PRODUCTS` (see the module docstring); cosmic_ray_rate: hits
    per pixel per second in ramps.
    """

    read_noise: float
    group_time: float
    well_depth: float
    pupil: str
    program: int
    pixel_scale: float
    products: str
    cosmic_ray_rate: float = 0.0


@dataclass(frozen=True)
class _Planned:
    """One exposure to simulate: identity, pointing and its per-exposure parameters."""

    role: str  # "science", "calibrator" or "field"
    target: str
    epoch: int | None
    filter: str
    expmid: float
    roll: float
    nints: int
    ngroups: int  # groups read before truncation
    observation: int
    exposure: int
    dither: tuple[float, float] = (0.0, 0.0)
    local: dict[str, NDArray[np.float64]] = field(default_factory=dict)


def truncated_ngroups(peak_rate: float, group_time: float, well_depth: float, ngroups: int) -> int:
    """Most groups (at most `ngroups`) that keep a pixel of `peak_rate` e-/s below the well.

    Raises:
        ValueError: even 2 groups would reach `well_depth` electrons.
    """
    if not math.isfinite(well_depth) or peak_rate <= 0:
        return ngroups
    fit = math.ceil(well_depth / (peak_rate * group_time)) - 1
    if fit < 2:
        raise ValueError(
            f"a peak rate of {peak_rate:.4g} e-/s fills the {well_depth:.4g} e- well within "
            f"2 groups of {group_time} s: lower the flux"
        )
    return min(ngroups, fit)


def pipeline_variance(
    slopes: NDArray[np.float64], read_noise: float, nints: int
) -> NDArray[np.float64]:
    """Variance of each averaged slope estimated from the data, as a pipeline would:
    (max(slope, 0) + 2 read_noise²) / nints, electrons²."""
    return (np.maximum(slopes, 0.0) + 2 * read_noise**2) / nints


def noisy_rate(
    rng: np.random.Generator,
    mean_rate: NDArray[np.float64],
    read_noise: float,
    nints: int,
    span: float,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """(rate e-/s, its Poisson and read-noise variances (e-/s)²) a pipeline would report.

    Each integration's rate is its first-to-last-read slope over `span` = (ngroups-1) ×
    group_time seconds; averaged over `nints`, its variance is (rate / span + 2 read_noise²
    / span²) / nints. The rate drawn is `mean_rate` (e-/s) plus Gaussian noise of that
    variance; the variances returned are estimated from the noisy rate, as a pipeline does
    (Poisson part clipped at 0).
    """
    read = np.full(np.shape(mean_rate), 2 * read_noise**2 / (nints * span**2))
    poisson = np.maximum(mean_rate, 0.0) / (nints * span)
    rate = mean_rate + np.sqrt(poisson + read) * rng.standard_normal(np.shape(mean_rate))
    return rate, np.maximum(rate, 0.0) / (nints * span), read


def bad_pixel_mask(rng: np.random.Generator, npix: int, fraction: float) -> NDArray[np.bool_]:
    """(npix, npix) mask: the outermost pixel ring plus a random `fraction` of pixels."""
    bad = rng.random((npix, npix)) < fraction
    bad[[0, -1], :] = True
    bad[:, [0, -1]] = True
    return bad


def _arrays(d: dict[str, Any]) -> dict[str, NDArray[np.float64]]:
    """Float64 NumPy copies (one dtype everywhere, so jitted functions compile once)."""
    return {k: np.asarray(v, dtype=np.float64) for k, v in d.items()}


def _observe(
    model: ExposureModel,
    plan: list[_Planned],
    names: list[str],
    params_of: Callable[[_Planned], dict],
    bad: NDArray[np.bool_],
    readout: _Readout,
    seeds: np.random.SeedSequence,
    folder: Path,
    progress: bool,
) -> tuple[dict[str, dict[str, Any]], dict[str, NDArray[np.float64]]]:
    """Simulate every planned exposure into `folder`; returns each one's ramp facts and
    the truth arrays of ramp products (see the module docstring; none for the others).

    Each role's ramp is truncated to the same number of groups, chosen so that the
    brightest pixel of its brightest exposure stays below the well depth (collected e-):
    the ramp is computed as read (`ngroups` groups) and its later groups are dropped, as
    a pipeline would; ramp products keep every group. Bad pixels get hot values
    (log-uniform in `HOT_RANGE`), flagged; in ramp products they are only flagged.
    """
    group_time = readout.group_time

    def spec_of(e: _Planned) -> ExposureSpec:
        return make_spec(
            e.filter, e.ngroups, e.roll, group_time=group_time, nints=e.nints, dither=e.dither
        )

    def forward(e: _Planned):
        mean, peak = _forward(model, params_of(e), spec_of(e))
        return np.asarray(mean), float(peak)

    limits = tqdm(plan, desc="ramp limits", unit="exp", disable=not progress)
    peaks = [forward(e)[1] for e in limits]
    ngroups = {}
    for e, peak in zip(plan, peaks, strict=True):
        if readout.products in RAMPS:
            limit = e.ngroups
        else:
            limit = truncated_ngroups(peak, group_time, readout.well_depth, e.ngroups)
        ngroups[e.role] = min(ngroups.get(e.role, limit), limit)
    noise_seeds = seeds.spawn(len(plan))
    facts, arrays = {}, {}
    bar = tqdm(plan, desc="exposures", unit="exp", disable=not progress)
    for e, name, seed, peak in zip(bar, names, noise_seeds, peaks, strict=True):
        n = ngroups[e.role]
        rng = np.random.default_rng(seed)
        meta = ExposureMeta(
            filter=e.filter,
            pupil=readout.pupil,
            target=e.target,
            is_psf=e.role != "science",
            expmid=e.expmid,
            roll=e.roll,
            nints=e.nints,
            ngroups=n,
            group_time=group_time,
            subarray=f"SUB{model.npix}",
            program=readout.program,
            observation=e.observation,
            visit=1,
            exposure=e.exposure,
            dither_x=e.dither[0],
            dither_y=e.dither[1],
        )
        target = _Target(folder / f"{name}{SUFFIXES[readout.products]}", meta, rng, bad)
        if readout.products == RATE:
            mean_rate = np.asarray(_mean_rate(model, params_of(e), spec_of(e)))
            _write_rate(target, mean_rate, readout)
        elif readout.products in RAMPS:
            reads, slopes = (np.asarray(a) for a in _ramp(model, params_of(e), spec_of(e)))
            arrays[f"slopes_{name}"] = slopes
            arrays[f"cosmic_rays_{name}"] = _write_ramps(target, reads, readout)
        else:
            _write_slopes(target, forward(e)[0][: n - 1], readout)
        facts[name] = {"ngroups": n, "peak_charge": peak * group_time * n}
    return facts, arrays


def _hot_values(rng: np.random.Generator, bad: NDArray[np.bool_]) -> NDArray[np.float64]:
    """Values for the bad pixels, log-uniform in `HOT_RANGE` (e-/group)."""
    return np.exp(rng.uniform(*np.log(HOT_RANGE), size=int(bad.sum())))


class _Target(NamedTuple):
    """One simulated exposure's file, description, noise generator and bad pixels."""

    path: Path
    meta: ExposureMeta
    rng: np.random.Generator
    bad: NDArray[np.bool_]


def _write_slopes(t: _Target, mean: NDArray[np.float64], readout: _Readout) -> None:
    """Our slope file of mean slopes `mean` (ngroups-1, p, p) e-/group, with noise."""
    data = noisy_slopes(t.rng, mean, readout.read_noise, t.meta.nints)
    data[:, t.bad] = _hot_values(t.rng, t.bad)
    variance = pipeline_variance(data, readout.read_noise, t.meta.nints)
    fields = dataclasses.asdict(t.meta)
    write_exposure(t.path, ExposureRecord(**fields, slope=data, variance=variance, badpix=t.bad))


def _write_rate(t: _Target, mean_rate: NDArray[np.float64], readout: _Readout) -> None:
    """A JWST-like `_cal` product of the noiseless rate `mean_rate` (p, p) e-/s, with noise."""
    meta = t.meta
    span = (meta.ngroups - 1) * meta.group_time
    rate, poisson, read = noisy_rate(t.rng, mean_rate, readout.read_noise, meta.nints, span)
    rate[t.bad] = _hot_values(t.rng, t.bad) / meta.group_time
    write_rate_product(t.path, meta, rate, poisson, read, t.bad, readout.pixel_scale)


def _write_ramps(
    t: _Target, mean_reads: NDArray[np.float64], readout: _Readout
) -> NDArray[np.float64]:
    """A JWST `_uncal` or `_ramp` file of the noiseless reads `mean_reads` (ngroups, p, p)
    e-, with noise, cosmic rays and saturation; returns the cosmic rays (k, 5)."""
    reads, hits = noisy_ramps(
        t.rng,
        mean_reads,
        readout.read_noise,
        t.meta.nints,
        readout.well_depth,
        readout.cosmic_ray_rate,
        t.meta.group_time,
    )
    jumps = np.zeros(reads.shape, bool)
    jumps[tuple(hits[:, :4].astype(int).T)] = True
    write_ramp_product(
        t.path,
        t.meta,
        reads,
        readout.pixel_scale,
        readout.products,
        DEFAULT_SATURATION_DN,
        jumps=jumps,
        bad=t.bad,
    )
    return hits


def _truth_detector(cfg: CampaignConfig, rng: np.random.Generator, npix: int) -> dict:
    """True shared detector parameters of an AMI campaign."""
    t = cfg.truth
    c = t.ipc_coupling
    ipc = np.array([[0.0, c, 0.0], [c, 1 - 4 * c, c], [0.0, c, 0.0]])
    return _arrays(
        {
            "flat": 1.0 + t.flat_scatter * rng.standard_normal((npix, npix)),
            "ipc": ipc,
            "bfe": t.bfe,
            "nonlinearity": t.nonlinearity,
            "dark": t.dark,
            "jitter": t.jitter,
            "read_noise": t.read_noise,
        }
    )


def _epoch_mids(cfg: CampaignConfig) -> list[float]:
    """Mid time of each epoch, MJD."""
    ep = cfg.epochs
    return [ep.start_mjd + i * ep.spacing_hours / 24 for i in range(ep.count)]


def _plan_io(cfg: CampaignConfig, rng: np.random.Generator, group_time: float) -> list[_Planned]:
    """Science exposures (per epoch, filter, exposure) then calibrators (per star, filter).

    Per-exposure truth: pointing offsets, log flux and spectral slope scattered (Gaussian,
    `epochs.*_scatter`) about the science or calibrator values (calibrator slope: 0).
    """
    ep, cal = cfg.epochs, cfg.calibrators
    mids = _epoch_mids(cfg)
    plan = []

    def local(log_flux: float, slope: float) -> dict[str, NDArray[np.float64]]:
        return _arrays(
            {
                "position": ep.position_scatter * rng.standard_normal(2),
                "log_flux": log_flux + ep.log_flux_scatter * rng.standard_normal(),
                "spectral_slope": slope + ep.spectral_slope_scatter * rng.standard_normal(),
            }
        )

    per_epoch = len(cfg.filters) * ep.exposures
    duration = ep.nints * ep.ngroups * group_time / 86400  # days
    for i, mid in enumerate(mids):
        for k in range(per_epoch):
            filt, j = cfg.filters[k // ep.exposures], k % ep.exposures
            plan.append(
                _Planned(
                    role="science",
                    target="IO",
                    epoch=i,
                    filter=filt,
                    expmid=mid + (k - (per_epoch - 1) / 2) * duration,
                    roll=ep.rolls[j % len(ep.rolls)],
                    nints=ep.nints,
                    ngroups=ep.ngroups,
                    observation=i + 1,
                    exposure=k + 1,
                    local=local(ep.log_flux, ep.spectral_slope),
                )
            )
    cal_duration = cal.nints * cal.ngroups * group_time / 86400
    for c in range(cal.count):
        for k, filt in enumerate(cfg.filters):
            plan.append(
                _Planned(
                    role="calibrator",
                    target=f"CAL{c + 1}",
                    epoch=None,
                    filter=filt,
                    expmid=mids[c * len(mids) // cal.count] + 1 / 24 + k * cal_duration,
                    roll=ep.rolls[0],
                    nints=cal.nints,
                    ngroups=cal.ngroups,
                    observation=ep.count + c + 1,
                    exposure=k + 1,
                    local=local(cal.log_flux, 0.0),
                )
            )
    return plan


def _io_scene(cfg: CampaignConfig) -> IoScene:
    """Io as configured; its sub-observer longitude is `io.start_longitude` at the start."""
    v = cfg.io.volcanoes
    column = lambda values: jnp.asarray(values, dtype=jnp.float64)  # noqa: E731
    return IoScene(
        column([x.latitude for x in v]),
        column([x.longitude for x in v]),
        column([x.brightness for x in v]),
        cfg.io.diameter,
        cfg.io.limb_darkening,
        cfg.epochs.start_mjd,
        cfg.io.start_longitude,
        cfg.io.sub_latitude,
    )


def _simulate_io(cfg: CampaignConfig, folder: Path, progress: bool, products: str) -> list[str]:
    """Simulate an Io AMI campaign into `folder` as `products`; returns the exposure names."""
    truth_seed, bad_seed, noise_seed = np.random.SeedSequence(cfg.seed).spawn(3)
    rng = np.random.default_rng(truth_seed)
    ins, t = cfg.instrument, cfg.truth
    model = ins.build(cfg.filters)
    pupil = model.optics.pupil
    drawn = t.aberration_rms * rng.standard_normal((len(cfg.filters), pupil.basis.shape[0]))
    aberrations = np.stack([np.asarray(pupil.canonical(a)) for a in drawn])
    detector = _truth_detector(cfg, rng, ins.npix)
    bad = bad_pixel_mask(np.random.default_rng(bad_seed), ins.npix, t.bad_pixel_fraction)

    scene = _io_scene(cfg)
    scale = model.optics.psf_pixel_scale
    mids = _epoch_mids(cfg)
    times = [jnp.asarray(mjd, dtype=jnp.float64) for mjd in mids]
    images = np.stack([np.asarray(scene.image(tm, cfg.io.image_npix, scale)) for tm in times])
    log_images = np.log(np.maximum(images, LOG_FLOOR * images.max(axis=(1, 2), keepdims=True)))
    spots = [scene.spots(tm) for tm in times]

    plan = _plan_io(cfg, rng, FRAME_TIME)
    names = [exposure_name(cfg.program, e.observation, e.exposure) for e in plan]

    def params_of(e: _Planned) -> dict:
        params = {**detector, **e.local, "aberrations": aberrations[cfg.filters.index(e.filter)]}
        if e.epoch is not None:
            params["log_image"] = log_images[e.epoch]
        return params

    readout = _Readout(
        t.read_noise,
        FRAME_TIME,
        t.well_depth,
        "NRM",
        cfg.program,
        scale * ins.oversample,
        products,
        t.cosmic_ray_rate,
    )
    facts, ramps = _observe(
        model, plan, names, params_of, bad, readout, noise_seed, folder, progress
    )
    epoch_names = [f"epoch{i + 1:03d}" for i in range(len(mids))]
    truth = {
        "kind": cfg.KIND,
        "detector_pixel_scale": scale * ins.oversample,
        "image_pixel_scale": scale,
        "filters": list(cfg.filters),
        "volcanoes": [v.name for v in cfg.io.volcanoes],
        "dark": t.dark,
        "jitter": t.jitter,
        "read_noise": t.read_noise,
        "well_depth": t.well_depth,
        "epochs": [
            {"name": name, "mjd": mjd, "sub_longitude": float(scene.sub_longitude(tm))}
            for name, mjd, tm in zip(epoch_names, mids, times, strict=True)
        ],
        "exposure_epoch": {
            n: None if e.epoch is None else epoch_names[e.epoch]
            for n, e in zip(names, plan, strict=True)
        },
        "exposures": _exposure_table(plan, names, facts, SUFFIXES[products]),
        "config": config_to_dict(cfg),
    }
    arrays = {
        "images": images,
        "log_images": log_images,
        "spot_xy": np.stack([np.asarray(xy) for xy, _ in spots]),
        "spot_visibility": np.stack([np.asarray(v) for _, v in spots]),
        "aberrations": aberrations,
        **{k: detector[k] for k in ("flat", "ipc", "bfe", "nonlinearity")},
        "bad_pixels": bad,
        "positions": np.stack([e.local["position"] for e in plan]),
        "log_fluxes": np.stack([e.local["log_flux"] for e in plan]),
        "spectral_slopes": np.stack([e.local["spectral_slope"] for e in plan]),
        **ramps,
    }
    write_truth(folder, truth, arrays)
    return names


def _exposure_table(
    plan: list[_Planned], names: list[str], facts: dict, suffix: str
) -> dict[str, dict]:
    """Per-exposure truth for truth.json: identity, pointing, ramp; `index` is the row in
    the per-exposure arrays of truth.npz; files end in `suffix`."""
    return {
        name: {
            "index": i,
            "file": f"{name}{suffix}",
            "role": e.role,
            "target": e.target,
            "filter": e.filter,
            "expmid": e.expmid,
            "roll": e.roll,
            "dither": list(e.dither),
            "nints": e.nints,
            **facts[name],
        }
        for i, (name, e) in enumerate(zip(names, plan, strict=True))
    }


def _simulate_flatfield(
    cfg: FlatFieldConfig, folder: Path, progress: bool, products: str
) -> list[str]:
    """Simulate the dithered star-field workload into `folder` as `products`; returns the
    exposure names."""
    truth_seed, bad_seed, noise_seed, pointing_seed = np.random.SeedSequence(cfg.seed).spawn(4)
    rng = np.random.default_rng(truth_seed)
    ins, stars = cfg.instrument, cfg.stars
    dithers = cfg.dither_offsets()
    pointing_rng = np.random.default_rng(pointing_seed)
    pointings = cfg.pointing_scatter * pointing_rng.standard_normal((len(dithers), 2))
    log_scales = cfg.flux_scale_scatter * pointing_rng.standard_normal(len(dithers))
    model = ins.build((cfg.filter,))
    aberrations = np.asarray(
        model.optics.pupil.canonical(cfg.aberration_rms * rng.standard_normal(ins.n_zernikes))
    )
    flat = 1.0 + cfg.pixel_response_scatter * rng.standard_normal((ins.npix, ins.npix))
    positions = rng.uniform(-stars.size / 2, stars.size / 2, (stars.n_stars, 2))
    log_fluxes = rng.uniform(stars.log_flux_min, stars.log_flux_max, stars.n_stars)
    bad = bad_pixel_mask(np.random.default_rng(bad_seed), ins.npix, cfg.bad_pixel_fraction)
    params = _arrays(
        {
            **nominal_detector(ins.npix, 1),
            "flat": flat,
            "read_noise": cfg.read_noise,
            "aberrations": aberrations,
            "positions": positions,
            "log_fluxes": log_fluxes,
            "spectral_slope": 0.0,
        }
    )
    local = [
        _arrays({"pointing": pointing, "log_scale": scale})
        for pointing, scale in zip(pointings, log_scales, strict=True)
    ]
    duration = cfg.nints * cfg.ngroups * ins.group_time / 86400  # days
    plan = [
        _Planned(
            role="field",
            target="FIELD",
            epoch=None,
            filter=cfg.filter,
            expmid=cfg.start_mjd + d * duration,
            roll=0.0,
            nints=cfg.nints,
            ngroups=cfg.ngroups,
            observation=1,
            exposure=d + 1,
            dither=tuple(dither),
            local=local[d],
        )
        for d, dither in enumerate(dithers)
    ]
    names = [exposure_name(cfg.program, e.observation, e.exposure) for e in plan]
    readout = _Readout(
        cfg.read_noise, ins.group_time, math.inf, "CLEAR", cfg.program, ins.pixel_scale, products
    )
    facts, ramps = _observe(
        model, plan, names, lambda e: {**params, **e.local}, bad, readout, noise_seed, folder,
        progress,
    )  # fmt: skip
    truth = {
        "kind": cfg.KIND,
        "detector_pixel_scale": ins.pixel_scale,
        "filters": [cfg.filter],
        "read_noise": cfg.read_noise,
        "epochs": [],
        "exposure_epoch": dict.fromkeys(names),
        "exposures": _exposure_table(plan, names, facts, SUFFIXES[products]),
        "config": config_to_dict(cfg),
    }
    arrays = {
        "positions": positions,
        "log_fluxes": log_fluxes,
        "aberrations": aberrations,
        "flat": flat,
        "dithers": dithers,
        "pointings": pointings,
        "log_scales": log_scales,
        "bad_pixels": bad,
        **ramps,
    }
    write_truth(folder, truth, arrays)
    return names


def simulate(
    config: Config, out: str | os.PathLike, progress: bool = True, products: str = SLOPES
) -> list[Path]:
    """Simulate the workload a config describes into folder `out` as `products` (one of
    `PRODUCTS`: 'slopes', 'rate', 'uncal', 'ramp'; see the module docstring).

    Returns the exposure files written. Raises, before any work, FileExistsError if `out`
    exists and is neither empty nor a previous simulation, ValueError for unknown
    `products` or JWST products of a detector that is no NIRISS subarray.
    """
    _check_products(config, products)
    out = Path(out)
    run = _simulate_flatfield if isinstance(config, FlatFieldConfig) else _simulate_io
    with staged_folder(out, "truth.json") as folder:
        names = run(config, folder, progress, products)
    return [out / f"{n}{SUFFIXES[products]}" for n in names]


def simulated_campaign(sim: Config, fit: Any, folder: Path, **changes: Any) -> Any:
    """Simulate `sim` into `folder/sim`, ingest it into `folder/campaign.zarr`, and return
    the fit config `fit` pointed at them (results in `folder/results.zarr`, truth from
    `folder/sim`) with `changes` (further fields) applied; quietly, for the commands that
    run whole simulated studies (`scaling dithers`, `scaling flatbench`)."""
    from scaling.data.ingest import ingest

    files = simulate(sim, folder / "sim", progress=False)
    ingest([str(f) for f in files], folder / "campaign.zarr", progress=False)
    return dataclasses.replace(
        fit,
        campaign=str(folder / "campaign.zarr"),
        results=str(folder / "results.zarr"),
        truth=str(folder / "sim"),
        **changes,
    )


def _check_products(config: Config, products: str) -> None:
    """`products` is known, and JWST products have a NIRISS subarray's size."""
    if products not in PRODUCTS:
        raise ValueError(f"products: expected one of {', '.join(PRODUCTS)}, got {products!r}")
    npix = config.instrument.npix
    if products != SLOPES and f"SUB{npix}" not in NIRISS_SUBARRAYS:
        sides = [k[3:] for k in NIRISS_SUBARRAYS if k[3:].isdigit()]
        raise ValueError(
            f"instrument.npix: {products} products need a NIRISS subarray side "
            f"({', '.join(sides)}), got {npix}"
        )
