"""Exposure files of every kind, told apart by their content: our slope files, JWST rate
products and JWST ramps, each read into an `ExposureRecord` in electrons; and JWST-like rate
and ramp products written.

* kind "slopes": our layout (`scaling.data.fitsio`), slopes (ngroups-1, ny, nx) e-/group.
* kind "slopes" too, from a JWST `_uncal` or `_ramp` product (4-D SCI: nints, ngroups, ny,
  nx, in DN), made into slopes by `scaling.data.ramps.read_ramp`, with per-slope masks and
  integration counts (`ExposureRecord.slope_mask`, `counts`, `pair_counts`).
* kind "rate": a JWST stage-2 `_rate`/`_cal` (2-D) or `_rateints`/`_calints` (3-D) product,
  read by `scaling.data.jwst.read_rate_product`: the record's `slope` is the count rate
  (1, ny, nx) e-/s, its `variance` the rate's total variance (1, ny, nx) (e-/s)², `badpix`
  the product's mask (do-not-use DQ bits, reference pixels).

A file is a ramp product when its SCI is 4-D. It is a rate product when it has a SCI image
and no SLOPE one and SCI is 2-D or carries JWST product keywords (BUNIT, or EXP_TYPE in the
primary header), unless BUNIT is a per-group unit ('electrons/group'): a 3-D SCI in
electrons per group, or without units or EXP_TYPE, is one of our slope files under JWST
names.

Orientation. The model's `roll` (`model.source.rotate_image`) turns a north-up, east-left sky
image counter-clockwise by `roll` degrees into detector axes. For a rate product it is
`sky_to_detector_rotation(ROLL_REF, V3I_YANG, VPARITY)`: minus the position angle of the
detector +y axis (PA_APER = ROLL_REF + V3I_YANG), wrapped to [-180, 180). A product written
here stores the same angle the same way (`write_rate_product`). Our slope files keep the
model's roll itself in ROLL_REF.
"""

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from scaling.data.export import cd_matrix
from scaling.data.fitsio import (
    ExposureMeta,
    ExposureRecord,
    exposure_name,
    header_fields,
    read_exposure_with_names,
)
from scaling.data.jwst import (
    NIRISS_GAIN,
    NIRISS_SUBARRAYS,
    UNUSABLE_DQ_FLAGS,
    ProductError,
    read_rate_product,
    reference_pixel_mask,
    sky_to_detector_rotation,
)
from scaling.data.ramps import (
    DEFAULT_RAMPS,
    DO_NOT_USE,
    JUMP_DET,
    SATURATED,
    RampOptions,
    is_ramp,
    read_ramp,
)

SLOPES, RATE = "slopes", "rate"
KINDS = (SLOPES, RATE)
"""Exposure kinds: our group slopes (e-/group) or a JWST count rate (e-/s)."""

RAMPS = "ramps"
"""`product_kind` of a JWST ramp product (`_uncal`, `_ramp`), read as kind SLOPES."""

UNCAL, RAMP = "uncal", "ramp"
PRODUCTS = (SLOPES, RATE, UNCAL, RAMP)
"""Files the simulator writes: our slope files, JWST-like `_cal` rate products, raw
`_uncal` ramps (uint16 DN, no DQ) or stage-1 `_ramp` ramps (float32 DN, GROUPDQ, PIXELDQ)."""

BIAS_DN = 12000.0
"""[DN] Bias level of written `_uncal` ramps (NIRISS's is ~12,000 DN); `_ramp` ramps are
written with it subtracted, as the pipeline's superbias step does."""

NIRISS_V3I_YANG = 0.56126717
"""[deg] V3 → Ideal y angle of the NIRISS AMI aperture (SIAF; the program-1093 headers)."""

SUBARRAY_START = (1045, 1)
"""(SUBSTRT1, SUBSTRT2) of written products: where SUB80 lies on the science frame, so its
numpy rows 0-3 are reference pixels."""

_RATE_KEYWORDS = (
    "FILTER",
    "PUPIL",
    "TARGPROP",
    "IS_PSF",
    "EXPMID",
    "NINTS",
    "NGROUPS",
    "TGROUP",
    "SUBARRAY",
    "DITHX",
    "DITHY",
)
"""Keywords read as in our slope files; the ids and the roll of a product are read apart."""

