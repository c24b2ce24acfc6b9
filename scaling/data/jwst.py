"""Real JWST NIRISS stage-2 products (`_rate`, `_cal`, `_rateints`, `_calints`) for AMI fits.

`read_rate_product` turns one product into a `RateProduct`: count rate and variances in
electrons per second, a bad-pixel mask and the header keywords a fit needs, refusing (with
`ProductError`) any product the forward model cannot describe. The orientation functions give
the detector axes on the sky from the JWST pointing keywords and from the FITS WCS.

Do-not-use DQ bits (JWST pixel flags, stdatamodels `jwst/datamodels/dqflags.py`): a pixel is
masked when any bit saying its *value* is missing, invalid or uncalibrated is set —
DO_NOT_USE, SATURATED, DROPOUT, OUTLIER, AD_FLOOR, NON_SCIENCE, DEAD, HOT, NO_FLAT_FIELD,
NO_GAIN_VALUE, NO_LIN_CORR, OPEN, ADJ_OPEN, OTHER_BAD_PIXEL and REFERENCE_PIXEL. Bits that only
record an effect the pipeline has already handled stay usable: JUMP_DET (ramp fitting splits
the ramp at the jump, so the slope is unbiased; in a 2-D product the bit is the OR over all
integrations and, in the program-1093 files, marks up to ~300 pixels, some 1-2 pixels from
the PSF peak), PERSISTENCE, WARM, LOW_QE, NONLINEAR, TELEGRAPH and the UNRELIABLE_* bits (the
pipeline's mask reference file also sets DO_NOT_USE where it judges those pixels unusable).
"""

import os
from dataclasses import dataclass

import numpy as np
from astropy.io import fits

from model.constants import FILTERS

NIRISS_GAIN = 1.61
"""NIRISS detector gain, electrons per DN (CRDS jwst_niriss_gain_0006)."""

UNUSABLE_DQ_FLAGS = {
    "DO_NOT_USE": 2**0,
    "SATURATED": 2**1,
    "DROPOUT": 2**3,
    "OUTLIER": 2**4,
    "AD_FLOOR": 2**6,
    "NON_SCIENCE": 2**9,
    "DEAD": 2**10,
    "HOT": 2**11,
    "NO_FLAT_FIELD": 2**18,
    "NO_GAIN_VALUE": 2**19,
    "NO_LIN_CORR": 2**20,
    "OPEN": 2**26,
    "ADJ_OPEN": 2**27,
    "OTHER_BAD_PIXEL": 2**30,
    "REFERENCE_PIXEL": 2**31,
}
"""JWST DQ pixel flags that make a pixel unusable (see the module docstring for the choice)."""

UNUSABLE_DQ_MASK = sum(UNUSABLE_DQ_FLAGS.values())
"""OR of `UNUSABLE_DQ_FLAGS`."""

AMI_EXP_TYPES = ("NIS_AMI", "NIS_IMAGE", "NIS_TACQ", "NIS_TACONFIRM")
"""Accepted EXP_TYPE: AMI science, direct imaging and the target-acquisition images (all
images of a sky scene through the NRM or a clear pupil). Spectroscopy (NIS_SOSS, NIS_WFSS),
darks, lamps and focus exposures are refused."""

NIRISS_SUBARRAYS = {
    "FULL": (2048, 2048),
    "SUB64": (64, 64),
    "SUB80": (80, 80),
    "SUB128": (128, 128),
    "SUB256": (256, 256),
    "SUBTAAMI": (64, 64),
    "SUBTASOSS": (64, 64),
}
"""NIRISS imaging subarrays: SUBARRAY name -> (ny, nx) pixels of the science-frame image."""

HEADER_KEYWORDS = (
    "EXP_TYPE",
    "PUPIL",
    "FILTER",
    "SUBARRAY",
    "SUBSTRT1",
    "SUBSTRT2",
    "READPATT",
    "NFRAMES",
    "NINTS",
    "NGROUPS",
    "TGROUP",
    "EFFINTTM",
    "EXPSTART",
    "EXPMID",
    "EXPEND",
    "TARGPROP",
    "TARG_RA",
    "TARG_DEC",
    "IS_PSF",
    "ROLL_REF",
    "V3I_YANG",
    "VPARITY",
    "PA_APER",
    "BUNIT",
)
"""Required keywords, looked up in the primary header, then in the SCI header."""

