"""One exposure as a JWST-like FITS file: header metadata, slopes, variance, bad pixels.

Layout written: a primary HDU holding the metadata keywords, then image extensions
'SLOPE' and 'VARIANCE' (float64, (ngroups-1, ny, nx), electrons per group, averaged over
integrations) and 'BADPIX' (uint8, (ny, nx), 1 = bad). Files carry no dates or checksums,
so the same record always gives the same bytes.

The reader also accepts the common JWST names: 'SCI' for 'SLOPE', 'ERR' (standard
deviation, variance = ERR²) for 'VARIANCE', 'DQ' (bit mask, (ny, nx) or one plane per
slope; bad where DO_NOT_USE is set) for 'BADPIX'; keywords are looked up in the primary
header, then in the SLOPE/SCI header, each under its aliases (`_ALIASES`); EXPMID falls
back to (EXPSTART + EXPEND) / 2.
"""

import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, fields
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

_ALIASES = {"TARGPROP": ("TARGNAME",), "ROLL_REF": ("PA_V3",), "EXPMID": ("MJD-AVG",)}
"""Other names a reader accepts for a keyword, tried in order after it (JWST and FITS)."""

_MIDPOINT = ("EXPSTART", "EXPEND")
"""[MJD] exposure start and end; EXPMID is their mean when it and its aliases are absent."""

_EXTENSIONS = {
    "slope": {"SLOPE": (3,), "SCI": (3,)},
    "variance": {"VARIANCE": (3,), "ERR": (3,)},
    "badpix": {"BADPIX": (2,), "DQ": (2, 3)},
}
"""Record array → {extension name: dimensions it may have}, ours first, then JWST's."""

DO_NOT_USE = 1
"""JWST data-quality bit of a pixel that must not be used."""


@dataclass(frozen=True)
class ExposureMeta:
    """What the header says of one exposure.

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


META_FIELDS = tuple(f.name for f in fields(ExposureMeta))
"""The header fields every exposure has, in the store as in a file."""


@dataclass(frozen=True, eq=False)
class ExposureRecord(ExposureMeta):
    """Metadata (`ExposureMeta`) and data of one exposure.

    Attributes:
        slope: (ngroups-1, ny, nx) slopes, electrons per group, float64.
        variance: (ngroups-1, ny, nx) variance of each slope, electrons², float64.
        badpix: (ny, nx) True where a pixel is bad.
        slope_mask: slopes made from ramps (`scaling.data.ramps`): (ngroups-1, ny, nx)
            True where a slope is masked (its value NaN); None for a file of slopes,
            whose mask is `badpix` on every slope.
        counts: with `slope_mask`, (ngroups-1, ny, nx) int32 integrations averaged into
            each slope; pair_counts: (ngroups-2, ny, nx) int32 integrations that kept both
            slope k and slope k+1. None otherwise (every slope from NINTS integrations).
    """

    slope: NDArray[np.float64]
    variance: NDArray[np.float64]
    badpix: NDArray[np.bool_]
    slope_mask: NDArray[np.bool_] | None = None
    counts: NDArray[np.int32] | None = None
    pair_counts: NDArray[np.int32] | None = None

    def kept(self) -> NDArray[np.bool_]:
        """(ngroups-1, ny, nx) True on the slopes a fit uses."""
        mask = self.badpix[None] if self.slope_mask is None else self.slope_mask | self.badpix
        return ~np.broadcast_to(mask, self.slope.shape)

    def mean_slope(self) -> NDArray[np.float64]:
        """(ny, nx) mean of each pixel's kept slopes (a rate product: its rate), 0 where
        none is kept."""
        return kept_mean(self.slope, self.kept())


def kept_mean(slope: NDArray[np.float64], kept: NDArray[np.bool_]) -> NDArray[np.float64]:
    """(ny, nx) mean over axis 0 of the `kept` values of (s, ny, nx) `slope`, 0 where none
    is kept (masked values, NaN or not, never enter)."""
    return np.where(kept, slope, 0.0).sum(axis=0) / np.maximum(kept.sum(axis=0), 1)


def exposure_name(program: int, observation: int, exposure: int, visit: int = 1) -> str:
    """JWST-style exposure id, e.g. 'jw01373001001_01101_00001_nis'."""
    return f"jw{program:05d}{observation:03d}{visit:03d}_01101_{exposure:05d}_nis"


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


def _alternatives(names: tuple[str, ...]) -> str:
    """'A' or 'A (or B, or C)': a field and its accepted alternatives, for messages."""
    return names[0] + (f" (or {', or '.join(names[1:])})" if len(names) > 1 else "")


def _convert(value, kind: type, key: str, path: Path):
    """Header `value` of keyword `key` as `kind`; a ValueError naming file and keyword if not."""
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


def _find(headers: tuple[fits.Header, ...], names: tuple[str, ...]) -> str | None:
    """The first of `names` present in any of `headers` (names first, then headers)."""
    return next((n for n in names for h in headers if n in h), None)


def _value(headers: tuple[fits.Header, ...], key: str):
    """Value of `key` in the first of `headers` holding it."""
    return next(h[key] for h in headers if key in h)


def _keyword(headers: tuple[fits.Header, ...], key: str, kind: type, path: Path) -> tuple:
    """(value as `kind`, name it was read under) of keyword `key` or an alias of it.

    Raises:
        ValueError: naming the file, the keyword and its alternatives.
    """
    names = (key, *_ALIASES.get(key, ()))
    found = _find(headers, names)
    if found is not None:
        return _convert(_value(headers, found), kind, found, path), found
    if key in _OPTIONAL:
        return _OPTIONAL[key], key
    if key == "EXPMID":
        return _midpoint(headers, names, path)
    raise ValueError(f"{path}: missing header keyword {_alternatives(names)}")


def header_fields(
    headers: tuple[fits.Header, ...], keywords: Iterable[str], path: Path
) -> tuple[dict, dict[str, str]]:
    """(values, names): the `ExposureMeta` field of each of `keywords` (keys of the table
    of keywords above, aliases and defaults included) and the keyword it was read under.

    Raises:
        ValueError: naming the file, the keyword and its alternatives.
    """
    values, names = {}, {}
    for key in keywords:
        field, kind, _ = _KEYWORDS[key]
        values[field], names[field] = _keyword(headers, key, kind, path)
    return values, names


def _midpoint(headers: tuple[fits.Header, ...], names: tuple[str, ...], path: Path) -> tuple:
    """((EXPSTART + EXPEND) / 2 in MJD, 'EXPSTART/EXPEND') for a file without `names`."""
    if not all(_find(headers, (k,)) for k in _MIDPOINT):
        alternatives = _alternatives((*names, " and ".join(_MIDPOINT)))
        raise ValueError(f"{path}: missing header keyword {alternatives}")
    start, end = (_convert(_value(headers, k), float, k, path) for k in _MIDPOINT)
    return (start + end) / 2, "/".join(_MIDPOINT)


def _extension(hdul: fits.HDUList, field: str, path: Path) -> tuple[np.ndarray, str]:
    """(data, name) of the first extension present among `field`'s accepted names."""
    names = tuple(_EXTENSIONS[field])
    name = next((n for n in names if n in hdul), None)
    if name is None:
        raise ValueError(f"{path}: missing extension {_alternatives(names)}")
    data, ndims = hdul[name].data, _EXTENSIONS[field][name]
    if data is None or data.ndim not in ndims:
        shape = None if data is None else data.shape
        expected = " or ".join(map(str, ndims))
        raise ValueError(
            f"{path}: extension {name}: expected {expected} dimensions, got shape {shape}"
        )
    return data, name