_ID_KEYWORDS = ("PROGRAM", "OBSERVTN", "VISIT", "VISITGRP", "SEQ_ID", "ACT_ID", "EXPOSURE")
_ID_WIDTHS = (5, 3, 3, 2, 1, 2, 5)
_FILE_ID = re.compile(r"jw(\d{5})(\d{3})(\d{3})_(\d{2})(\d)(\d{2})_(\d{5})")
"""The JWST exposure id of a file name: PROGRAM OBSERVTN VISIT _ VISITGRP SEQ_ID ACT_ID _
EXPOSURE (e.g. jw01093012001_03102_00001)."""

_ROLL_KEYWORDS = "ROLL_REF/V3I_YANG/VPARITY"


@dataclass(frozen=True, eq=False)
class Product:
    """One exposure file, read.

    Attributes:
        kind: 'slopes' or 'rate'.
        name: exposure id, e.g. 'jw01093012001_03102_00001_nis'.
        record: metadata and arrays in electrons (see the module docstring for each kind).
        names: record field → the keyword or extension it was read from.
        gain: e-/DN applied to a rate product's DN/s; None for slopes (already electrons).
    """

    kind: str
    name: str
    record: ExposureRecord
    names: dict[str, str]
    gain: float | None


def product_kind(path: str | os.PathLike) -> str:
    """RAMPS for a JWST ramp product, RATE for a JWST rate product, SLOPES otherwise (see
    the module docstring); a file astropy cannot open counts as SLOPES, whose reader names
    the problem."""
    try:
        with fits.open(path) as hdul:
            if is_ramp(hdul):
                return RAMPS
            if "SCI" not in hdul or "SLOPE" in hdul:
                return SLOPES
            sci, primary = hdul["SCI"].header, hdul[0].header
            unit = str(sci.get("BUNIT", primary.get("BUNIT", "")))
            if unit.endswith("/group"):
                return SLOPES
            jwst = sci.get("NAXIS") == 2 or bool(unit) or "EXP_TYPE" in primary
            return RATE if jwst else SLOPES
    except OSError:
        return SLOPES


def read_product(
    path: str | os.PathLike, gain: float | None = NIRISS_GAIN, ramps: RampOptions = DEFAULT_RAMPS
) -> Product:
    """Read an exposure file of any kind; `gain` (e-/DN) converts a rate or ramp product
    (None: none given, which those refuse), `ramps` says how ramps become slopes.

    Raises:
        ValueError: naming the file and the keyword or extension at fault (a
            `ProductError` for a rate or ramp product the model cannot describe).
    """
    kind = product_kind(path)
    if kind == RATE:
        if gain is None:
            raise ProductError(str(path), "SCI", "counts in DN/s need a gain (e-/DN); give --gain")
        return _read_rate(Path(path), gain)
    if kind == RAMPS:
        return _read_ramp(Path(path), gain, ramps)
    record, names = read_exposure_with_names(path)
    name = exposure_name(record.program, record.observation, record.exposure, record.visit)
    return Product(SLOPES, name, record, names, None)


def _read_rate(path: Path, gain: float) -> Product:
    """A rate product as a record: (1, ny, nx) rate e-/s and variance (e-/s)², the mask."""
    product = read_rate_product(path, gain)
    meta, names, name = _product_meta(path, product.header)
    names |= {"slope": "SCI", "variance": "VAR_POISSON+VAR_RNOISE+VAR_FLAT", "badpix": "DQ"}
    record = ExposureRecord(
        **meta, slope=product.rate[None], variance=product.variance[None], badpix=product.bad
    )
    return Product(RATE, name, record, names, product.gain)


def _read_ramp(path: Path, gain: float | None, options: RampOptions) -> Product:
    """A ramp product as slopes (s, ny, nx) e-/group with per-slope masks and counts."""
    ramp = read_ramp(path, gain, options)
    meta, names, name = _product_meta(path, ramp.header)
    meta |= {"nints": ramp.nints, "ngroups": ramp.ngroups}
    names |= {"nints": "SCI", "ngroups": "SCI", "slope": "SCI", "variance": "SCI"}
    names["badpix"] = "PIXELDQ"
    record = ExposureRecord(
        **meta,
        slope=ramp.slope,
        variance=ramp.variance,
        badpix=ramp.bad,
        slope_mask=ramp.slope_mask,
        counts=ramp.counts,
        pair_counts=ramp.pair_counts,
    )
    return Product(SLOPES, name, record, names, ramp.gain)


