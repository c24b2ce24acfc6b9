"""One exposure as a JWST-like FITS file: header metadata, slopes, variance, bad pixels.

Layout: a primary HDU holding the metadata keywords, then image extensions 'SLOPE' and
'VARIANCE' (float64, (ngroups-1, ny, nx), electrons per group, averaged over integrations)
and 'BADPIX' (uint8, (ny, nx), 1 = bad). Files carry no dates or checksums, so the same
record always gives the same bytes.
"""

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from numpy.typing import NDArray

_KEYWORDS = {
    # keyword: (record field, python type, comment)
    "FILTER": ("filter", str, "filter name"),
    "PUPIL": ("pupil", str, "pupil element: NRM (AMI) or CLEAR"),
    "TARGPROP": ("target", str, "proposer's target name"),
    "IS_PSF": ("is_psf", bool, "true for a PSF calibrator"),
    "EXPMID": ("expmid", float, "[MJD] exposure mid time"),
    "ROLL_REF": ("roll", float, "[deg] roll (position angle) of the exposure"),
    "NINTS": ("nints", int, "integrations averaged into the slopes"),
    "NGROUPS": ("ngroups", int, "groups per integration"),
    "TGROUP": ("group_time", float, "[s] time between group reads"),
    "SUBARRAY": ("subarray", str, "subarray name"),
    "PROGRAM": ("program", int, "programme id"),
    "OBSERVTN": ("observation", int, "observation number"),
    "VISIT": ("visit", int, "visit number"),
    "EXPOSURE": ("exposure", int, "exposure number"),
    "DITHX": ("dither_x", float, "[arcsec] known dither offset x"),
    "DITHY": ("dither_y", float, "[arcsec] known dither offset y"),
}
_ID_WIDTHS = {"PROGRAM": 5, "OBSERVTN": 3, "VISIT": 3, "EXPOSURE": 5}
"""Ids are written as zero-padded strings, as JWST does."""

_OPTIONAL = {"DITHX": 0.0, "DITHY": 0.0}
"""Keywords a reader may miss (real AMI files have no dither keywords), with defaults."""


@dataclass(frozen=True, eq=False)
class ExposureRecord:
    """Metadata and data of one exposure.

    Attributes:
        filter: filter name, e.g. 'F430M'.
        pupil: 'NRM' for AMI, 'CLEAR' for the flat-field workload.
        target: target name (TARGPROP).
        is_psf: True for calibrator (PSF reference) exposures.
        expmid: exposure mid time, MJD.
        roll: roll angle rotating sky into detector axes, degrees.
        nints: integrations averaged into the slopes.
        ngroups: groups per integration (slopes have ngroups-1 planes).
        group_time: seconds between group reads.
        subarray: subarray name, e.g. 'SUB80'.
        program, observation, visit, exposure: JWST-style ids.
        dither_x, dither_y: known pointing offset, arcsec.
        slope: (ngroups-1, ny, nx) slopes, electrons per group, float64.
        variance: (ngroups-1, ny, nx) variance of each slope, electrons², float64.
        badpix: (ny, nx) True where a pixel is bad.
    """

    filter: str
    pupil: str
    target: str
    is_psf: bool
    expmid: float
    roll: float
    nints: int
    ngroups: int
    group_time: float
    subarray: str
    program: int
    observation: int
    visit: int
    exposure: int
    dither_x: float
    dither_y: float
    slope: NDArray[np.float64]
    variance: NDArray[np.float64]
    badpix: NDArray[np.bool_]


def write_exposure(path: str | os.PathLike, record: ExposureRecord) -> None:
    """Write `record` to `path` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    primary = fits.PrimaryHDU()
    primary.header["TELESCOP"] = ("JWST", "telescope")
    primary.header["INSTRUME"] = ("NIRISS", "instrument")
    for key, (field, kind, comment) in _KEYWORDS.items():
        value = getattr(record, field)
        if key in _ID_WIDTHS:
            value = f"{int(value):0{_ID_WIDTHS[key]}d}"
        else:
            value = kind(value)
        primary.header[key] = (value, comment)
    hdus = [primary]
    for name, data, unit in (
        ("SLOPE", np.asarray(record.slope, dtype=np.float64), "electrons/group"),
        ("VARIANCE", np.asarray(record.variance, dtype=np.float64), "electrons2"),
        ("BADPIX", np.asarray(record.badpix, dtype=np.uint8), ""),
    ):
        hdu = fits.ImageHDU(data, name=name)
        if unit:
            hdu.header["BUNIT"] = unit
        hdus.append(hdu)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            fits.HDUList(hdus).writeto(f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _keyword(header: fits.Header, key: str, kind: type, path: Path):
    """Header value converted to `kind`; a ValueError naming file and keyword if not."""
    if key not in header:
        if key in _OPTIONAL:
            return _OPTIONAL[key]
        raise ValueError(f"{path}: missing header keyword {key}")
    value = header[key]
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{path}: keyword {key}: expected a boolean, got {value!r}")
        return value
    if kind is int and isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if kind is str and isinstance(value, str):
        return value.strip()
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    if numeric and (kind is float or (kind is int and float(value).is_integer())):
        return kind(value)
    raise ValueError(f"{path}: keyword {key}: expected {kind.__name__}, got {value!r}")


def _extension(hdul: fits.HDUList, name: str, ndim: int, path: Path) -> np.ndarray:
    """Data of image extension `name` with `ndim` dimensions."""
    if name not in hdul:
        raise ValueError(f"{path}: missing extension {name}")
    data = hdul[name].data
    if data is None or data.ndim != ndim:
        shape = None if data is None else data.shape
        raise ValueError(f"{path}: extension {name}: expected {ndim} dimensions, got shape {shape}")
    return data


def read_exposure(path: str | os.PathLike) -> ExposureRecord:
    """Read one exposure; arrays come back native-endian (float64 data, bool mask).

    Raises:
        ValueError: naming the file and the missing or invalid extension or keyword.
    """
    path = Path(path)
    try:
        hdul = fits.open(path, memmap=False)
    except OSError as err:
        if not path.exists():
            raise
        raise ValueError(f"{path}: not a readable FITS file ({err})") from None
    with hdul:
        header = hdul[0].header
        meta = {
            field: _keyword(header, key, kind, path) for key, (field, kind, _) in _KEYWORDS.items()
        }
        slope = np.asarray(_extension(hdul, "SLOPE", 3, path), dtype=np.float64)
        variance = np.asarray(_extension(hdul, "VARIANCE", 3, path), dtype=np.float64)
        badpix = np.asarray(_extension(hdul, "BADPIX", 2, path)) != 0
    if slope.shape[0] != meta["ngroups"] - 1:
        raise ValueError(
            f"{path}: extension SLOPE: expected NGROUPS-1 = {meta['ngroups'] - 1} planes, "
            f"got shape {slope.shape}"
        )
    if variance.shape != slope.shape:
        raise ValueError(
            f"{path}: extension VARIANCE: expected shape {slope.shape}, got {variance.shape}"
        )
    if badpix.shape != slope.shape[1:]:
        raise ValueError(
            f"{path}: extension BADPIX: expected shape {slope.shape[1:]}, got {badpix.shape}"
        )
    return ExposureRecord(**meta, slope=slope, variance=variance, badpix=badpix)
