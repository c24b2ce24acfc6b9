"""JWST ramps (`_uncal`, `_ramp`) → slopes with per-slope masks: a simulated campaign
ingested against its noiseless truth, saturation and jumps masked exactly, the files open
with stdatamodels, bad inputs refused with the store untouched, and a fit of the store."""

import dataclasses
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import zarr
from astropy.io import fits
from stdatamodels.jwst.datamodels import Level1bModel, RampModel

import scaling.simulate as sim
from scaling.cli import main
from scaling.config import load_config
from scaling.data.fitsio import ExposureMeta
from scaling.data.ingest import ingest
from scaling.data.jwst import NIRISS_GAIN
from scaling.data.products import BIAS_DN, RAMP, UNCAL, write_ramp_product
from scaling.data.ramps import DEFAULT_SATURATION_DN, JUMP_DET, SATURATED, RampOptions
from scaling.data.store import Campaign
from scaling.data.truthfiles import load_truth
from scaling.data.validate import IngestError
from scaling.fit import fit_campaign
from scaling.fitting.objective import chi_squared_sums
from scaling.fitting.params import make_batches
from scaling.fitting.start import load_observations
from tests.campaigns import tree_digest, write_campaign

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def config():
    """io_test.toml on SUB64, one Io exposure bright enough to saturate mid-ramp and a
    calibrator, 8 integrations of 6 groups, many cosmic rays."""
    base = load_config(CONFIGS / "io_test.toml")
    return dataclasses.replace(
        base,
        instrument=dataclasses.replace(base.instrument, npix=64),
        epochs=dataclasses.replace(
            base.epochs, count=1, exposures=1, nints=8, ngroups=6, log_flux=7.4
        ),
        calibrators=dataclasses.replace(base.calibrators, nints=8, ngroups=6),
        truth=dataclasses.replace(base.truth, cosmic_ray_rate=2e-3),
    )


def _simulated(config, root: Path, products: str) -> tuple[Path, Campaign]:
    out = root / products
    files = sim.simulate(config, out, progress=False, products=products)
    ingest([str(f) for f in files], root / f"{products}.zarr", progress=False)
    return out, Campaign.open(root / f"{products}.zarr")


@pytest.fixture(scope="module")
def uncal(config, tmp_path_factory):
    """(simulation folder, its `_uncal` files ingested)."""
    return _simulated(config, tmp_path_factory.mktemp("uncal"), UNCAL)


@pytest.fixture(scope="module")
def ramp(config, tmp_path_factory):
    """(simulation folder, its `_ramp` files ingested)."""
    return _simulated(config, tmp_path_factory.mktemp("ramp"), RAMP)


def _records(campaign: Campaign):
    return campaign.read(campaign.names)


def test_ingested_slopes_equal_the_noiseless_truth_within_their_variance(uncal):
    """χ² = Σ (slope − truth)² / variance over every kept slope is within 3σ of its
    expectation N; σ² = 2N + 4 Σ ρ² over adjacent kept pairs (ρ their correlation)."""
    folder, campaign = uncal
    _, arrays = load_truth(folder)
    chi2 = expected = correlation = 0.0
    for name, r in _records(campaign).items():
        kept = ~r.slope_mask
        assert np.array_equal(kept, r.counts > 0) and not kept[:, r.badpix].any()
        truth = arrays[f"slopes_{name}"]
        chi2 += float(np.sum(((r.slope - truth)[kept]) ** 2 / r.variance[kept]))
        expected += kept.sum()
        both = kept[:-1] & kept[1:]
        read_variance = (r.variance * r.counts)[kept].min() / 2  # faintest pixel ≈ 2σ²
        covariance = -read_variance * r.pair_counts / np.maximum(r.counts[:-1] * r.counts[1:], 1)
        rho2 = covariance**2 / (r.variance[:-1] * r.variance[1:])
        correlation += float(np.sum(rho2[both]))
    sigma = np.sqrt(2 * expected + 4 * correlation)
    print(f"chi2 {chi2:.1f}, expected {expected} ± {sigma:.1f}")
    assert abs(chi2 - expected) < 3 * sigma


