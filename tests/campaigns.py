"""Every tiny campaign the tests build, from the smallest to the most complete.

* `tiny_campaign`: observations in memory, simulated by the model (L-BFGS tests), and
  `mixed_campaign`, the same with some exposures measured as rates (engine, rate tests);
* `make_record`, `write_campaign`: synthetic exposure files of random data, 8×8 pixels
  (store, ingest and results tests); `write_rate_file`: a JWST-like rate product, 80×80;
* `simulated_campaign`: `scaling simulate` of a config, ingested into a store (fit,
  recovery and cluster tests).

The physics tests' tiny models and parameters are in `tests.helpers`, which imports only
`model` (this module needs `scaling`).
"""

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from model import ami_model, make_spec, nominal_detector
from model.noise import noisy_slopes
from model.source import normalise_log_image
from scaling.config import config_to_dict, load_config
from scaling.data.fitsio import ExposureMeta, ExposureRecord, exposure_name, write_exposure
from scaling.data.ingest import ingest
from scaling.data.products import write_rate_product
from scaling.data.results import Results
from scaling.fitting.params import Observation, exposure_params, make_batches, select
from scaling.simulate import simulate

# --- in memory --------------------------------------------------------------------------

TINY_NPIX, TINY_IMAGE = 12, 9
"""Detector side and epoch-image side of `tiny_campaign`, pixels."""


def tiny_campaign(
    seed: int = 0, nepochs: int = 2, per_epoch: int = 2, ncal: int = 1, ngroups: int = 4
):
    """(model, true params, observations, exposure names, epoch names) with noisy data."""
    npix, nimg = TINY_NPIX, TINY_IMAGE
    m = ami_model(
        npix=npix, oversample=2, pupil_npix=48, nwavels=2, n_hole_zernikes=1, filters=("F430M",)
    )
    rng = np.random.default_rng(seed)
    det = nominal_detector(npix)
    det["flat"] = jnp.asarray(1 + 0.02 * rng.standard_normal((npix, npix)))
    det["bfe"] = jnp.asarray([0.01, 0.01])
    det["nonlinearity"] = jnp.asarray([-0.01, 0.0])
    det["jitter"] = jnp.asarray(0.1)
    det["dark"] = jnp.asarray(1.0)
    aberrations = m.optics.pupil.canonical(jnp.asarray(20 * rng.standard_normal(7)))
    shared = {**det, "aberrations": {"F430M": aberrations}}
    epochs = [f"e{i}" for i in range(nepochs)]
    yy, xx = np.mgrid[:nimg, :nimg] - nimg // 2
    images = np.stack(
        [-(xx**2 + yy**2) / 6.0 + 0.3 * rng.standard_normal((nimg, nimg)) for _ in epochs]
    )
    obs_meta = [(f"sci{e}{k}", ep) for e, ep in enumerate(epochs) for k in range(per_epoch)]
    obs_meta += [(f"cal{k}", None) for k in range(ncal)]
    names = [n for n, _ in obs_meta]
    X = len(names)
    exposure = {
        "position": jnp.asarray(0.02 * rng.standard_normal((X, 2))),
        "log_flux": jnp.asarray(4.5 + 0.1 * rng.standard_normal(X)),
        "spectral_slope": jnp.asarray(0.1 * rng.standard_normal(X)),
    }
    truth = {"shared": shared, "epoch": {"log_image": jnp.asarray(images)}, "exposure": exposure}
    observations = []
    specs = [make_spec("F430M", ngroups, roll=30.0 * i, nints=5) for i in range(len(obs_meta))]
    blank = [
        Observation(n, ep, s, np.zeros((ngroups - 1, npix, npix)), np.zeros((npix, npix), bool))
        for (n, ep), s in zip(obs_meta, specs, strict=True)
    ]
    for i, (name, ep) in enumerate(obs_meta):
        spec = specs[i]
        (batch,) = make_batches([blank[i]], names, epochs)
        p = exposure_params(truth, batch, i, epochs.index(ep) if ep else 0)
        mean = np.asarray(m.slopes(p, spec))
        data = noisy_slopes(rng, mean, 10.0, 5)
        bad = np.zeros((npix, npix), bool)
        bad[0, 0] = True
        observations.append(Observation(name, ep, spec, data, bad))
    return m, truth, observations, names, epochs


# --- exposure files ---------------------------------------------------------------------

RECORD_NPIX = 8
"""Detector side of `make_record`'s exposures, pixels."""
T0 = 60000.0
"""Mid-time of the first epoch of `write_campaign`, MJD."""


