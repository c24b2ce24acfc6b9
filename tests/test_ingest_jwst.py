"""JWST rate products → campaign store: the real program-1093 files, JWST-like products
written by `write_rate_product`, their refusals, their orientation, and the fit's view."""

import math
import re
from pathlib import Path

import numpy as np
import pytest
import zarr
from astropy.io import fits

from model.source import rotate_image
from scaling.cli import main
from scaling.config import load_config
from scaling.data._zarr import StoreError
from scaling.data.export import celestial_wcs, image_hdu
from scaling.data.ingest import ingest
from scaling.data.jwst import (
    NIRISS_GAIN,
    UNUSABLE_DQ_FLAGS,
    detector_position_angle,
    read_rate_product,
    wcs_position_angle,
)
from scaling.data.products import RATE, SLOPES, jwst_exposure_id, product_kind, read_product
from scaling.data.results import EpochImage
from scaling.data.store import SCHEMA_VERSION, Campaign
from scaling.data.validate import IngestError
from scaling.fitting.start import initial_local, load_observations
from tests.campaigns import (
    RATE_NPIX,
    T0,
    make_record,
    tree_digest,
    write,
    write_campaign,
    write_rate_file,
)
from tests.test_fitsio import to_jwst
from tests.test_jwst import angle_difference

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ORIENTATION_TOLERANCE = 0.05
"""Degrees: the largest difference allowed between angles from keywords and from the WCS."""