def _first_saturated(dn: np.ndarray) -> np.ndarray:
    """(nints, ny, nx) index of the first group at or above the saturation level (ngroups
    where none)."""
    over = dn >= DEFAULT_SATURATION_DN
    return np.where(over.any(axis=1), over.argmax(axis=1), dn.shape[1])


def test_a_saturated_pixel_keeps_exactly_its_pre_saturation_slopes(uncal):
    folder, campaign = uncal
    _, arrays = load_truth(folder)
    science = next(e for e in campaign.exposures if e.role == "science")
    record = _records(campaign)[science.name]
    dn = fits.getdata(folder / science.source_file, "SCI").astype(float)
    first = _first_saturated(dn)
    hits = arrays[f"cosmic_rays_{science.name}"]
    hit_pixels = {(int(y), int(x)) for y, x in hits[:, 2:4]}
    mid_ramp = (first.min(axis=0) > 1) & (first.max(axis=0) < dn.shape[1]) & ~record.badpix
    pixels = [p for p in map(tuple, np.argwhere(mid_ramp)) if p not in hit_pixels]
    assert len(pixels) >= 5, "the fixture should saturate some pixels mid-ramp"
    truth = arrays[f"slopes_{science.name}"]
    for y, x in pixels:
        # slope k (groups k, k+1) is kept in every integration if no integration had
        # saturated by group k+1, else in none (no selection of low photon-noise draws)
        kept = np.arange(dn.shape[1] - 1) + 1 < first[:, y, x].min()
        np.testing.assert_array_equal(record.slope_mask[:, y, x], ~kept)
        np.testing.assert_array_equal(record.counts[:, y, x], np.where(kept, dn.shape[0], 0))
        z = (record.slope[kept, y, x] - truth[kept, y, x]) / np.sqrt(record.variance[kept, y, x])
        assert np.all(np.abs(z) < 5)
        assert np.all(np.isnan(record.slope[~kept, y, x]))


def test_jumps_are_masked(uncal, ramp):
    """A cosmic ray hitting read g drops difference g-1 of its integration: found by the
    clip in `_uncal` files (hits well above the noise), flagged JUMP_DET in `_ramp` files."""
    for (folder, campaign), clipped in ((uncal, True), (ramp, False)):
        _, arrays = load_truth(folder)
        masked = 0
        for name, r in _records(campaign).items():
            hits = arrays[f"cosmic_rays_{name}"]
            nints = r.nints
            per_slope = Counter((g - 1, y, x) for _, g, y, x, _ in hits.astype(int))
            for _, g, y, x, electrons in hits:
                k, y, x = int(g) - 1, int(y), int(x)
                if r.badpix[y, x] or r.slope_mask[k, y, x]:
                    continue
                sigma = np.sqrt(r.variance[k, y, x] * r.counts[k, y, x])  # one integration
                if clipped and electrons < 8 * sigma:
                    continue
                assert r.counts[k, y, x] <= nints - per_slope[(k, y, x)]
                masked += 1
        assert masked >= 3


def test_files_open_with_stdatamodels(uncal, ramp):
    uncal_file = sorted(uncal[0].glob("*_uncal.fits"))[0]  # the science exposure
    ramp_file = sorted(ramp[0].glob("*_ramp.fits"))[0]
    with Level1bModel(str(uncal_file)) as model:
        assert model.data.dtype == np.uint16 and model.data.ndim == 4
        assert (model.meta.exposure.type, model.meta.subarray.name) == ("NIS_AMI", "SUB64")
        assert model.meta.exposure.ngroups == model.data.shape[1]
    for path in (ramp_file, uncal_file):
        with RampModel(str(path)) as model:
            assert model.data.shape == (8, 6, 64, 64)
            assert model.groupdq.shape == model.data.shape and model.pixeldq.shape == (64, 64)
            assert model.meta.instrument.name == "NIRISS"
    with RampModel(str(ramp_file)) as model:
        flags = np.asarray(model.groupdq)
        assert ((flags & SATURATED) != 0).any() and ((flags & JUMP_DET) != 0).any()
        assert model.data.min() > -BIAS_DN / 2  # the bias is subtracted