def _product_meta(path: Path, header: dict) -> tuple[dict, dict[str, str], str]:
    """(`ExposureMeta` fields, field → keyword read, exposure name) of a JWST product whose
    checked keywords are `header`."""
    with fits.open(path) as hdul:
        headers = (hdul[0].header, hdul["SCI"].header)
        meta, names = header_fields(headers, _RATE_KEYWORDS, path)
        name, ids = jwst_exposure_id(hdul[0].header, path)
    meta["roll"], names["roll"] = detector_roll(header, str(path)), _ROLL_KEYWORDS
    from_keywords = _has_ids(headers[0])
    for field, key in zip(ids, ("PROGRAM", "OBSERVTN", "VISIT", "EXPOSURE"), strict=True):
        names[field] = key if from_keywords else "file name"
    return meta | ids, names, name


def detector_roll(header: dict, file: str) -> float:
    """The model's roll of a product (degrees, [-180, 180)): the counter-clockwise rotation
    of a north-up, east-left sky image into detector axes, from ROLL_REF, V3I_YANG, VPARITY.

    Raises:
        ProductError: a non-numeric angle, or VPARITY not -1 (a mirrored sky, which the
            model's rotation cannot describe).
    """
    for key in ("ROLL_REF", "V3I_YANG"):
        value = header[key]
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not (number and math.isfinite(value)):
            raise ProductError(file, key, f"expected degrees, got {value!r}")
    if header["VPARITY"] != -1:
        raise ProductError(
            file, "VPARITY", f"is {header['VPARITY']!r}, the model needs -1 (sky seen east-left)"
        )
    return sky_to_detector_rotation(header["ROLL_REF"], header["V3I_YANG"], -1)[0]


def jwst_exposure_id(primary: fits.Header, path: Path) -> tuple[str, dict[str, int]]:
    """(name, {program, observation, visit, exposure}) of a JWST product, from PROGRAM,
    OBSERVTN, VISIT, VISITGRP, SEQ_ID, ACT_ID, EXPOSURE when all are there, else from the
    jw… id in the file name. The name is the pipeline's file-name stem, e.g.
    'jw01093012001_03102_00001_nis' (EXPOSURE alone repeats within a visit).

    Raises:
        ProductError: no complete set of id keywords and no id in the file name, or an id
            keyword that is not a number.
    """
    if _has_ids(primary):
        numbers = [_id_number(primary[k], k, path) for k in _ID_KEYWORDS]
    else:
        match = _FILE_ID.search(path.name)
        if match is None:
            missing = next(k for k in _ID_KEYWORDS if k not in primary)
            raise ProductError(
                str(path), missing, "missing, and the file name holds no jw… exposure id"
            )
        numbers = [int(g) for g in match.groups()]
    parts = [f"{n:0{w}d}" for n, w in zip(numbers, _ID_WIDTHS, strict=True)]
    name = f"jw{''.join(parts[:3])}_{''.join(parts[3:6])}_{parts[6]}_nis"
    program, observation, visit, *_, exposure = numbers
    ids = {"program": program, "observation": observation, "visit": visit, "exposure": exposure}
    return name, ids


def _has_ids(primary: fits.Header) -> bool:
    return all(k in primary for k in _ID_KEYWORDS)


def _id_number(value, key: str, path: Path) -> int:
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit():
        raise ProductError(str(path), key, f"expected a number, got {value!r}")
    return int(text)