@pytest.fixture(scope="module")
def real_store(real_files, tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("real") / "c.zarr"
    ingest(real_files, store, progress=False)
    return store


def sci_header(path: Path) -> fits.Header:
    return fits.getheader(path, "SCI")


def edit(path: Path, extension: str, **cards) -> Path:
    """Set header `cards` of `extension` of the file at `path` in place."""
    with fits.open(path, mode="update") as hdul:
        hdul[extension].header.update(cards)
    return path


# --- the real files ---------------------------------------------------------------------


def test_all_real_files_ingest_masked_as_jwst_flags_them(real_files, real_store):
    campaign = Campaign.open(real_store)
    assert len(campaign.exposures) == 20
    by_file = {e.source_file: e for e in campaign.exposures}
    records = campaign.read(campaign.names)
    for path in real_files:
        info = by_file[path.name]
        assert info.name == path.name.removesuffix("_cal.fits")
        assert (info.kind, info.gain, info.shape) == (RATE, NIRISS_GAIN, (1, 80, 80))
        product = read_rate_product(path)
        record = records[info.name]
        np.testing.assert_array_equal(record.slope, product.rate[None])
        np.testing.assert_array_equal(record.variance, product.variance[None])
        np.testing.assert_array_equal(record.badpix, product.bad)
        assert record.badpix[:4].all() and not record.badpix[4:].all()
        dq = fits.getdata(path, "DQ").astype(np.int64)
        assert record.badpix[(dq & UNUSABLE_DQ_FLAGS["DO_NOT_USE"]) != 0].all()
        h = product.header
        assert (info.nints, info.ngroups, info.group_time) == (
            h["NINTS"],
            h["NGROUPS"],
            h["TGROUP"],
        )
        assert (info.target, info.filter, info.expmid) == (h["TARGPROP"], h["FILTER"], h["EXPMID"])
        assert info.role == ("calibrator" if h["IS_PSF"] else "science")
        assert (info.target_ra, info.target_dec) == (h["TARG_RA"], h["TARG_DEC"])
    assert campaign.epochs == {
        "AB-DOR_001": tuple(e.name for e in campaign.exposures if e.target == "AB-DOR")
    }
    again = ingest(real_files, real_store, progress=False)
    assert again.added == () and len(again.skipped) == 20


def test_real_names_need_the_visit_group_and_activity(real_files):
    """EXPOSURE is 1 in every real file: the activity (ACT_ID) tells them apart."""
    primary = fits.getheader(real_files[0], 0)
    name, ids = jwst_exposure_id(primary, Path("renamed.fits"))
    assert name == "jw01093012001_03102_00001_nis"
    assert ids == {"program": 1093, "observation": 12, "visit": 1, "exposure": 1}


def test_real_roll_is_minus_the_wcs_position_angle(real_files, real_store):
    campaign = Campaign.open(real_store)
    by_file = {e.source_file: e for e in campaign.exposures}
    for path in real_files:
        header = sci_header(path)
        wcs_angle, east_left = wcs_position_angle(header)
        roll = by_file[path.name].roll
        assert -180.0 <= roll < 180.0 and east_left
        assert angle_difference(-roll, wcs_angle) <= ORIENTATION_TOLERANCE
        assert angle_difference(-roll, header["PA_APER"]) < 1e-9


def test_export_puts_north_where_the_real_wcs_says(real_files, real_store):
    """An image in the detector axes of a real exposure (orientation = its roll) is
    exported with the file's own sky orientation; and an epoch image (north up, orientation
    0) turned into those axes by the model's `rotate_image` puts a north offset where the
    file's WCS says north lies. (North, along the detector's ±y: the real CD matrix is not
    quite a rotation, its x axis lies 0.26° off perpendicular to y on the sky.)"""
    path = real_files[0]
    roll = next(e.roll for e in Campaign.open(real_store).exposures if e.source_file == path.name)
    file_cd = np.array([[sci_header(path)[f"CD{i}_{j}"] for j in (1, 2)] for i in (1, 2)])
    n, offset = 41, 10.0
    detector_image = EpochImage("e", np.zeros((n, n)), 0.0656, orientation=roll)
    exported_angle, east_left = wcs_position_angle(image_hdu(detector_image).header)
    file_angle = wcs_position_angle(sci_header(path))[0]
    assert east_left and angle_difference(exported_angle, file_angle) <= ORIENTATION_TOLERANCE

    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    blob = np.exp(-(xx**2 + (yy - offset) ** 2) / (2 * 2.0**2))  # +y: north
    sky = celestial_wcs(EpochImage("e", blob, 0.0656)).wcs.cd @ [0.0, offset]
    turned = np.asarray(rotate_image(blob, roll))
    centroid = np.array([np.sum(turned * xx), np.sum(turned * yy)]) / turned.sum()
    seen = file_cd @ centroid
    angle = math.degrees(math.atan2(*seen[::-1]) - math.atan2(*sky[::-1]))
    assert sky[1] > 0 and angle_difference(angle, 0.0) <= ORIENTATION_TOLERANCE


def test_real_rate_observations_for_the_fit(real_store):
    campaign = Campaign.open(real_store)
    name = campaign.names[0]
    info = campaign.info(name)
    (obs,) = load_observations(campaign, [name])
    assert obs.kind == RATE and obs.slopes.shape == obs.variance.shape == (1, 80, 80)
    assert (obs.spec.ngroups, float(obs.spec.roll)) == (info.ngroups, info.roll)
    record = campaign.read([name])[name]
    np.testing.assert_array_equal(obs.variance, record.variance)
    flux = np.sum(np.where(record.badpix, 0.0, record.slope[0]))
    local = initial_local(load_config(CONFIGS / "io_test_fit.toml"), [obs], 1)
    assert float(local["exposure"]["log_flux"][0]) == pytest.approx(math.log10(flux))


# --- generated products: recognised by content, stored with their kind -------------------


def test_rate_products_recognised_by_content_not_name(tmp_path):
    product = write_rate_file(tmp_path, 1, 1, T0)
    plain = product.rename(tmp_path / "exposure.fits")
    slopes = to_jwst(write(tmp_path, make_record(2, 1, T0)))
    assert product_kind(plain) == RATE and product_kind(slopes) == SLOPES
    assert read_product(plain).name == "jw01373001001_01101_00001_nis"
    edit(slopes, "SCI", BUNIT="electrons/group")
    assert product_kind(slopes) == SLOPES


def test_rateints_product_is_a_rate(tmp_path):
    path = write_rate_file(tmp_path, 1, 1, T0)
    with fits.open(path) as hdul:
        for name in ("SCI", "DQ", "VAR_POISSON", "VAR_RNOISE", "VAR_FLAT"):
            hdul[name].data = np.stack([hdul[name].data] * 3)
        hdul.writeto(tmp_path / "x_calints.fits")
    product = read_product(tmp_path / "x_calints.fits")
    assert product.kind == RATE and product.record.slope.shape == (1, RATE_NPIX, RATE_NPIX)
    np.testing.assert_allclose(product.record.slope, read_product(path).record.slope, rtol=1e-6)


def test_name_from_the_file_name_without_id_keywords(tmp_path):
    path = write_rate_file(tmp_path, 3, 2, T0)
    with fits.open(path, mode="update") as hdul:
        for key in ("VISITGRP", "ACT_ID"):
            del hdul[0].header[key]
    product = read_product(path)
    assert (
        product.name == "jw01373003001_01101_00002_nis" and product.names["program"] == "file name"
    )
    odd = path.rename(tmp_path / "exposure.fits")
    with pytest.raises(ValueError, match=r"exposure\.fits: VISITGRP: missing, and the file name"):
        read_product(odd)


def test_slope_and_rate_exposures_share_a_store(tmp_path):
    slopes = write_campaign(tmp_path / "slopes", nepochs=1, per_epoch=2, ncal=0)
    rates = [write_rate_file(tmp_path / "rates", 5, k, T0 + 0.01 * k) for k in (1, 2)]
    store = tmp_path / "c.zarr"
    ingest([*slopes, *rates], store, progress=False, gain=2.0)
    campaign = Campaign.open(store)
    kinds = {e.source_file: (e.kind, e.gain) for e in campaign.exposures}
    assert kinds == {
        **{p.name: (SLOPES, None) for p in slopes},
        **{p.name: (RATE, 2.0) for p in rates},
    }
    rate = campaign.info("jw01373005001_01101_00002_nis")
    assert rate.roll == pytest.approx(30.0, abs=1e-9)
    assert (rate.target_ra, rate.target_dec) == (None, None)  # RADECSRC = 'PLACEHOLDER'
    record = campaign.read([rate.name])[rate.name]
    product = read_rate_product(rates[1], gain=2.0)
    np.testing.assert_array_equal(record.slope[0], product.rate)
    attributes = zarr.open_group(store, mode="r").attrs
    assert attributes["schema_version"] == SCHEMA_VERSION == 3


def test_store_of_the_previous_schema_is_refused(tmp_path):
    store = tmp_path / "c.zarr"
    ingest(write_campaign(tmp_path / "fits", nepochs=1, ncal=0), store, progress=False)
    zarr.open_group(store, mode="r+", use_consolidated=True).attrs["schema_version"] = 1
    message = "this code reads version 3, and older version 2; the store was written with 1"
    with pytest.raises(StoreError, match=message):
        Campaign.open(store)


REFUSALS = {
    "BUNIT": ("SCI", {"BUNIT": "MJy/sr"}, r"is 'MJy/sr', .*AMI products stay in DN/s"),
    "EXP_TYPE": (0, {"EXP_TYPE": "NIS_SOSS"}, "'NIS_SOSS' is not one of NIS_AMI"),
    "NFRAMES": (0, {"NFRAMES": 4}, "is 4, the detector model needs 1 frame per group"),
    "SUBARRAY": (0, {"SUBARRAY": "SUB64"}, r"SUB64 is \(64, 64\) pixels but SCI is \(80, 80\)"),
    "VPARITY": ("SCI", {"VPARITY": 1}, "is 1, the model needs -1"),
}


@pytest.mark.parametrize("keyword", REFUSALS)
def test_refused_products_leave_the_store_untouched(keyword, tmp_path, capsys):
    store = tmp_path / "c.zarr"
    ingest([write_rate_file(tmp_path / "ok", 1, 1, T0)], store, progress=False)
    before = tree_digest(store)
    extension, cards, problem = REFUSALS[keyword]
    bad = edit(write_rate_file(tmp_path / "bad", 2, 1, T0 + 1), extension, **cards)
    fresh = write_rate_file(tmp_path / "new", 3, 1, T0 + 2)
    with pytest.raises(IngestError, match=rf"^{re.escape(str(bad))}: {keyword}: {problem}"):
        ingest([fresh, bad], store, progress=False)
    assert tree_digest(store) == before
    assert main(["ingest", str(fresh), str(bad), "--out", str(store), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"scaling ingest: error: {bad}: {keyword}: ") and err.count("\n") == 1
    assert tree_digest(store) == before


def test_bad_gain_is_refused(tmp_path, capsys):
    path = write_rate_file(tmp_path, 1, 1, T0)
    with pytest.raises(IngestError, match=r"gain: expected e-/DN > 0, got 0\.0"):
        ingest([path], tmp_path / "c.zarr", progress=False, gain=0.0)
    assert main(["ingest", str(path), "--out", str(tmp_path / "c.zarr"), "--gain", "-1"]) == 2
    assert not (tmp_path / "c.zarr").exists()


# --- orientation: a written product follows the real files' conventions --------------------


@pytest.mark.parametrize("roll", [0.0, 15.0, -172.3262577770351, 100.0, 179.9])
def test_written_orientation_agrees_with_its_wcs(roll, tmp_path):
    path = write_rate_file(tmp_path, 1, 1, T0, roll=roll)
    header = sci_header(path)
    derived = detector_position_angle(header["ROLL_REF"], header["V3I_YANG"], header["VPARITY"])
    wcs_angle, east_left = wcs_position_angle(header)
    assert east_left and header["VPARITY"] == -1
    assert angle_difference(derived, wcs_angle) <= ORIENTATION_TOLERANCE
    assert angle_difference(derived, header["PA_APER"]) < 1e-9
    assert angle_difference(read_product(path).record.roll, roll) < 1e-9
