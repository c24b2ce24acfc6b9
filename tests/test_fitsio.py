"""FITS exposures: round trip, determinism, atomic writes and clear errors on bad files."""

import dataclasses

import numpy as np
import pytest
from astropy.io import fits

from scaling.fitsio import ExposureRecord, read_exposure, write_exposure

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
        (lambda h: h.pop("VARIANCE"), ["missing extension VARIANCE"]),
        (lambda h: h[0].header.remove("NINTS"), ["missing header keyword NINTS"]),
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