CLIP_SIGMA = 4.0
"""Per-pixel clip threshold over integrations, in robust sigma (1.4826 × MAD)."""

CLIP_MAX_PASSES = 10
"""Most passes of the iterative integration clip."""

_MAD_TO_SIGMA = 1.4826
_ARRAY_EXTENSIONS = ("SCI", "DQ", "VAR_POISSON", "VAR_RNOISE")
_FULL_FRAME = 2048
_REFERENCE_BORDER = 4

HeaderValue = str | int | float | bool


class ProductError(ValueError):
    """A product the reader refuses; the message is one line "FILE: KEYWORD: problem"."""

    def __init__(self, file: str, keyword: str, problem: str):
        super().__init__(f"{file}: {keyword}: {problem}")
        self.file, self.keyword, self.problem = file, keyword, problem

    def __reduce__(self):
        return type(self), (self.file, self.keyword, self.problem)


@dataclass(frozen=True, eq=False)
class RateProduct:
    """One JWST rate product in electrons, on the (ny, nx) science-frame pixel grid.

    `rate` is e-/s; `variance` the total variance of `rate` and `read_noise_variance` its
    read-noise part, both (e-/s)²; `bad` is True where a pixel must not be used (DQ
    do-not-use bits, reference pixels, non-finite or non-positive variance, no integration
    kept). Arrays are float64 (bool for `bad`), read-only and finite; bad pixels hold 0.
    `n_integrations` (int, (ny, nx)) counts the integrations averaged per pixel for
    `_rateints`/`_calints` products and is None for 2-D products. `header` holds
    `HEADER_KEYWORDS` as JWST wrote them; `gain` is the e-/DN factor applied.
    """

    path: str
    rate: np.ndarray
    variance: np.ndarray
    read_noise_variance: np.ndarray
    bad: np.ndarray
    n_integrations: np.ndarray | None
    header: dict[str, HeaderValue]
    gain: float


def read_rate_product(
    path: str | os.PathLike, gain: float = NIRISS_GAIN, bad_bits: int = UNUSABLE_DQ_MASK
) -> RateProduct:
    """Read a 2-D `_rate`/`_cal` or 3-D `_rateints`/`_calints` NIRISS product in e-/s.

    SCI (DN/s) × `gain` gives e-/s and (VAR_POISSON + VAR_RNOISE [+ VAR_FLAT]) × gain² the
    variance. A 3-D product is averaged over integrations after a per-pixel clip: an
    integration is dropped where its DQ has a `bad_bits` bit or a value is non-finite, then
    iteratively where it lies more than `CLIP_SIGMA` × 1.4826 × MAD from the median of the
    integrations kept (at most `CLIP_MAX_PASSES` passes). The mean's variance is
    Σ(VAR_POISSON + VAR_RNOISE)/n² plus the flat-field part, which is common to all
    integrations and so stays (Σ√VAR_FLAT / n)². Raises `ProductError` for a product it
    cannot describe (units, EXP_TYPE, FILTER, NFRAMES, SUBARRAY size, missing keyword or
    extension).
    """
    if not (np.isfinite(gain) and gain > 0):
        raise ValueError(f"gain must be a positive number of e-/DN, got {gain!r}")
    file = os.fspath(path)
    with fits.open(file) as hdul:
        header = product_header(file, hdul)
        arrays = {name: _extension(file, hdul, name) for name in _ARRAY_EXTENSIONS}
        if "VAR_FLAT" in hdul:
            arrays["VAR_FLAT"] = _extension(file, hdul, "VAR_FLAT")
    shape = _check_shapes(file, header, arrays)
    reference = reference_pixel_mask(header["SUBSTRT1"], header["SUBSTRT2"], shape)
    unusable = ((arrays.pop("DQ").astype(np.int64) & bad_bits) != 0) | reference
    if arrays["SCI"].ndim == 3:
        rate, variance, read_noise, n_kept = _combine_integrations(arrays, unusable)
        bad = n_kept == 0
    else:
        rate, variance, read_noise = _combine_variances(arrays)
        n_kept, bad = None, unusable
    bad = bad | reference | ~np.isfinite(rate) | ~np.isfinite(variance) | ~(variance > 0)
    return RateProduct(
        path=file,
        rate=_frozen(rate * gain, bad),
        variance=_frozen(variance * gain**2, bad),
        read_noise_variance=_frozen(read_noise * gain**2, bad),
        bad=_frozen(bad, None),
        n_integrations=None if n_kept is None else _frozen(n_kept, None),
        header=header,
        gain=float(gain),
    )