def make_record(observation: int, exposure: int, expmid: float, **changes) -> ExposureRecord:
    """A valid record with random data seeded by its ids; `changes` override fields."""
    ngroups = changes.pop("ngroups", 4)
    rng = np.random.default_rng([observation, exposure])
    shape = (ngroups - 1, RECORD_NPIX, RECORD_NPIX)
    record = ExposureRecord(
        filter="F430M",
        pupil="NRM",
        target="IO",
        is_psf=False,
        expmid=expmid,
        roll=10.0 * exposure,
        nints=2,
        ngroups=ngroups,
        group_time=0.07544,
        subarray="SUB80",
        program=1373,
        observation=observation,
        visit=1,
        exposure=exposure,
        dither_x=0.0,
        dither_y=0.0,
        slope=rng.normal(100.0, 10.0, shape),
        variance=rng.uniform(50.0, 150.0, shape),
        badpix=rng.random((RECORD_NPIX, RECORD_NPIX)) < 0.1,
    )
    return dataclasses.replace(record, **changes)


def write_campaign(
    folder: Path, nepochs: int = 2, per_epoch: int = 2, ncal: int = 1, hours_apart: float = 10.0
) -> list[Path]:
    """`nepochs` Io epochs of `per_epoch` exposures (10 min apart) and `ncal` calibrator
    exposures of star CAL1; returns the files (named by observation and exposure)."""
    files = []
    for i in range(nepochs):
        for k in range(per_epoch):
            t = T0 + i * hours_apart / 24 + k * 10 / 1440
            files.append(write(folder, make_record(i + 1, k + 1, t)))
    for c in range(ncal):
        t = T0 + (c + 0.5) * hours_apart / 24
        record = make_record(90, c + 1, t, target="CAL1", is_psf=True, ngroups=3)
        files.append(write(folder, record))
    return files


def write(folder: Path, record: ExposureRecord, name: str | None = None) -> Path:
    """Write `record` to folder/NAME (default o<obs>_e<exp>.fits); returns the path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name or f"o{record.observation:03d}_e{record.exposure:03d}.fits")
    write_exposure(path, record)
    return path


RATE_NPIX = 80
"""Detector side of `write_rate_file`'s products (SUB80), pixels."""


def write_rate_file(
    folder: Path, observation: int, exposure: int, expmid: float, **changes
) -> Path:
    """A JWST-like `_cal` product (SUB80) of random rates seeded by its ids, written by
    `write_rate_product`; `changes` override `ExposureMeta` fields. Returns the path."""
    meta = ExposureMeta(
        filter="F430M",
        pupil="NRM",
        target="IO",
        is_psf=False,
        expmid=expmid,
        roll=15.0 * exposure,
        nints=20,
        ngroups=5,
        group_time=0.07544,
        subarray="SUB80",
        program=1373,
        observation=observation,
        visit=1,
        exposure=exposure,
        dither_x=0.0,
        dither_y=0.0,
    )
    meta = dataclasses.replace(meta, **changes)
    rng = np.random.default_rng([observation, exposure, RATE_NPIX])
    shape = (RATE_NPIX, RATE_NPIX)
    rate = rng.uniform(100.0, 1000.0, shape)  # e-/s
    bad = rng.random(shape) < 0.01
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{exposure_name(meta.program, observation, exposure)}_cal.fits"
    write_rate_product(path, meta, rate, rate / 20.0, np.full(shape, 4.0), bad, 0.0656)
    return path