def write_rate_product(
    path: str | os.PathLike,
    meta: ExposureMeta,
    rate: np.ndarray,
    variance_poisson: np.ndarray,
    variance_read: np.ndarray,
    bad: np.ndarray,
    pixel_scale: float,
    gain: float = NIRISS_GAIN,
) -> None:
    """Write one exposure as a JWST-like stage-2 `_cal` product, in DN/s as the pipeline
    leaves AMI data, readable by `read_rate_product` and `read_product`.

    `rate` is (ny, nx) e-/s, `variance_poisson` and `variance_read` its variance parts
    (e-/s)², all divided by `gain` (e-/DN, squared for variances) on the way out; VAR_FLAT
    is 0 and ERR the square root of the sum. DQ has DO_NOT_USE on `bad` pixels and
    REFERENCE_PIXEL | DO_NOT_USE on the reference rows (SUBSTRT from `SUBARRAY_START`).
    Orientation: `meta.roll` (the model's, see the module docstring) gives PA_APER = -roll,
    ROLL_REF = PA_APER - `NIRISS_V3I_YANG`, VPARITY = -1 and a CD matrix of square
    `pixel_scale`-arcsec pixels; TARG_RA = TARG_DEC = 0 are placeholders (RADECSRC).

    Raises:
        ValueError: `meta.subarray` is not a NIRISS subarray of the arrays' shape.
    """
    shape = np.shape(rate)
    _check_subarray(meta, shape)
    flags = UNUSABLE_DQ_FLAGS
    reference = reference_pixel_mask(*SUBARRAY_START, shape)
    dq = np.where(bad, flags["DO_NOT_USE"], 0) | np.where(
        reference, flags["DO_NOT_USE"] | flags["REFERENCE_PIXEL"], 0
    )
    variances = {"VAR_POISSON": variance_poisson, "VAR_RNOISE": variance_read}
    variances = {k: np.asarray(v, np.float64) / gain**2 for k, v in variances.items()}
    variances["VAR_FLAT"] = np.zeros(shape)
    arrays = {
        "SCI": np.asarray(rate, np.float64) / gain,
        "ERR": np.sqrt(sum(variances.values())),
        "DQ": dq.astype(np.uint32),
        **variances,
    }
    hdus = [fits.PrimaryHDU(header=_primary_header(meta, shape, "ImageModel"))]
    for name, data in arrays.items():
        header = _sci_header(meta, shape, pixel_scale, "DN/s") if name == "SCI" else None
        data = data if name == "DQ" else data.astype(np.float32)
        hdus.append(fits.ImageHDU(data, header=header, name=name))
    fits.HDUList(hdus).writeto(path)


def write_ramp_product(
    path: str | os.PathLike,
    meta: ExposureMeta,
    charge: np.ndarray,
    pixel_scale: float,
    product: str,
    saturation_dn: float,
    jumps: np.ndarray | None = None,
    bad: np.ndarray | None = None,
    gain: float = NIRISS_GAIN,
) -> None:
    """Write one exposure's ramps as a JWST `_uncal` (product UNCAL) or `_ramp` (RAMP)
    file, readable by `read_product` and by stdatamodels as `Level1bModel` or `RampModel`.

    `charge` (nints, ngroups, ny, nx) is each read in electrons; DN = BIAS_DN + charge /
    `gain`. UNCAL: SCI the DN rounded to uint16 (clipped to [0, 65535]), no DQ. RAMP: SCI
    float32 DN with the bias subtracted; GROUPDQ SATURATED from the first group whose DN
    reach `saturation_dn` on, JUMP_DET where `jumps` (same shape, bool) is set; PIXELDQ
    DO_NOT_USE on `bad` (ny, nx) pixels. Keywords and orientation as `write_rate_product`.

    Raises:
        ValueError: `product` is not UNCAL or RAMP, or `meta.subarray` is not a NIRISS
            subarray of the reads' shape.
    """
    if product not in (UNCAL, RAMP):
        raise ValueError(f"product: expected {UNCAL!r} or {RAMP!r}, got {product!r}")
    shape = charge.shape[2:]
    _check_subarray(meta, shape)
    dn = BIAS_DN + np.asarray(charge, np.float64) / gain
    model = "Level1bModel" if product == UNCAL else "RampModel"
    primary = fits.PrimaryHDU(header=_primary_header(meta, shape, model))
    sci = _sci_header(meta, shape, pixel_scale, "DN")
    if product == UNCAL:
        data = np.clip(np.round(dn), 0, np.iinfo(np.uint16).max).astype(np.uint16)
        fits.HDUList([primary, fits.ImageHDU(data, header=sci, name="SCI")]).writeto(path)
        return
    saturated = np.logical_or.accumulate(dn >= saturation_dn, axis=1)
    jumps = np.zeros(dn.shape, bool) if jumps is None else jumps
    groupdq = np.where(saturated, SATURATED, 0) | np.where(jumps, JUMP_DET, 0)
    pixeldq = np.zeros(shape, np.uint32) if bad is None else np.where(bad, DO_NOT_USE, 0)
    hdus = [
        primary,
        fits.ImageHDU((dn - BIAS_DN).astype(np.float32), header=sci, name="SCI"),
        fits.ImageHDU(pixeldq.astype(np.uint32), name="PIXELDQ"),
        fits.ImageHDU(groupdq.astype(np.uint8), name="GROUPDQ"),
    ]
    fits.HDUList(hdus).writeto(path)