def test_ramp_pixel_flags_mask_whole_pixels(ramp):
    folder, campaign = ramp
    _, arrays = load_truth(folder)
    for r in _records(campaign).values():
        assert r.badpix[arrays["bad_pixels"]].all() and r.badpix[:4].all()
        assert r.slope_mask[:, r.badpix].all()


def test_max_groups_keeps_the_start_of_each_ramp(uncal, tmp_path):
    folder, campaign = uncal
    files = sorted(folder.glob("*_uncal.fits"))
    store = tmp_path / "short.zarr"
    ingest(files, store, progress=False, ramps=RampOptions(max_groups=3))
    short = Campaign.open(store)
    full = _records(campaign)
    for name, r in _records(short).items():
        assert (r.ngroups, r.slope.shape, r.pair_counts.shape) == (3, (2, 64, 64), (1, 64, 64))
        same = ~r.slope_mask & ~full[name].slope_mask[:2] & (r.counts == full[name].counts[:2])
        assert same.mean() > 0.9
        np.testing.assert_allclose(r.slope[same], full[name].slope[:2][same], rtol=1e-12)


def test_saturation_can_mask_whole_pixels_or_truncate_every_ramp(uncal, tmp_path):
    """The two older ways, kept for comparison: a pixel saturated in any integration
    masked whole; every pixel's ramp cut before the exposure's first saturated group."""
    folder, campaign = uncal
    files = sorted(folder.glob("*_uncal.fits"))
    full = _records(campaign)
    science = next(e for e in campaign.exposures if e.role == "science")
    dn = fits.getdata(folder / science.source_file, "SCI").astype(float)
    first = _first_saturated(dn)  # (nints, ny, nx) first saturated group
    saturated = (first < dn.shape[1]).any(axis=0)
    for how in ("pixels", "truncate"):
        store = tmp_path / f"{how}.zarr"
        ingest(files, store, progress=False, ramps=RampOptions(saturated=how))
        record = _records(Campaign.open(store))[science.name]
        good = ~full[science.name].badpix
        if how == "pixels":
            np.testing.assert_array_equal(record.badpix, full[science.name].badpix | saturated)
        else:
            limit = int(first[:, good & saturated].min())
            assert record.ngroups == limit and record.slope.shape[0] == limit - 1
            assert not record.badpix[good & saturated].any()
            assert record.slope_mask[:, good].sum() < 0.01 * good.sum() * (limit - 1)


def test_version_two_stores_are_still_read(tmp_path):
    """A schema-2 store (no ramps) opens; an ingest of ramps into it writes schema 3."""
    store = tmp_path / "old.zarr"
    ingest(write_campaign(tmp_path / "fits", nepochs=1, ncal=0), store, progress=False)
    zarr.open_group(store, mode="r+", use_consolidated=True).attrs["schema_version"] = 2
    old = Campaign.open(store)
    assert all(r.slope_mask is None for r in old.read(old.names).values())
    ingest([_ramp_file(tmp_path / "ramps", 50)], store, progress=False)
    assert zarr.open_group(store, mode="r").attrs["schema_version"] == 3
    mixed = Campaign.open(store)
    masks = [r.slope_mask is not None for r in mixed.read(mixed.names).values()]
    assert sorted(masks) == [False, False, True]


# --- refusals -------------------------------------------------------------------------------

META = ExposureMeta(
    filter="F430M",
    pupil="NRM",
    target="IO",
    is_psf=False,
    expmid=60000.0,
    roll=10.0,
    nints=2,
    ngroups=3,
    group_time=0.07544,
    subarray="SUB64",
    program=1373,
    observation=1,
    visit=1,
    exposure=1,
    dither_x=0.0,
    dither_y=0.0,
)


