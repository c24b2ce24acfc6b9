"""JWST NIRISS product reader: real program-1093 `_cal` files and small generated products."""

import pickle
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from scaling.data.jwst import (
    NIRISS_GAIN,
    UNUSABLE_DQ_FLAGS,
    ProductError,
    detector_position_angle,
    read_rate_product,
    reference_pixel_mask,
    sky_to_detector_matrix,
    sky_to_detector_rotation,
    wcs_position_angle,
)

DO_NOT_USE = UNUSABLE_DQ_FLAGS["DO_NOT_USE"]
REFERENCE_PIXEL = UNUSABLE_DQ_FLAGS["REFERENCE_PIXEL"]
JUMP_DET = 4


def angle_difference(a: float, b: float) -> float:
    """|a − b| wrapped to [0, 180] degrees."""
    return abs((a - b + 180.0) % 360.0 - 180.0)


@pytest.fixture(scope="module")
def real(real_files):
    """(product, raw HDU arrays and SCI header) for each real file."""
    out = []
    for path in real_files:
        with fits.open(path) as hdul:
            raw = {hdu.name: np.array(hdu.data) for hdu in hdul[1:7]}
            raw["header"] = hdul["SCI"].header.copy()
        out.append((read_rate_product(path), raw))
    return out


def test_all_real_files_read(real):
    assert len(real) == 20
    for product, _ in real:
        assert product.rate.shape == product.variance.shape == product.bad.shape == (80, 80)
        assert product.rate.dtype == np.float64 and product.bad.dtype == bool
        assert product.n_integrations is None
        assert product.header["EXP_TYPE"] == "NIS_AMI" and product.header["SUBARRAY"] == "SUB80"
        assert product.header["NFRAMES"] == 1 and product.header["PUPIL"] == "NRM"
        assert np.isfinite(product.rate).all() and (product.variance[~product.bad] > 0).all()
        assert not product.rate.flags.writeable


def test_reference_rows_and_dq_flags_masked(real):
    for product, raw in real:
        dq = raw["DQ"].astype(np.int64)
        assert product.bad[:4].all() and not product.bad[4:].all()
        reference = reference_pixel_mask(
            product.header["SUBSTRT1"], product.header["SUBSTRT2"], (80, 80)
        )
        np.testing.assert_array_equal(reference, (dq & REFERENCE_PIXEL) != 0)
        assert product.bad[(dq & DO_NOT_USE) != 0].all()
        # JUMP_DET alone is usable: the ramp fit already split the ramp at the jump.
        assert not product.bad[dq == JUMP_DET].any()
        assert (product.rate[product.bad] == 0).all()


def test_rate_is_dn_per_second_times_gain(real_files, real):
    product, raw = real[0]
    y, x = np.unravel_index(np.argmax(np.where(product.bad, -np.inf, product.rate)), (80, 80))
    assert product.rate[y, x] == pytest.approx(float(raw["SCI"][y, x]) * NIRISS_GAIN, rel=1e-12)
    doubled = read_rate_product(real_files[0], gain=2 * NIRISS_GAIN)
    np.testing.assert_allclose(doubled.rate, 2 * product.rate, rtol=1e-12)
    np.testing.assert_allclose(doubled.variance, 4 * product.variance, rtol=1e-12)


def test_variance_formula(real):
    for product, raw in real:
        good = ~product.bad
        variance = raw["VAR_POISSON"] + raw["VAR_RNOISE"].astype(float) + raw["VAR_FLAT"]
        np.testing.assert_allclose(product.variance[good], variance[good] * NIRISS_GAIN**2)
        np.testing.assert_allclose(
            product.read_noise_variance[good], raw["VAR_RNOISE"][good] * NIRISS_GAIN**2
        )
        # The pipeline's ERR is the square root of the same sum.
        np.testing.assert_allclose(
            product.variance[good], raw["ERR"][good].astype(float) ** 2 * NIRISS_GAIN**2, rtol=1e-5
        )


def test_keyword_orientation_matches_wcs(real):
    differences = []
    for product, raw in real:
        h = product.header
        angle = detector_position_angle(h["ROLL_REF"], h["V3I_YANG"], h["VPARITY"])
        assert angle == pytest.approx(h["PA_APER"] % 360, abs=1e-9)
        wcs_angle, east_left = wcs_position_angle(raw["header"])
        differences.append(angle_difference(angle, wcs_angle))
        assert east_left == (h["VPARITY"] == -1)
        # The matrix maps the detector axes, seen on the sky, back onto (x, y).
        rotation, parity = sky_to_detector_rotation(h["ROLL_REF"], h["V3I_YANG"], h["VPARITY"])
        cd = np.array([[raw["header"][f"CD{i}_{j}"] for j in (1, 2)] for i in (1, 2)])
        axes_on_sky = np.diag([-1.0, 1.0]) @ cd / np.sqrt(abs(np.linalg.det(cd)))
        mapped = sky_to_detector_matrix(rotation, parity) @ axes_on_sky
        np.testing.assert_allclose(mapped, np.eye(2), atol=5e-3)
    assert max(differences) <= 0.05