def reference_pixel_mask(substrt1: int, substrt2: int, shape: tuple[int, ...]) -> np.ndarray:
    """Reference pixels of a NIRISS subarray image: (ny, nx) bool, True on reference pixels.

    The outer 4 rows and columns of the 2048² science frame are reference pixels; SUBSTRT1
    (x) and SUBSTRT2 (y) are the 1-based science-frame start of the subarray. For SUB80
    (SUBSTRT2 = 1) these are numpy rows 0-3.
    """
    ny, nx = shape[-2:]
    x = np.arange(substrt1, substrt1 + nx)
    y = np.arange(substrt2, substrt2 + ny)
    low, high = _REFERENCE_BORDER, _FULL_FRAME - _REFERENCE_BORDER
    return ((y <= low) | (y > high))[:, None] | ((x <= low) | (x > high))[None, :]


def detector_position_angle(roll_ref: float, v3i_yang: float, vparity: int) -> float:
    """Position angle of the detector +y axis, degrees east of north in [0, 360).

    ROLL_REF is the V3 position angle at the aperture reference point and V3I_YANG the angle
    from V3 to the Ideal y axis, measured towards V2 whatever the parity (SIAF convention:
    V2 = V2Ref + VIdlParity·X·cos a + Y·sin a, V3 = V3Ref − VIdlParity·X·sin a + Y·cos a), so
    the angle is ROLL_REF + V3I_YANG (= PA_APER); VPARITY only sets the handedness (see
    `sky_to_detector_rotation`). This is the angle the JWST AMI step rotates by:
    spacetelescope/jwst, jwst/ami/instrument_data.py, `NIRISS.mast2sky` ("ROLL_REF +
    V3I_YANG (= PA_APER)", clockwise for VPARITY = -1). stcal's `calc_rotation_matrix` uses
    ROLL_REF − VPARITY·V3I_YANG, the same for every NIRISS aperture (VPARITY = -1).
    """
    _check_parity(vparity)
    return float((roll_ref + v3i_yang) % 360.0)


def sky_to_detector_rotation(roll_ref: float, v3i_yang: float, vparity: int) -> tuple[float, int]:
    """(angle, parity) turning a north-up, east-left image into detector axes.

    Rotate the image content by `angle` degrees counterclockwise (x right, y up; angle is
    minus the detector position angle, in [-180, 180)), then multiply x by `parity`: +1 keeps
    the image (VPARITY = -1: the detector sees the sky east-left, as NIRISS does), -1 mirrors
    it. `sky_to_detector_matrix` gives the same map as a matrix.
    """
    angle = -detector_position_angle(roll_ref, v3i_yang, vparity)
    return float((angle + 180.0) % 360.0 - 180.0), -int(vparity)


def sky_to_detector_matrix(angle_deg: float, parity: int) -> np.ndarray:
    """(2, 2) matrix taking (west, north) offsets of a north-up east-left image to (x, y)."""
    _check_parity(parity)
    c, s = np.cos(np.deg2rad(angle_deg)), np.sin(np.deg2rad(angle_deg))
    return np.array([[parity * c, -parity * s], [s, c]])