def _check_subarray(meta: ExposureMeta, shape: tuple[int, ...]) -> None:
    """Raise ValueError unless `meta.subarray` is a NIRISS subarray of `shape` (ny, nx)."""
    if NIRISS_SUBARRAYS.get(meta.subarray) != tuple(shape):
        raise ValueError(
            f"subarray {meta.subarray!r}: a JWST product needs a NIRISS subarray of shape "
            f"{tuple(shape)} ({', '.join(f'{k} {v}' for k, v in NIRISS_SUBARRAYS.items())})"
        )


def _primary_header(meta: ExposureMeta, shape: tuple[int, int], datamodel: str) -> fits.Header:
    """Primary keywords of a written product: identity, instrument set-up, readout, times."""
    duration = meta.nints * meta.ngroups * meta.group_time / 86400  # days
    ids = (meta.program, meta.observation, meta.visit, 1, 1, 1, meta.exposure)
    cards = {
        "TELESCOP": "JWST",
        "INSTRUME": "NIRISS",
        "DETECTOR": "NIS",
        "DATAMODL": datamodel,
        "EXP_TYPE": "NIS_AMI" if meta.pupil == "NRM" else "NIS_IMAGE",
        **{k: f"{n:0{w}d}" for k, n, w in zip(_ID_KEYWORDS, ids, _ID_WIDTHS, strict=True)},
        "TARGPROP": meta.target,
        "TARG_RA": (0.0, "[deg] placeholder (RADECSRC)"),
        "TARG_DEC": (0.0, "[deg] placeholder (RADECSRC)"),
        "RADECSRC": ("PLACEHOLDER", "source of TARG_RA/TARG_DEC"),
        "IS_PSF": meta.is_psf,
        "FILTER": meta.filter,
        "PUPIL": meta.pupil,
        "SUBARRAY": meta.subarray,
        "SUBSTRT1": SUBARRAY_START[0],
        "SUBSTRT2": SUBARRAY_START[1],
        "SUBSIZE1": shape[1],
        "SUBSIZE2": shape[0],
        "READPATT": "NISRAPID",
        "NFRAMES": 1,
        "GROUPGAP": 0,
        "NINTS": meta.nints,
        "NGROUPS": meta.ngroups,
        "TFRAME": (meta.group_time, "[s] frame time"),
        "TGROUP": (meta.group_time, "[s] group time"),
        "EFFINTTM": (meta.ngroups * meta.group_time, "[s] effective integration time"),
        "EXPSTART": (meta.expmid - duration / 2, "[MJD] exposure start"),
        "EXPMID": (meta.expmid, "[MJD] exposure mid time"),
        "EXPEND": (meta.expmid + duration / 2, "[MJD] exposure end"),
        "DITHX": (meta.dither_x, "[arcsec] known dither offset x"),
        "DITHY": (meta.dither_y, "[arcsec] known dither offset y"),
    }
    return fits.Header(list(_cards(cards)))


def _sci_header(
    meta: ExposureMeta, shape: tuple[int, int], pixel_scale: float, unit: str
) -> fits.Header:
    """SCI keywords: `unit`, pointing angles and a celestial WCS that agree (see
    `write_rate_product`)."""
    position_angle = -meta.roll % 360.0
    cd = cd_matrix(pixel_scale, meta.roll)
    cards = {
        "BUNIT": unit,
        "MJD-AVG": (meta.expmid, "[d] exposure mid-point in MJD"),
        "PA_APER": (position_angle, "[deg] position angle of the aperture (+y axis)"),
        "ROLL_REF": ((position_angle - NIRISS_V3I_YANG) % 360.0, "[deg] V3 roll at ref point"),
        "V3I_YANG": (NIRISS_V3I_YANG, "[deg] angle from V3 axis to Ideal y axis"),
        "VPARITY": (-1, "sense of rotation between Ideal xy and V2V3"),
        "WCSAXES": 2,
        "CRPIX1": (shape[1] + 1) / 2,
        "CRPIX2": (shape[0] + 1) / 2,
        "CRVAL1": 0.0,
        "CRVAL2": 0.0,
        "CTYPE1": "RA---TAN",
        "CTYPE2": "DEC--TAN",
        "CUNIT1": "deg",
        "CUNIT2": "deg",
        **{f"CD{i + 1}_{j + 1}": float(cd[i, j]) for i in range(2) for j in range(2)},
        "RADESYS": "ICRS",
    }
    return fits.Header(list(_cards(cards)))


def _cards(cards: dict):
    """(keyword, value[, comment]) cards of a {keyword: value or (value, comment)} dict."""
    for key, value in cards.items():
        yield (key, *value) if isinstance(value, tuple) else (key, value)
