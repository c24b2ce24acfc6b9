"""Thorough checks of one exposure file before it enters a campaign store.

`scaling.data.products.read_product` parses the file, a slope file or a JWST rate product
(keywords, extensions, shapes, a product's units, exposure type, frames and subarray); this
module adds what a fit needs to be true of the values, and turns every failure into an
`IngestError` whose message starts with the file and names the field as the file spells
it (e.g. SCI or SLOPE, PA_V3 or ROLL_REF):

    file: FIELD: what was expected, what was found

Values of masked pixels are not checked: JWST products carry NaN there.
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
from scaling.data.fitsio import ExposureRecord
from scaling.data.jwst import NIRISS_GAIN
from scaling.data.products import Product, read_product
from scaling.data.ramps import DEFAULT_RAMPS, RampOptions

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
        record: its metadata and arrays (in electrons; see `scaling.data.products`).
        target_ra, target_dec: target coordinates from TARG_RA/TARG_DEC, degrees, or None.
        kind: 'slopes' or 'rate'; name: its exposure id.
        gain: e-/DN applied to a rate or ramp product, None for slope files.
    """

    path: Path
    sha256: str
    record: ExposureRecord
    target_ra: float | None
    target_dec: float | None
    kind: str
    name: str
    gain: float | None


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def check_gain(gain: float | None) -> None:
    """Raise IngestError unless `gain` is a positive, finite number of e-/DN or None (no
    gain given: files in DN are then refused, naming the file)."""
    if gain is not None and not (math.isfinite(gain) and gain > 0):
        raise IngestError(f"gain: expected e-/DN > 0, got {gain}")


def check_exposure(
    path: str | os.PathLike,
    sha256: str,
    gain: float | None = NIRISS_GAIN,
    ramps: RampOptions = DEFAULT_RAMPS,
) -> CheckedExposure:
    """Read `path` (whose bytes hash to `sha256`; a rate or ramp product converted with
    `gain` e-/DN, a ramp made into slopes as `ramps` says) and check every value a fit
    relies on.

    Raises:
        IngestError: unreadable, truncated or non-FITS file; missing extension or keyword;
            mismatched shapes; unknown filter; a rate product the model cannot describe
            (units, exposure type, frames per group, subarray, parity) or a ramp product
            (`scaling.data.ramps.read_ramp`); non-finite slopes or non-positive variance
            on a kept slope; every pixel masked;
            out-of-range header values.
    """
    path = Path(path)
    product = _read(path, gain, ramps)
    record, names = product.record, product.names
    _check_header(record, names, path)
    _check_arrays(record, names, path)
    coordinates = _coordinates(path)
    return CheckedExposure(
        path, sha256, record, **coordinates, kind=product.kind, name=product.name, gain=product.gain
    )


def _read(path: Path, gain: float | None, ramps: RampOptions) -> Product:
    """`read_product`, with truncation (a warning in astropy) and any failure as errors."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            read = read_product(path, gain, ramps)
            failure = None
        except Exception as err:  # a malformed file can fail anywhere inside astropy
            read, failure = None, err
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
    return read


def _check_header(r: ExposureRecord, names: dict[str, str], path: Path) -> None:
    """Filter known; counts, times and angles in range. `names`: field → keyword read."""
    if r.filter not in FILTERS:
        raise IngestError(
            f"{path}: FILTER: unknown filter {r.filter!r}; expected one of {', '.join(FILTERS)}"
        )
    if not r.target:
        raise IngestError(f"{path}: {names['target']}: empty target name")
    minimums = {
        "ngroups": 2,
        "nints": 1,
        "program": 0,
        "observation": 0,
        "visit": 0,
        "exposure": 0,
    }
    for field, minimum in minimums.items():
        value = getattr(r, field)
        if value < minimum:
            raise IngestError(
                f"{path}: {names[field]}: expected an integer >= {minimum}, got {value}"
            )
    for field in ("expmid", "roll", "dither_x", "dither_y"):
        value = getattr(r, field)
        if not math.isfinite(value):
            raise IngestError(f"{path}: {names[field]}: expected a finite number, got {value}")
    if not (math.isfinite(r.group_time) and r.group_time > 0):
        raise IngestError(
            f"{path}: {names['group_time']}: expected seconds > 0, got {r.group_time}"
        )


def _check_arrays(r: ExposureRecord, names: dict[str, str], path: Path) -> None:
    """Some pixel unmasked; finite slopes, positive finite variance on kept slopes.
    `names`: array → extension read."""
    if r.badpix.all():
        raise IngestError(
            f"{path}: {names['badpix']}: every pixel is masked ({r.badpix.size} pixels)"
        )
    good = r.kept()
    _first_bad(path, names["slope"], r.slope, good & ~np.isfinite(r.slope), "NaN or inf")
    positive = np.isfinite(r.variance) & (r.variance > 0)
    _first_bad(path, names["variance"], r.variance, good & ~positive, "<= 0 or not finite")


def _first_bad(path: Path, name: str, data: np.ndarray, bad: np.ndarray, what: str) -> None:
    """Raise naming how many unmasked values of `data` are `bad` and where the first is."""
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise IngestError(
            f"{path}: {name}: {int(bad.sum())} unmasked values are {what}, first at "
            f"(group, y, x) = {where}: {data[where]}"
        )


def _coordinates(path: Path) -> dict[str, float | None]:
    """TARG_RA and TARG_DEC (degrees) of the primary header, None where absent or marked
    as placeholders (RADECSRC = 'PLACEHOLDER', as simulated products and exports write)."""
    header = fits.getheader(path, 0)
    if header.get("RADECSRC") == "PLACEHOLDER":
        return dict.fromkeys(_COORDINATES.values())
    values = {}
    for key, field in _COORDINATES.items():
        value = header.get(key)
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if value is not None and not (number and math.isfinite(value)):
            raise IngestError(f"{path}: {key}: expected degrees, got {value!r}")
        values[field] = None if value is None else float(value)
    return values