def wcs_position_angle(sci_header: fits.Header, file: str = "SCI header") -> tuple[float, bool]:
    """Position angle of the detector +y axis (degrees east of north, [0, 360)) and whether
    the detector sees the sky east-left (a rotation, not a mirror, of north-up east-left),
    from the FITS celestial WCS at the reference pixel (CD matrix, else PC × CDELT).
    """
    ctypes = (str(sci_header.get("CTYPE1", "")), str(sci_header.get("CTYPE2", "")))
    if not (ctypes[0].startswith("RA--") and ctypes[1].startswith("DEC-")):
        raise ProductError(file, "CTYPE1", f"expected RA---/DEC-- axes, got {ctypes}")
    matrix = _wcs_matrix(sci_header, file)
    east, north = matrix[0, 1], matrix[1, 1]
    angle = float(np.rad2deg(np.arctan2(east, north)) % 360.0)
    return angle, bool(np.linalg.det(matrix) < 0)


def _wcs_matrix(header: fits.Header, file: str) -> np.ndarray:
    """Pixel-to-intermediate-world (east, north) matrix, degrees per pixel (FITS defaults)."""
    indices = ((1, 1), (1, 2), (2, 1), (2, 2))
    if any(f"CD{i}_{j}" in header for i, j in indices):
        return np.array([header.get(f"CD{i}_{j}", 0.0) for i, j in indices], float).reshape(2, 2)
    if not any(f"PC{i}_{j}" in header for i, j in indices) and "CDELT1" not in header:
        raise ProductError(file, "CD1_1", "no CD matrix and no PC/CDELT keywords")
    pc = np.array([header.get(f"PC{i}_{j}", float(i == j)) for i, j in indices], float)
    cdelt = np.array([header.get(f"CDELT{i}", 1.0) for i in (1, 2)], float)
    return cdelt[:, None] * pc.reshape(2, 2)


def _check_parity(parity: int) -> None:
    if parity not in (1, -1):
        raise ValueError(f"parity must be +1 or -1, got {parity!r}")


def product_header(
    file: str, hdul: fits.HDUList, keywords: tuple[str, ...] = HEADER_KEYWORDS
) -> dict[str, HeaderValue]:
    """`keywords` from the primary then the SCI header, checked for what the model needs
    (BUNIT only if among them)."""
    primary, sci = hdul[0].header, _hdu(file, hdul, "SCI").header
    header = {}
    for key in keywords:
        source = primary if key in primary else sci
        if key not in source:
            raise ProductError(file, key, "required keyword missing from primary and SCI headers")
        header[key] = source[key]
    _check_header(file, header)
    return header


def _check_header(file: str, header: dict[str, HeaderValue]) -> None:
    if "BUNIT" in header and header["BUNIT"] != "DN/s":
        raise ProductError(
            file,
            "BUNIT",
            f"is {header['BUNIT']!r}, expected 'DN/s' (AMI products stay in DN/s: run stage 2 "
            "without the photom step)",
        )
    if header["EXP_TYPE"] not in AMI_EXP_TYPES:
        raise ProductError(
            file, "EXP_TYPE", f"{header['EXP_TYPE']!r} is not one of {', '.join(AMI_EXP_TYPES)}"
        )
    if header["FILTER"] not in FILTERS:
        raise ProductError(
            file, "FILTER", f"{header['FILTER']!r} is not a modelled filter ({', '.join(FILTERS)})"
        )
    if header["NFRAMES"] != 1:
        raise ProductError(
            file, "NFRAMES", f"is {header['NFRAMES']}, the detector model needs 1 frame per group"
        )
    if header["SUBARRAY"] not in NIRISS_SUBARRAYS:
        raise ProductError(
            file,
            "SUBARRAY",
            f"{header['SUBARRAY']!r} is not a NIRISS imaging subarray "
            f"({', '.join(NIRISS_SUBARRAYS)})",
        )


def _hdu(file: str, hdul: fits.HDUList, name: str) -> fits.ImageHDU:
    if name not in hdul:
        raise ProductError(file, name, "extension missing")
    return hdul[name]


