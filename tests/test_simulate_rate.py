"""`scaling simulate --products rate`: JWST-like `_cal` products that pass the same reader and
checks as the real files, carry the truth's orientation, and ingest as rate exposures."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

import scaling.simulate as sim
from scaling.cli import main
from scaling.config import load_config
from scaling.data.ingest import ingest
from scaling.data.jwst import (
    HEADER_KEYWORDS,
    NIRISS_GAIN,
    UNUSABLE_DQ_FLAGS,
    detector_position_angle,
    read_rate_product,
    wcs_position_angle,
)
from scaling.data.store import Campaign
from scaling.data.truthfiles import load_truth
from tests.test_jwst import angle_difference

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DO_NOT_USE, REFERENCE_PIXEL = UNUSABLE_DQ_FLAGS["DO_NOT_USE"], UNUSABLE_DQ_FLAGS["REFERENCE_PIXEL"]


@pytest.fixture(scope="module")
def config():
    """io_test.toml on SUB64, the smallest NIRISS subarray."""
    base = load_config(CONFIGS / "io_test.toml")
    return dataclasses.replace(base, instrument=dataclasses.replace(base.instrument, npix=64))


@pytest.fixture(scope="module")
def products(config, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rate") / "campaign"
    sim.simulate(config, out, progress=False, products="rate")
    return out


def headers(path: Path) -> dict:
    return {**fits.getheader(path, 0), **fits.getheader(path, "SCI")}


def test_products_pass_the_reader_and_the_header_checks(products):
    truth, arrays = load_truth(products)
    files = sorted(products.glob("*_cal.fits"))
    assert [f.name for f in files] == sorted(e["file"] for e in truth["exposures"].values())
    for path in files:
        product = read_rate_product(path)
        h = headers(path)
        assert (h["EXP_TYPE"], h["PUPIL"], h["BUNIT"]) == ("NIS_AMI", "NRM", "DN/s")
        assert (h["NFRAMES"], h["SUBARRAY"], h["READPATT"]) == (1, "SUB64", "NISRAPID")
        assert h["EFFINTTM"] == pytest.approx(h["NGROUPS"] * h["TGROUP"])
        dq = fits.getdata(path, "DQ")
        assert (dq[:4] == DO_NOT_USE | REFERENCE_PIXEL).all()
        assert (dq[4:] & REFERENCE_PIXEL == 0).all()
        assert ((dq & DO_NOT_USE) != 0)[arrays["bad_pixels"]].all()
        np.testing.assert_array_equal(product.bad, arrays["bad_pixels"] | (dq != 0))
        with fits.open(path) as hdul:
            parts = [hdul[k].data.astype(float) for k in ("VAR_POISSON", "VAR_RNOISE", "VAR_FLAT")]
            err = hdul["ERR"].data.astype(float)
        np.testing.assert_allclose(err**2, sum(parts), rtol=1e-6)
        assert (parts[2] == 0).all() and (parts[1] > 0).all()


def test_headers_look_like_the_real_files(products, real_files):
    ours, theirs = headers(next(products.glob("*_cal.fits"))), headers(real_files[0])
    for key in (*HEADER_KEYWORDS, "PROGRAM", "OBSERVTN", "VISIT", "VISITGRP", "SEQ_ID", "ACT_ID"):
        assert type(ours[key]) is type(theirs[key]), key
    for key in ("EXP_TYPE", "BUNIT", "NFRAMES", "READPATT", "SUBSTRT1", "SUBSTRT2", "V3I_YANG"):
        assert ours[key] == theirs[key], key


def test_orientation_keywords_and_wcs_agree_with_the_truth(products):
    truth, _ = load_truth(products)
    for row in truth["exposures"].values():
        h = fits.getheader(products / row["file"], "SCI")
        angle = detector_position_angle(h["ROLL_REF"], h["V3I_YANG"], h["VPARITY"])
        wcs_angle, east_left = wcs_position_angle(h)
        assert east_left and angle_difference(angle, wcs_angle) <= 0.05
        assert angle_difference(angle, -row["roll"]) < 1e-9


def test_products_ingest_as_rate_exposures_with_the_true_roll(products, tmp_path):
    truth, _ = load_truth(products)
    store = tmp_path / "c.zarr"
    ingest([str(products / "*_cal.fits")], store, progress=False)
    campaign = Campaign.open(store)
    assert sorted(campaign.names) == sorted(truth["exposures"])
    for e in campaign.exposures:
        row = truth["exposures"][e.name]
        assert (e.kind, e.gain, e.shape) == ("rate", NIRISS_GAIN, (1, 64, 64))
        assert e.roll == pytest.approx(row["roll"], abs=1e-9)
        assert (e.ngroups, e.nints, e.expmid) == (row["ngroups"], row["nints"], row["expmid"])
        assert (e.target_ra, e.target_dec) == (None, None)
    assert {e.epoch for e in campaign.exposures} == {"IO_001", "IO_002", None}


def test_same_seed_gives_byte_identical_products(config, products, tmp_path):
    again = tmp_path / "again"
    sim.simulate(config, again, progress=False, products="rate")
    for path in sorted(products.iterdir()):
        assert (again / path.name).read_bytes() == path.read_bytes(), path.name
    truth = json.loads((again / "truth.json").read_text())
    assert all(row["file"].endswith("_cal.fits") for row in truth["exposures"].values())


def test_noisy_rate_has_the_first_to_last_read_variance():
    rng = np.random.default_rng(0)
    mean = np.full(200_000, 5000.0)  # e-/s
    span, nints, read_noise = 3 * 0.07544, 4, 12.0
    rate, poisson, read = sim.noisy_rate(rng, mean, read_noise, nints, span)
    expected = (5000.0 / span + 2 * read_noise**2 / span**2) / nints
    assert rate.mean() == pytest.approx(5000.0, abs=5 * np.sqrt(expected / rate.size))
    assert rate.var() == pytest.approx(expected, rel=0.02)
    np.testing.assert_allclose(poisson, rate / (nints * span))
    np.testing.assert_allclose(read, 2 * read_noise**2 / (nints * span**2))


def test_rate_products_need_a_subarray_size(tmp_path, capsys):
    config = load_config(CONFIGS / "io_test.toml")  # 24 pixels
    with pytest.raises(ValueError, match=r"instrument\.npix: rate products need a NIRISS subarray"):
        sim.simulate(config, tmp_path / "out", progress=False, products="rate")
    argv = ["simulate", str(CONFIGS / "io_test.toml"), "--out", str(tmp_path / "out")]
    assert main([*argv, "--products", "rate", "--quiet"]) == 2
    assert "got 24" in capsys.readouterr().err and not (tmp_path / "out").exists()