def tree_digest(path: Path) -> dict[str, str]:
    """Relative path → SHA-256 of every file under `path` (a snapshot to compare)."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def records_equal(a: ExposureRecord, b: ExposureRecord) -> bool:
    """Every field equal, arrays bit for bit (values, shape and dtype)."""
    for field in dataclasses.fields(ExposureRecord):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if isinstance(x, np.ndarray):
            if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
                return False
        elif type(x) is not type(y) or x != y:
            return False
    return True


# --- simulated and ingested -------------------------------------------------------------


def simulated_campaign(config: str, root: Path) -> Path:
    """Simulate the campaign `config` into root/sim, ingest it into root/campaign.zarr;
    returns the simulation folder (which holds the truth)."""
    files = simulate(load_config(config), root / "sim", progress=False)
    ingest([str(f) for f in files], root / "campaign.zarr", progress=False)
    return root / "sim"


READ_NOISE = 10.0
"""Read noise per read of the simulated rate variances, e-."""


def rate_variance(mean: np.ndarray, spec) -> np.ndarray:
    """A pipeline-like variance of a rate, (e-/s)²: Poisson and read noise over the
    integration time T = (ngroups-1) group_time nints."""
    t = (spec.ngroups - 1) * float(spec.group_time) * float(spec.nints)
    return np.clip(mean, 0.0, None) / t + (READ_NOISE / t) ** 2


def simulate_rate(model, params, spec, bad, rng) -> tuple[np.ndarray, np.ndarray]:
    """(data, variance), each (p, p): a Gaussian draw around the mean rate, NaN on bad pixels."""
    mean = np.asarray(eqx.filter_jit(model.mean_rate)(params, spec))
    variance = rate_variance(mean, spec)
    data = mean + np.sqrt(variance) * rng.standard_normal(mean.shape)
    return np.where(bad, np.nan, data), np.where(bad, np.nan, variance)


RATE_EXPOSURES = ("sci01", "sci11", "cal0")
"""Exposures of `mixed_campaign` observed as rates (the others as slopes)."""


def mixed_campaign():
    """`tiny_campaign` with `RATE_EXPOSURES` replaced by rate observations (NaN on the
    bad pixel): (model, truth, observations, names, epochs)."""
    m, truth, obs, names, epochs = tiny_campaign()
    rng = np.random.default_rng(5)
    mixed = []
    for i, o in enumerate(obs):
        if o.name in RATE_EXPOSURES:
            p = select(truth, o.spec.filter, i, None if o.epoch is None else epochs.index(o.epoch))
            data, variance = simulate_rate(m, p, o.spec, o.bad, rng)
            o = dataclasses.replace(o, slopes=data[None], kind="rate", variance=variance[None])
        mixed.append(o)
    return m, truth, mixed, names, epochs


def cut_with_masks(obs: Observation, ngroups: int) -> Observation:
    """`obs` as the first `ngroups` groups of its ramp, with slope masks of its own (a
    saturating tail and one slope mid-ramp): a shorter ramp that a batch pads."""
    spec = dataclasses.replace(obs.spec, ngroups=ngroups)
    slopes = obs.slopes[: ngroups - 1]
    s, p, _ = slopes.shape
    mask = np.zeros(slopes.shape, bool)
    mask[-1, 3:6, 3:6] = True
    mask[0, 7, 2] = True
    nints = float(obs.spec.nints)
    pairs = np.full((s - 1, p, p), nints)
    pairs[-1, 3:6, 3:6] = 0.0
    return dataclasses.replace(
        obs,
        spec=spec,
        slopes=slopes,
        slope_mask=mask,
        counts=np.where(mask, 0.0, nints),
        pair_counts=pairs,
    )


def write_toml(path, config) -> str:
    """`config` as a TOML file (plain keys, then one table per dict) → its path."""
    lines = []

    def table(values: dict, name: str):
        lines.extend([f"[{name}]"] if name else [])
        plain = {k: v for k, v in values.items() if not isinstance(v, dict)}
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in plain.items())
        for key, value in values.items():
            if isinstance(value, dict):
                table(value, f"{name}.{key}" if name else key)

    table(config_to_dict(config), "")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


CLI = "import sys; from cluster.cli import main; sys.exit(main())"
"""Python code that runs `scaling` with the arguments after it (`python -c CLI fit …`)."""


def run_python(*args: str, timeout: float = 600) -> str:
    """`python ARGS` in a new process → its stdout, asserting that it exits with 0.

    A process of its own is how a test starts a second Ray session: a test process starts
    Ray at most once, since Ray may crash a process that starts it again while threads of
    the first session remain (ray-project/ray#31145)."""
    done = subprocess.run(
        [sys.executable, *args],
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def assert_saved_equal(results: str | Path, outcome, rtol: float = 1e-10) -> None:
    """The latest snapshot in the results store `results` equals the parameters and loss
    history of the fit `outcome` (a `FitOutcome` of the same campaign and steps)."""
    saved = Results.open(str(results)).load()
    params = outcome.params
    assert saved.step == outcome.step
    for name, value in saved.shared.items():
        for a, b in zip(
            jax.tree.leaves(value), jax.tree.leaves(params["shared"][name]), strict=True
        ):
            np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-14, err_msg=name)
    for name, value in saved.exposure.items():
        np.testing.assert_allclose(
            value, params["exposure"][name], rtol=rtol, atol=1e-14, err_msg=name
        )
    for i, image in enumerate(saved.images):
        expected = normalise_log_image(params["epoch"]["log_image"][i])
        np.testing.assert_allclose(image.data, expected, rtol=rtol, atol=1e-14, err_msg=image.name)
    np.testing.assert_allclose(saved.loss, outcome.history["total"], rtol=rtol)