def test_orientation_conventions():
    assert detector_position_angle(350.0, 20.0, -1) == pytest.approx(10.0)
    # PA 90: detector +y points east; a north-up east-left image turns 90° clockwise.
    rotation, parity = sky_to_detector_rotation(80.0, 10.0, -1)
    assert (rotation, parity) == (pytest.approx(-90.0), 1)
    east = np.array([-1.0, 0.0])  # east is left in a north-up east-left image
    np.testing.assert_allclose(sky_to_detector_matrix(rotation, parity) @ east, [0, 1], atol=1e-12)
    with pytest.raises(ValueError, match="parity"):
        detector_position_angle(0.0, 0.0, 0)


def test_wcs_position_angle_mirrored_pc_cdelt():
    """East-right detector whose +y is at PA 30°, written as PC × CDELT."""
    pa = np.deg2rad(30.0)
    header = fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN"})
    # Columns (east, north) per pixel: +y towards PA 30°, +x 90° east of it (mirrored sky).
    pc = np.array([[np.cos(pa), np.sin(pa)], [-np.sin(pa), np.cos(pa)]])
    for i in (1, 2):
        header[f"CDELT{i}"] = 2e-5
        for j in (1, 2):
            header[f"PC{i}_{j}"] = pc[i - 1, j - 1]
    angle, east_left = wcs_position_angle(header)
    assert angle == pytest.approx(30.0) and not east_left
    rotation, parity = sky_to_detector_rotation(30.0, 0.0, 1)
    axes_on_sky = np.diag([-1.0, 1.0]) @ pc
    mapped = sky_to_detector_matrix(rotation, parity) @ axes_on_sky
    np.testing.assert_allclose(mapped, np.eye(2), atol=1e-12)
    with pytest.raises(ProductError, match="CD1_1"):
        wcs_position_angle(fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN"}))


# --- generated products -------------------------------------------------------------------

PRIMARY = {
    "EXP_TYPE": "NIS_AMI",
    "PUPIL": "NRM",
    "FILTER": "F430M",
    "SUBARRAY": "SUB80",
    "SUBSTRT1": 1045,
    "SUBSTRT2": 1,
    "READPATT": "NISRAPID",
    "NFRAMES": 1,
    "NINTS": 20,
    "NGROUPS": 5,
    "TGROUP": 0.07544,
    "EFFINTTM": 0.3772,
    "EXPSTART": 59735.57,
    "EXPMID": 59735.5703,
    "EXPEND": 59735.5706,
    "TARGPROP": "TEST",
    "TARG_RA": 82.19,
    "TARG_DEC": -65.45,
    "IS_PSF": False,
}
SCI = {
    "BUNIT": "DN/s",
    "ROLL_REF": 171.77,
    "V3I_YANG": 0.56126717,
    "VPARITY": -1,
    "PA_APER": 172.33,
}


def write_product(path: Path, arrays: dict, primary=None, sci=None, drop=()) -> Path:
    """A minimal NIRISS product with the given extension arrays and header overrides."""
    primary_header = fits.Header({**PRIMARY, **(primary or {})})
    sci_header = fits.Header({**SCI, **(sci or {})})
    for key in drop:
        primary_header.remove(key, ignore_missing=True)
        sci_header.remove(key, ignore_missing=True)
    hdus = [fits.PrimaryHDU(header=primary_header)]
    for name, data in arrays.items():
        hdus.append(fits.ImageHDU(data, header=sci_header if name == "SCI" else None, name=name))
    fits.HDUList(hdus).writeto(path)
    return path


def rate_arrays(shape=(80, 80)) -> dict:
    """A flat 2-D rate product (no VAR_FLAT, as in `_rate` files)."""
    return {
        "SCI": np.full(shape, 10.0, np.float32),
        "DQ": np.zeros(shape, np.uint32),
        "VAR_POISSON": np.full(shape, 0.5, np.float32),
        "VAR_RNOISE": np.full(shape, 2.0, np.float32),
    }


def test_generated_rate_without_var_flat(tmp_path):
    arrays = rate_arrays()
    arrays["DQ"][40, 40] = JUMP_DET
    arrays["DQ"][10, 20] = UNUSABLE_DQ_FLAGS["SATURATED"]
    arrays["SCI"][30, 30] = np.nan
    product = read_rate_product(write_product(tmp_path / "x_rate.fits", arrays))
    np.testing.assert_allclose(product.variance[~product.bad], 2.5 * NIRISS_GAIN**2)
    assert product.bad[10, 20] and product.bad[30, 30] and not product.bad[40, 40]
    assert product.bad.sum() == 4 * 80 + 2


VARIANCES = ("VAR_POISSON", "VAR_RNOISE", "VAR_FLAT")


def ints_arrays(nints=20) -> dict:
    """A 3-D `_calints` product: integration i has rate 10 + spread_i, distinct variances."""
    spread = np.linspace(-1.0, 1.0, nints)[:, None, None]
    shape = (nints, 80, 80)
    return {
        "SCI": (10.0 + spread * np.ones(shape)).astype(np.float32),
        "DQ": np.zeros(shape, np.uint32),
        "VAR_POISSON": np.broadcast_to(1.0 + np.arange(nints)[:, None, None], shape).astype(
            np.float32
        ),
        "VAR_RNOISE": np.full(shape, 2.0, np.float32),
        "VAR_FLAT": np.broadcast_to(0.01 * (1.0 + spread), shape).astype(np.float32),
    }


def test_ints_clip_rejects_outlier(tmp_path):
    arrays = ints_arrays()
    arrays["SCI"][7, 50, 40] = 1000.0  # a cosmic ray the jump step missed
    arrays["DQ"][3, 20, 20] = DO_NOT_USE
    arrays["DQ"][:, 60, 60] = DO_NOT_USE
    product = read_rate_product(write_product(tmp_path / "x_calints.fits", arrays))
    n = product.n_integrations
    assert n[50, 40] == 19 and n[20, 20] == 19 and n[60, 60] == 0
    assert product.bad[60, 60] and product.bad[:4].all() and not product.bad[50, 40]
    assert (n[4:][~product.bad[4:]] >= 19).all() and (n[4:] == 20).sum() == 76 * 80 - 3
    others = np.delete(arrays["SCI"][:, 50, 40].astype(float), 7)
    assert product.rate[50, 40] == pytest.approx(others.mean() * NIRISS_GAIN, rel=1e-12)


def test_ints_variance_of_mean(tmp_path):
    arrays = ints_arrays()
    arrays["SCI"][7, 50, 40] = 1000.0
    product = read_rate_product(write_product(tmp_path / "x_calints.fits", arrays))
    g2 = NIRISS_GAIN**2
    for (y, x), kept in (((45, 45), np.arange(20)), ((50, 40), np.delete(np.arange(20), 7))):
        poisson, read, flat = (arrays[k][kept, y, x].astype(float) for k in VARIANCES)
        n = kept.size
        expected = (poisson.sum() + read.sum()) / n**2 + (np.sqrt(flat).sum() / n) ** 2
        assert product.variance[y, x] == pytest.approx(expected * g2, rel=1e-12)
        assert product.read_noise_variance[y, x] == pytest.approx(read.sum() / n**2 * g2)


@pytest.mark.parametrize(
    ("keyword", "primary", "sci", "drop"),
    [
        ("BUNIT", {}, {"BUNIT": "MJy/sr"}, ()),
        ("EXP_TYPE", {"EXP_TYPE": "NIS_SOSS"}, {}, ()),
        ("FILTER", {"FILTER": "F277W"}, {}, ()),
        ("NFRAMES", {"NFRAMES": 2}, {}, ()),
        ("SUBARRAY", {"SUBARRAY": "SUB64"}, {}, ()),
        ("SUBARRAY", {"SUBARRAY": "SUBSTRIP96"}, {}, ()),
        ("NGROUPS", {}, {}, ("NGROUPS",)),
        ("VPARITY", {}, {}, ("VPARITY",)),
    ],
)
def test_refusals_name_file_and_keyword(tmp_path, keyword, primary, sci, drop):
    path = write_product(tmp_path / "bad_cal.fits", rate_arrays(), primary, sci, drop)
    with pytest.raises(ProductError) as caught:
        read_rate_product(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {keyword}: ") and "\n" not in message
    assert isinstance(caught.value, ValueError) and caught.value.keyword == keyword
    assert str(pickle.loads(pickle.dumps(caught.value))) == message
    if keyword == "BUNIT":
        assert "DN/s" in message


def test_missing_extension_refused(tmp_path):
    arrays = rate_arrays()
    del arrays["VAR_RNOISE"]
    path = write_product(tmp_path / "x_rate.fits", arrays)
    with pytest.raises(ProductError, match=r"x_rate\.fits: VAR_RNOISE: extension missing"):
        read_rate_product(path)
