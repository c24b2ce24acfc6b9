"""Thorough checks of one exposure file before it enters a campaign store.

`scaling.fitsio.read_exposure` parses the file (keywords, extensions, shapes); this module
adds what a fit needs to be true of the values, and turns every failure into an
`IngestError` whose message starts with the file and names the field:

    file: FIELD: what was expected, what was found
"""

import hashlib
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from model.constants import FILTERS
from scaling.fitsio import ExposureRecord, read_exposure

_COORDINATES = {"TARG_RA": "target_ra", "TARG_DEC": "target_dec"}
"""Optional primary-header keywords (JWST names, degrees) kept for the WCS of exports."""


class IngestError(ValueError):
    """A file or store that cannot be ingested; the message names the file and field."""


@dataclass(frozen=True, eq=False)
class CheckedExposure:
    """A file that passed every check.

    Attributes:
        path: the file.
        sha256: hex digest of the file's bytes.
        record: its metadata and arrays.
        target_ra, target_dec: target coordinates from TARG_RA/TARG_DEC, degrees, or None.
    """

    path: Path
    sha256: str
    record: ExposureRecord
    target_ra: float | None
    target_dec: float | None


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def check_exposure(path: str | os.PathLike, sha256: str) -> CheckedExposure:
    """Read `path` (whose bytes hash to `sha256`) and check every value a fit relies on.

    Raises:
        IngestError: unreadable, truncated or non-FITS file; missing extension or keyword;
            mismatched shapes; unknown filter; non-finite slopes; non-positive variance
            on an unmasked pixel; every pixel masked; out-of-range header values.
    """
    path = Path(path)
    record = _read(path)
    _check_header(record, path)
    _check_arrays(record, path)
    coordinates = _coordinates(path)
    return CheckedExposure(path, sha256, record, **coordinates)


def _read(path: Path) -> ExposureRecord:
    """`read_exposure`, with truncation (a warning in astropy) and any failure as errors."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            record = read_exposure(path)
            failure = None
        except Exception as err:  # a malformed file can fail anywhere inside astropy
            record, failure = None, err
    truncated = [w for w in caught if "truncated" in str(w.message)]
    if truncated:
        raise IngestError(f"{path}: file is truncated ({truncated[0].message})")
    if failure is not None:
        message = str(failure)
        if message.startswith(str(path)):
            raise IngestError(message) from None
        raise IngestError(
            f"{path}: not a readable exposure file ({type(failure).__name__}: {message})"
        ) from None
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return record


def _check_header(r: ExposureRecord, path: Path) -> None:
    """Filter known; counts, times and angles in range."""
    if r.filter not in FILTERS:
        raise IngestError(
            f"{path}: FILTER: unknown filter {r.filter!r}; expected one of {', '.join(FILTERS)}"
        )
    if not r.target:
        raise IngestError(f"{path}: TARGPROP: empty target name")
    minimums = {"NGROUPS": (r.ngroups, 2), "NINTS": (r.nints, 1)}
    minimums |= {
        "PROGRAM": (r.program, 0),
        "OBSERVTN": (r.observation, 0),
        "VISIT": (r.visit, 0),
        "EXPOSURE": (r.exposure, 0),
    }
    for key, (value, minimum) in minimums.items():
        if value < minimum:
            raise IngestError(f"{path}: {key}: expected an integer >= {minimum}, got {value}")
    finite = {"EXPMID": r.expmid, "ROLL_REF": r.roll, "DITHX": r.dither_x, "DITHY": r.dither_y}
    for key, value in finite.items():
        if not math.isfinite(value):
            raise IngestError(f"{path}: {key}: expected a finite number, got {value}")
    if not (math.isfinite(r.group_time) and r.group_time > 0):
        raise IngestError(f"{path}: TGROUP: expected seconds > 0, got {r.group_time}")


def _check_arrays(r: ExposureRecord, path: Path) -> None:
    """Finite slopes, positive finite variance on unmasked pixels, some pixel unmasked."""
    if r.badpix.all():
        raise IngestError(f"{path}: BADPIX: every pixel is masked ({r.badpix.size} pixels)")
    bad = ~np.isfinite(r.slope)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise IngestError(
            f"{path}: SLOPE: {int(bad.sum())} values are NaN or inf, first at (group, y, x) = "
            f"{where}: {r.slope[where]}"
        )
    good = ~r.badpix[None]
    bad = good & ~(np.isfinite(r.variance) & (r.variance > 0))
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise IngestError(
            f"{path}: VARIANCE: {int(bad.sum())} unmasked values are <= 0 or not finite, first "
            f"at (group, y, x) = {where}: {r.variance[where]}"
        )


def _coordinates(path: Path) -> dict[str, float | None]:
    """TARG_RA and TARG_DEC (degrees) of the primary header, None where absent."""
    header = fits.getheader(path, 0)
    values = {}
    for key, field in _COORDINATES.items():
        value = header.get(key)
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if value is not None and not (number and math.isfinite(value)):
            raise IngestError(f"{path}: {key}: expected degrees, got {value!r}")
        values[field] = None if value is None else float(value)
    return values