def _extension(file: str, hdul: fits.HDUList, name: str) -> np.ndarray:
    """An image extension as a new array (float64, or int64 for DQ)."""
    dtype = np.int64 if name == "DQ" else np.float64
    return np.array(_hdu(file, hdul, name).data, dtype=dtype)


def _check_shapes(file: str, header: dict[str, HeaderValue], arrays: dict) -> tuple[int, int]:
    """(ny, nx) of SCI, checked against SUBARRAY and the other extensions."""
    sci = arrays["SCI"]
    if sci.ndim not in (2, 3):
        raise ProductError(file, "SCI", f"has {sci.ndim} axes, expected 2 (rate) or 3 (rateints)")
    shape = sci.shape[-2:]
    expected = NIRISS_SUBARRAYS[header["SUBARRAY"]]
    if shape != expected:
        raise ProductError(
            file, "SUBARRAY", f"{header['SUBARRAY']} is {expected} pixels but SCI is {shape}"
        )
    for name, array in arrays.items():
        if array.shape != sci.shape and not (name == "DQ" and array.shape == shape):
            raise ProductError(file, name, f"shape {array.shape} differs from SCI {sci.shape}")
    return shape


def _combine_variances(arrays: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rate, total variance, read-noise variance) of a 2-D product, in DN/s units."""
    flat = arrays.get("VAR_FLAT", 0.0)
    variance = arrays["VAR_POISSON"] + arrays["VAR_RNOISE"] + flat
    return arrays["SCI"], variance, arrays["VAR_RNOISE"]


def _combine_integrations(
    arrays: dict, unusable: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(mean rate, its variance, its read-noise variance, integrations kept) over axis 0."""
    sci, poisson, read = arrays["SCI"], arrays["VAR_POISSON"], arrays["VAR_RNOISE"]
    flat = arrays.get("VAR_FLAT", np.zeros_like(sci))
    finite = np.isfinite(sci) & np.isfinite(poisson) & np.isfinite(read) & np.isfinite(flat)
    keep = clip_integrations(sci, finite & ~unusable)
    n = keep.sum(axis=0)
    n_safe = np.maximum(n, 1)

    def kept_sum(values: np.ndarray) -> np.ndarray:
        return np.where(keep, values, 0.0).sum(axis=0)

    read_noise = kept_sum(read) / n_safe**2
    flat_sigma = kept_sum(np.sqrt(np.maximum(flat, 0.0))) / n_safe
    variance = kept_sum(poisson) / n_safe**2 + read_noise + flat_sigma**2
    return kept_sum(sci) / n_safe, variance, read_noise, n


def clip_integrations(
    values: np.ndarray, usable: np.ndarray, floor: np.ndarray | float = 0.0
) -> np.ndarray:
    """(nints, ...) bool: the `usable` integrations (axis 0) kept by the iterative
    median/MAD clip of `CLIP_SIGMA`, per element of the other axes; the robust sigma is
    at least `floor` (e.g. the expected noise, so that a MAD of a few integrations that
    happens to be small does not clip good ones)."""
    keep = usable.copy()
    for _ in range(CLIP_MAX_PASSES):
        # Pixels with nothing kept get zeros so nanmedian never meets an all-NaN column.
        blank = np.where(keep.any(axis=0), np.nan, 0.0)
        median = np.nanmedian(np.where(keep, values, blank), axis=0)
        deviation = np.abs(np.where(keep, values, median) - median)
        sigma = _MAD_TO_SIGMA * np.nanmedian(np.where(keep, deviation, blank), axis=0)
        sigma = np.maximum(sigma, floor)
        kept = keep & (deviation <= CLIP_SIGMA * sigma)
        if np.array_equal(kept, keep):
            break
        keep = kept
    return keep


def _frozen(array: np.ndarray, bad: np.ndarray | None) -> np.ndarray:
    """A read-only copy, with 0 on `bad` pixels when given."""
    out = np.where(bad, 0, array) if bad is not None else np.array(array)
    out.setflags(write=False)
    return out