def _ramp_file(folder: Path, observation: int, product: str = UNCAL, ngroups: int = 3, **kw):
    """A small SUB64 ramp product of 2 integrations of 100 e- per group."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = dataclasses.replace(META, observation=observation, ngroups=ngroups)
    rng = np.random.default_rng(observation)
    charge = np.cumsum(rng.poisson(100.0, (2, ngroups, 64, 64)), axis=1).astype(float)
    charge = kw.pop("charge", charge)
    path = folder / f"jw01373{observation:03d}001_01101_00001_nis_{product}.fits"
    write_ramp_product(path, meta, charge, 0.0656, product, DEFAULT_SATURATION_DN, **kw)
    return path


def _set_groupdq(path: Path) -> Path:
    with fits.open(path, mode="update") as hdul:
        hdul["GROUPDQ"].data = hdul["GROUPDQ"].data[:, :2].copy()
    return path


REFUSALS = {
    "one group": (
        lambda d: _ramp_file(d, 2, ngroups=1),
        {},
        "SCI",
        r"shape \(2, 1, 64, 64\) has 1 group",
    ),
    "groupdq shape": (
        lambda d: _set_groupdq(_ramp_file(d, 2, RAMP)),
        {},
        "GROUPDQ",
        r"shape \(2, 2, 64, 64\) differs from SCI's \(2, 3, 64, 64\)",
    ),
    "no gain": (lambda d: _ramp_file(d, 2), {"gain": None}, "SCI", r"uint16 counts in DN need"),
    "saturated": (
        lambda d: _ramp_file(d, 2, charge=np.full((2, 3, 64, 64), 1e5)),
        {},
        "SCI",
        r"every group is saturated on 3840 of 3840 good pixels \(more than half\)",
    ),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_bad_ramps_are_refused_with_the_store_untouched(case, tmp_path, capsys):
    make, kwargs, field, problem = REFUSALS[case]
    store = tmp_path / "c.zarr"
    ingest([_ramp_file(tmp_path / "ok", 1)], store, progress=False)
    before = tree_digest(store)
    bad = make(tmp_path / "bad")
    with pytest.raises(IngestError, match=rf"^{re.escape(str(bad))}: {field}: {problem}"):
        ingest([bad], store, progress=False, **kwargs)
    assert tree_digest(store) == before
    argv = ["ingest", str(bad), "--out", str(store), "--quiet"]
    argv += ["--gain", "none"] if kwargs.get("gain", NIRISS_GAIN) is None else []
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"scaling ingest: error: {bad}: {field}: ") and err.count("\n") == 1
    assert tree_digest(store) == before


# --- a fit of the ingested ramps ---------------------------------------------------------------


@pytest.mark.slow
def test_a_store_of_ingested_ramps_fits(uncal, tmp_path):
    """Two steps of the test fit on the `_uncal` store: its masked slopes (NaN where
    masked) give a finite, decreasing loss, and the χ² counts only kept slopes."""
    folder, campaign = uncal
    base = load_config(CONFIGS / "io_test_fit.toml")
    config = dataclasses.replace(
        base,
        campaign=campaign.where,
        results=str(tmp_path / "results.zarr"),
        truth=str(folder),
        steps=2,
        instrument=dataclasses.replace(base.instrument, npix=64),
        tracking=dataclasses.replace(base.tracking, uri=f"sqlite:///{tmp_path / 'mlflow.db'}"),
    )
    outcome = fit_campaign(config, progress=False)
    total = outcome.history["total"]
    assert np.all(np.isfinite(total)) and total[-1] < total[0]
    model = config.instrument.build(["F430M"])
    observations = load_observations(campaign, campaign.names)
    batches = make_batches(observations, list(campaign.names), list(campaign.epochs))
    _, count = chi_squared_sums(model, outcome.params, batches)
    kept = sum(int((~r.slope_mask).sum()) for r in _records(campaign).values())
    assert int(count) == kept