def _variance(hdul: fits.HDUList, path: Path) -> tuple[NDArray[np.float64], str]:
    """((s, ny, nx) variance, e-², name) from VARIANCE, or ERR² with ERR's sign kept (so
    a negative ERR fails validation as a negative variance)."""
    data, name = _extension(hdul, "variance", path)
    data = np.asarray(data, dtype=np.float64)
    return (np.copysign(data**2, data) if name == "ERR" else data), name


def _badpix(hdul: fits.HDUList, planes: int, path: Path) -> tuple[NDArray[np.bool_], str]:
    """((ny, nx) mask, name) from BADPIX (non-zero = bad) or from the DO_NOT_USE bit of
    DQ, (ny, nx) or (`planes`, ny, nx) (set in any plane = bad)."""
    data, name = _extension(hdul, "badpix", path)
    if name == "BADPIX":
        return np.asarray(data) != 0, name
    if data.dtype.kind not in "iu":
        raise ValueError(
            f"{path}: extension DQ: expected an integer bit mask, got {data.dtype.name}"
        )
    if data.ndim == 3 and data.shape[0] != planes:
        raise ValueError(f"{path}: extension DQ: expected {planes} planes, got shape {data.shape}")
    bad = (np.asarray(data) & DO_NOT_USE) != 0
    return (bad.any(axis=0) if bad.ndim == 3 else bad), name


def read_exposure(path: str | os.PathLike) -> ExposureRecord:
    """Read one exposure; arrays come back native-endian (float64 data, bool mask).

    Raises:
        ValueError: naming the file and the missing or invalid extension or keyword.
    """
    return read_exposure_with_names(path)[0]


def read_exposure_with_names(path: str | os.PathLike) -> tuple[ExposureRecord, dict[str, str]]:
    """(record, names): the exposure and, for each record field, the keyword or extension
    it was read from (e.g. {'slope': 'SCI', 'expmid': 'EXPSTART/EXPEND', …}).

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
        slope, slope_name = _extension(hdul, "slope", path)
        headers = (hdul[0].header, hdul[slope_name].header)
        meta, names = header_fields(headers, _KEYWORDS, path)
        names["slope"] = slope_name
        slope = np.asarray(slope, dtype=np.float64)
        variance, names["variance"] = _variance(hdul, path)
        badpix, names["badpix"] = _badpix(hdul, slope.shape[0], path)
    _check_shapes(slope, variance, badpix, meta["ngroups"], names, path)
    return ExposureRecord(**meta, slope=slope, variance=variance, badpix=badpix), names


def _check_shapes(slope, variance, badpix, ngroups: int, names: dict[str, str], path) -> None:
    """Slopes have NGROUPS-1 planes; variance matches them, the mask their (ny, nx)."""
    if slope.shape[0] != ngroups - 1:
        raise ValueError(
            f"{path}: extension {names['slope']}: expected NGROUPS-1 = {ngroups - 1} planes, "
            f"got shape {slope.shape}"
        )
    if variance.shape != slope.shape:
        raise ValueError(
            f"{path}: extension {names['variance']}: expected shape {slope.shape}, "
            f"got {variance.shape}"
        )
    if badpix.shape != slope.shape[1:]:
        raise ValueError(
            f"{path}: extension {names['badpix']}: expected shape {slope.shape[1:]}, "
            f"got {badpix.shape}"
        )
