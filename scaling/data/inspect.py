"""`scaling inspect FILES… | STORE`: one line per exposure of exposure files (our slope files,
JWST rate products) or campaign stores, after a header line.

Columns: file, kind ('slopes' or 'rate'), target, filter, NINTS×NGROUPS, mid-time (MJD),
roll (the model's sky → detector angle, degrees), masked fraction of pixels, peak e- (the
brightest unmasked pixel's charge at the last read: its rate × NGROUPS × TGROUP, the rate
being a rate product's, or the mean slope over TGROUP) and saturated (pixels with the DQ
SATURATED bit in any plane; '-' without a DQ extension, and for a store). Files are read
and checked as `scaling ingest` does them, so a file inspect refuses, ingest refuses too.
"""

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from astropy.io import fits

from scaling.data._zarr import local_path
from scaling.data.fitsio import ExposureRecord
from scaling.data.ingest import add_gain_option, aligned, expand_inputs, ramp_options
from scaling.data.jwst import NIRISS_GAIN, UNUSABLE_DQ_FLAGS
from scaling.data.products import RATE
from scaling.data.ramps import DEFAULT_RAMPS, RampOptions
from scaling.data.store import Campaign
from scaling.data.validate import check_exposure, check_gain, file_sha256

COLUMNS = (
    "file",
    "kind",
    "target",
    "filter",
    "ints×groups",
    "mid-time (MJD)",
    "roll (deg)",
    "masked",
    "peak e-",
    "saturated",
)


def inspect_rows(
    inputs: Sequence[str | os.PathLike],
    gain: float | None = NIRISS_GAIN,
    ramps: RampOptions = DEFAULT_RAMPS,
) -> list:
    """One row of `COLUMNS` cells per exposure of `inputs`: files, glob patterns, or
    campaign stores (a folder or a URL); rate products are converted with `gain` e-/DN.

    Raises:
        IngestError: a missing or unreadable file, or one ingest would refuse.
        StoreError: a folder or URL that is no campaign store of this schema version.
    """
    check_gain(gain)
    rows = []
    for item in inputs:
        path = local_path(item)
        if path is None or path.is_dir():
            rows.extend(_store_rows(Campaign.open(item)))
        else:
            rows.extend(_file_row(f, gain, ramps) for f in expand_inputs([item]))
    return rows


def saturated_pixels(path: str | os.PathLike) -> int | None:
    """Pixels whose DQ SATURATED bit is set (in any integration), None without DQ."""
    with fits.open(path) as hdul:
        if "DQ" not in hdul:
            return None
        dq = np.asarray(hdul["DQ"].data).astype(np.int64)
    flagged = (dq & UNUSABLE_DQ_FLAGS["SATURATED"]) != 0
    return int((flagged.any(axis=0) if flagged.ndim == 3 else flagged).sum())


def _file_row(path: Path, gain: float | None, ramps: RampOptions) -> tuple[str, ...]:
    checked = check_exposure(path, file_sha256(path), gain, ramps)
    return _row(path.name, checked.kind, checked.record, saturated_pixels(path))


def _store_rows(campaign: Campaign) -> list[tuple[str, ...]]:
    rows = []
    for e in campaign.exposures:
        record = campaign.read([e.name])[e.name]
        rows.append(_row(e.source_file, e.kind, record, None))
    return rows


def _row(file: str, kind: str, r: ExposureRecord, saturated: int | None) -> tuple[str, ...]:
    """The `COLUMNS` cells of one exposure (see the module docstring)."""
    rate = r.slope[0] if kind == RATE else r.mean_slope() / r.group_time  # e-/s
    good = ~r.badpix
    peak = np.max(rate[good]) * r.ngroups * r.group_time if good.any() else np.nan
    return (
        file,
        kind,
        r.target,
        r.filter,
        f"{r.nints}×{r.ngroups}",
        f"{r.expmid:.5f}",
        f"{r.roll:.3f}",
        f"{r.badpix.mean():.4f}",
        f"{peak:.0f}",
        "-" if saturated is None else str(saturated),
    )


def add_inspect_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `scaling inspect FILE_OR_GLOB_OR_STORE...`."""
    summary = "one line per exposure of FITS files (slopes or JWST rate products) or stores"
    p = subparsers.add_parser("inspect", help=summary, description=summary)
    p.add_argument(
        "inputs", nargs="+", metavar="FILE_OR_STORE", help="FITS files, patterns or stores"
    )
    add_gain_option(p)
    p.set_defaults(handler=inspect_command)


def inspect_command(args: argparse.Namespace) -> int:
    """Run `scaling inspect` and print the table; bad input raises (`cli.main` reports it)."""
    rows = inspect_rows(args.inputs, args.gain, ramp_options(args))
    print(aligned([COLUMNS, *rows]))
    return 0
