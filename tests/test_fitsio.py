"""FITS exposures: round trip, determinism, atomic writes, JWST names, clear errors."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from scaling.data.fitsio import (
    DO_NOT_USE,
    ExposureRecord,
    read_exposure,
    read_exposure_with_names,
    write_exposure,
)

SHAPE = (3, 6, 5)  # (ngroups-1, ny, nx)


def make_record(seed: int = 0, **changes) -> ExposureRecord:
    rng = np.random.default_rng(seed)
    record = ExposureRecord(
        filter="F430M",
        pupil="NRM",
        target="IO",
        is_psf=False,
        expmid=60000.123456789,
        roll=12.5,
        nints=20,
        ngroups=SHAPE[0] + 1,
        group_time=0.07544,
        subarray="SUB80",
        program=1373,
        observation=2,
        visit=1,
        exposure=3,
        dither_x=0.25,
        dither_y=-0.5,
        slope=rng.normal(100.0, 10.0, SHAPE),
        variance=rng.uniform(1.0, 2.0, SHAPE),
        badpix=rng.random(SHAPE[1:]) < 0.2,
    )
    return dataclasses.replace(record, **changes)


def assert_same(a: ExposureRecord, b: ExposureRecord) -> None:
    for f in dataclasses.fields(ExposureRecord):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y, err_msg=f.name)
        else:
            assert x == y, f.name


def test_round_trip(tmp_path):
    record = make_record()
    write_exposure(tmp_path / "a.fits", record)
    back = read_exposure(tmp_path / "a.fits")
    assert_same(back, record)
    assert back.slope.dtype == np.float64 and back.slope.dtype.isnative
    assert back.variance.dtype == np.float64 and back.variance.dtype.isnative
    assert back.badpix.dtype == np.bool_
    assert isinstance(back.is_psf, bool) and isinstance(back.nints, int)


def test_calibrator_flag_round_trips(tmp_path):
    write_exposure(tmp_path / "cal.fits", make_record(is_psf=True, target="CAL1"))
    back = read_exposure(tmp_path / "cal.fits")
    assert back.is_psf is True and back.target == "CAL1"


def test_jwst_like_layout(tmp_path):
    write_exposure(tmp_path / "a.fits", make_record())
    with fits.open(tmp_path / "a.fits") as hdul:
        header = hdul[0].header
        assert [h.name for h in hdul] == ["PRIMARY", "SLOPE", "VARIANCE", "BADPIX"]
        assert (header["TELESCOP"], header["INSTRUME"], header["PUPIL"]) == (
            "JWST",
            "NIRISS",
            "NRM",
        )
        assert (header["PROGRAM"], header["OBSERVTN"], header["VISIT"]) == ("01373", "002", "001")
        assert header["EXPOSURE"] == "00003"
        assert hdul["SLOPE"].data.dtype.kind == "f" and hdul["SLOPE"].data.dtype.itemsize == 8
        assert hdul["BADPIX"].data.dtype == np.uint8
        assert "DATE" not in header and "CHECKSUM" not in header


def test_same_record_gives_same_bytes(tmp_path):
    write_exposure(tmp_path / "a.fits", make_record())
    write_exposure(tmp_path / "b.fits", make_record())
    assert (tmp_path / "a.fits").read_bytes() == (tmp_path / "b.fits").read_bytes()


def test_write_replaces_atomically_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "a.fits"
    write_exposure(path, make_record(seed=1))
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(fits.HDUList, "writeto", fail)
    with pytest.raises(RuntimeError):
        write_exposure(path, make_record(seed=2))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.fits"]


def edit(tmp_path, edit_hdul) -> str:
    """Write a good file, change it with `edit_hdul(hdul)`, return its path."""
    path = tmp_path / "bad.fits"
    write_exposure(path, make_record())
    with fits.open(path) as hdul:
        hdus = fits.HDUList([h.copy() for h in hdul])
    edit_hdul(hdus)
    hdus.writeto(path, overwrite=True)
    return str(path)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda h: h.pop("VARIANCE"), ["missing extension VARIANCE (or ERR)"]),
        (lambda h: h.pop("SLOPE"), ["missing extension SLOPE (or SCI)"]),
        (lambda h: h[0].header.remove("NINTS"), ["missing header keyword NINTS"]),
        (lambda h: h[0].header.remove("TARGPROP"), ["keyword TARGPROP (or TARGNAME)"]),
        (lambda h: h[0].header.remove("ROLL_REF"), ["keyword ROLL_REF (or PA_V3)"]),
        (
            lambda h: [h[0].header.remove("EXPMID"), h[0].header.set("EXPSTART", 60000.0)],
            ["missing header keyword EXPMID (or MJD-AVG, or EXPSTART and EXPEND)"],
        ),
        (
            lambda h: [h[0].header.remove("TARGPROP"), h[1].header.set("TARGNAME", 7)],
            ["keyword TARGNAME: expected str, got 7"],
        ),
        (lambda h: h[0].header.set("NINTS", "many"), ["NINTS", "expected int"]),
        (lambda h: h[0].header.set("IS_PSF", 1), ["IS_PSF", "boolean"]),
        (lambda h: h[0].header.set("NGROUPS", 7), ["SLOPE", "NGROUPS-1 = 6"]),
        (lambda h: h["BADPIX"].__setattr__("data", np.zeros((2, 2), np.uint8)), ["BADPIX"]),
        (lambda h: h["SLOPE"].__setattr__("data", np.zeros((6, 5))), ["SLOPE", "3 dimensions"]),
    ],
)
def test_bad_files_are_named_with_the_problem(tmp_path, change, words):
    path = edit(tmp_path, change)
    with pytest.raises(ValueError) as info:
        read_exposure(path)
    message = str(info.value)
    assert path in message
    for word in words:
        assert word in message


def test_dither_keywords_are_optional(tmp_path):
    path = edit(tmp_path, lambda h: [h[0].header.remove(k) for k in ("DITHX", "DITHY")])
    record = read_exposure(path)
    assert (record.dither_x, record.dither_y) == (0.0, 0.0)


def test_not_a_fits_file(tmp_path):
    path = tmp_path / "junk.fits"
    path.write_text("not a FITS file at all")
    with pytest.raises(ValueError, match=r"junk\.fits"):
        read_exposure(path)


def test_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_exposure(tmp_path / "absent.fits")


def to_jwst(path: Path) -> Path:
    """Rewrite our file at `path` with JWST names: SCI, ERR (√|variance| with the variance's
    sign), DQ (DO_NOT_USE on bad pixels, the unrelated JUMP_DET bit 4 on all), TARGNAME,
    EXPSTART/EXPEND, and PA_V3, NGROUPS, TGROUP in the SCI header only."""
    with fits.open(path) as hdul:
        primary = hdul[0].header.copy()
        slope, variance, badpix = (hdul[n].data.copy() for n in ("SLOPE", "VARIANCE", "BADPIX"))
    science = fits.Header()
    for old, new in (("ROLL_REF", "PA_V3"), ("NGROUPS", "NGROUPS"), ("TGROUP", "TGROUP")):
        science[new] = primary.pop(old)
    primary["TARGNAME"] = primary.pop("TARGPROP")
    expmid = primary.pop("EXPMID")
    primary["EXPSTART"], primary["EXPEND"] = expmid - 0.01, expmid + 0.01
    dq = np.where(badpix != 0, DO_NOT_USE | 4, 4).astype(np.uint32)
    fits.HDUList(
        [
            fits.PrimaryHDU(header=primary),
            fits.ImageHDU(slope, header=science, name="SCI"),
            fits.ImageHDU(np.copysign(np.sqrt(np.abs(variance)), variance), name="ERR"),
            fits.ImageHDU(dq, name="DQ"),
        ]
    ).writeto(path, overwrite=True)
    return path


def test_jwst_names_are_read(tmp_path):
    record = make_record()
    write_exposure(tmp_path / "jw.fits", record)
    back, names = read_exposure_with_names(to_jwst(tmp_path / "jw.fits"))
    assert {k: names[k] for k in ("slope", "variance", "badpix", "target", "roll", "expmid")} == {
        "slope": "SCI",
        "variance": "ERR",
        "badpix": "DQ",
        "target": "TARGNAME",
        "roll": "PA_V3",
        "expmid": "EXPSTART/EXPEND",
    }
    assert (names["ngroups"], names["filter"]) == ("NGROUPS", "FILTER")
    expmid = ((record.expmid - 0.01) + (record.expmid + 0.01)) / 2
    assert_same(back, dataclasses.replace(record, expmid=expmid, variance=back.variance))
    np.testing.assert_array_equal(back.variance, np.sqrt(record.variance) ** 2)
    assert back.variance.dtype == np.float64 and back.badpix.dtype == np.bool_


def test_our_names_come_first_and_the_primary_header_before_the_science_one(tmp_path):
    def add_jwst_names(h):
        h.append(fits.ImageHDU(np.zeros(SHAPE), name="SCI"))
        h[0].header["TARGNAME"] = "OTHER"
        h["SLOPE"].header["ROLL_REF"] = 99.0

    back = read_exposure(edit(tmp_path, add_jwst_names))
    assert_same(back, make_record())


def test_mjd_avg_stands_for_expmid(tmp_path):
    def use_mjd_avg(h):
        h[0].header.remove("EXPMID")
        h["SLOPE"].header["MJD-AVG"] = 60001.5

    assert read_exposure(edit(tmp_path, use_mjd_avg)).expmid == 60001.5


def _dq(data: np.ndarray):
    def change(h):
        h[3] = fits.ImageHDU(data, name="DQ")

    return change


def test_dq_per_plane_marks_a_pixel_bad_in_any_plane(tmp_path):
    dq = np.full(SHAPE, 2, np.uint32)  # SATURATED alone does not mask
    dq[2, 1, 4] |= DO_NOT_USE
    back = read_exposure(edit(tmp_path, _dq(dq)))
    assert back.badpix.sum() == 1 and back.badpix[1, 4]


@pytest.mark.parametrize(
    ("dq", "words"),
    [
        (np.zeros(SHAPE[1:]), ["extension DQ", "integer bit mask", "float64"]),
        (np.zeros((2, *SHAPE[1:]), np.uint32), ["extension DQ", "expected 3 planes"]),
        (np.zeros(SHAPE[2:], np.uint32), ["extension DQ", "2 or 3 dimensions"]),
    ],
)
def test_bad_dq_is_named(tmp_path, dq, words):
    path = edit(tmp_path, _dq(dq))
    with pytest.raises(ValueError) as info:
        read_exposure(path)
    for word in [path, *words]:
        assert word in str(info.value)
