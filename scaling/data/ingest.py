"""FITS exposures → a campaign store (`scaling.data.store`), checked, appended, atomic.

Each file is read with `scaling.data.products.read_product`: our slope files
(`scaling.data.fitsio`: keywords FILTER, PUPIL, TARGPROP, IS_PSF, EXPMID, ROLL_REF, NINTS,
NGROUPS, TGROUP, SUBARRAY, PROGRAM, OBSERVTN, VISIT, EXPOSURE, optional DITHX/DITHY,
TARG_RA/TARG_DEC; image extensions SLOPE, VARIANCE, BADPIX; or their JWST names, see there),
JWST rate products (`scaling.data.jwst`, converted to e-/s with the gain given) or JWST
`_uncal`/`_ramp` ramps (`scaling.data.ramps`: slopes with per-slope masks), told apart by
content; then checked by `scaling.data.validate`. A file whose SHA-256 is already
in the store is skipped, so ingesting again is a no-op and new files append.

Atomicity. For a local path the new store is built beside the old one
(`.NAME.ingest-*`, existing files hard-linked, never modified) and swapped in with two
renames; an ingest killed between them leaves the old store at `.NAME.previous`, which
`Campaign.open` reads and the next ingest puts back. For an fsspec URL or a Store object
(no renames there) new exposure groups are written in place but stay invisible until one
final write of the root document lists them (one PUT on object stores); groups left by
a killed ingest are deleted by the next one. Either way readers see the old store or the
complete new one. There is no lock: one ingest per store at a time.

Epochs: the science exposures of a target whose mid-times lie within `window_hours` of
the epoch's first exposure share an epoch named TARGET_001, TARGET_002, … in time
order; or an explicit table {epoch: [exposure names]} decides.
"""

import argparse
import glob
import os
import shutil
import tomllib
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zarr
from tqdm.auto import tqdm
from zarr.codecs import ZstdCodec
from zarr.core.sync import sync
from zarr.storage import LocalStore

from scaling.data._zarr import Location, as_store, consolidate, describe, local_path
from scaling.data.fitsio import META_FIELDS
from scaling.data.jwst import NIRISS_GAIN
from scaling.data.ramps import (
    DEFAULT_RAMPS,
    DEFAULT_SATURATION_DN,
    SATURATION_HANDLING,
    RampOptions,
)
from scaling.data.store import (
    ARRAYS,
    KIND,
    SCHEMA_VERSION,
    SLOPE_MASK_ARRAYS,
    Campaign,
    ExposureInfo,
    previous_store,
)
from scaling.data.validate import (
    CheckedExposure,
    IngestError,
    check_exposure,
    check_gain,
    file_sha256,
)

DEFAULT_WINDOW_HOURS = 1.0
"""Default epoch window: Io turns ~8.5° in an hour (rotation period 42.46 h)."""

_COMPRESSOR = ZstdCodec(level=3)


@dataclass(frozen=True)
class IngestResult:
    """What an ingest did.

    Attributes:
        campaign: the store as committed (or as it was, if nothing was new).
        added: names of the exposures this ingest added.
        skipped: files whose checksum was already in the store.
    """

    campaign: Campaign
    added: tuple[str, ...]
    skipped: tuple[Path, ...]


def ingest(
    inputs: Sequence[str | os.PathLike],
    out: Location,
    *,
    window_hours: float | None = None,
    epoch_table: Mapping[str, Sequence[str]] | None = None,
    progress: bool = True,
    gain: float | None = NIRISS_GAIN,
    ramps: RampOptions = DEFAULT_RAMPS,
) -> IngestResult:
    """Ingest files or glob patterns `inputs` into the campaign store `out`.

    Epochs come from `window_hours` or `epoch_table` (not both); with neither, a
    store's own rule is kept, and a new store uses `DEFAULT_WINDOW_HOURS`. `gain` (e-/DN)
    converts JWST rate and ramp products to electrons and is recorded with each (None: no
    gain, which such files refuse); `ramps` says how ramps become slopes (saturation
    level, groups kept; `scaling.data.ramps`).

    Raises:
        IngestError: a bad input (naming the file and field) or output path.
        StoreError: `out` is another kind of store or has another schema version.
        Either way the store is left exactly as it was.
    """
    if window_hours is not None and epoch_table is not None:
        raise IngestError("give an epoch window or an epoch table, not both")
    if window_hours is not None and not window_hours > 0:
        raise IngestError(f"epoch window: expected hours > 0, got {window_hours}")
    check_gain(gain)
    files = expand_inputs(inputs)
    existing = _existing(out)
    known = {e.sha256: e for e in existing.exposures} if existing else {}
    by_name = {e.name: e for e in known.values()}
    transaction = None
    added: list[ExposureInfo] = []
    skipped: list[Path] = []
    try:
        for path in tqdm(files, desc="ingest", unit="file", disable=not progress):
            sha = file_sha256(path)
            if sha in known:
                skipped.append(path)
                continue
            checked = check_exposure(path, sha, gain, ramps)
            info = _new_info(checked)
            if info.name in by_name:
                raise IngestError(_duplicate(path, info, by_name[info.name], describe(out)))
            transaction = transaction or _Transaction(out, existing is not None)
            transaction.write(info.name, checked)
            known[sha] = by_name[info.name] = info
            added.append(info)
        if transaction is None:
            return IngestResult(existing, (), tuple(skipped))
        everything = list(by_name.values())
        rule, epochs = _epochs(everything, window_hours, epoch_table, existing)
        transaction.commit(_root_attributes(everything, epochs, rule))
    except BaseException:
        if transaction is not None:
            transaction.abort()
        raise
    return IngestResult(Campaign.open(out), tuple(e.name for e in added), tuple(skipped))


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files named or matched by glob patterns, each once, in the order given (a
    pattern's matches sorted).

    Raises:
        IngestError: no inputs, a pattern matching nothing, or a missing file.
    """
    if not inputs:
        raise IngestError("no input files given")
    files: dict[Path, None] = {}
    for item in map(str, inputs):
        if glob.has_magic(item):
            matches = sorted(glob.glob(item))
            if not matches:
                raise IngestError(f"{item}: the pattern matches no file")
            files.update(dict.fromkeys(map(Path, matches)))
        elif not Path(item).is_file():
            raise IngestError(f"{item}: no such file")
        else:
            files[Path(item)] = None
    return list(files)


def window_epochs(exposures: Iterable[ExposureInfo], window_hours: float) -> dict[str, list[str]]:
    """Science exposures grouped per target: an epoch takes every exposure within
    `window_hours` of its first one; epochs are named TARGET_001, … in time order."""
    per_target: dict[str, list[ExposureInfo]] = {}
    for e in exposures:
        if e.role == "science":
            per_target.setdefault(e.target, []).append(e)
    epochs: dict[str, list[str]] = {}
    for target, members in sorted(per_target.items()):
        start, count = None, 0
        for e in sorted(members, key=lambda e: (e.expmid, e.name)):
            if start is None or (e.expmid - start) * 24 > window_hours:
                start, count = e.expmid, count + 1
                epochs[f"{target}_{count:03d}"] = []
            epochs[f"{target}_{count:03d}"].append(e.name)
    return epochs


def table_epochs(
    exposures: Iterable[ExposureInfo], table: Mapping[str, Sequence[str]]
) -> dict[str, list[str]]:
    """Epochs from an explicit table {epoch: [exposure names]}, checked against the
    exposures: every science exposure in exactly one epoch of one target, no calibrator.
    Names not (yet) in the store are ignored; epochs left empty are dropped.

    Raises:
        IngestError: naming the epoch or exposure at fault.
    """
    by_name = {e.name: e for e in exposures}
    epochs: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for epoch, names in table.items():
        present = [n for n in names if n in by_name]
        for n in present:
            if by_name[n].role != "science":
                raise IngestError(f"epoch table: {epoch}: {n} is a calibrator, not science")
            if n in owner:
                raise IngestError(f"epoch table: {n} is in both {owner[n]} and {epoch}")
            owner[n] = epoch
        targets = sorted({by_name[n].target for n in present})
        if len(targets) > 1:
            raise IngestError(f"epoch table: {epoch}: mixes targets {', '.join(targets)}")
        if present:
            epochs[epoch] = present
    missing = sorted(
        e.name for e in by_name.values() if e.role == "science" and e.name not in owner
    )
    if missing:
        raise IngestError(
            f"epoch table: science exposures in no epoch: {', '.join(missing)} "
            f"(files {', '.join(by_name[n].source_file for n in missing)})"
        )
    return epochs


def load_epoch_table(path: str | os.PathLike) -> dict[str, list[str]]:
    """The `[epochs]` table of a TOML file: epoch name = [exposure names].

    Raises:
        IngestError: unreadable TOML, other top-level keys, or values not lists of names.
    """
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise IngestError(f"{path}: cannot read the epoch table ({err})") from None
    extra = sorted(set(doc) - {"epochs"})
    if extra or not isinstance(doc.get("epochs"), dict):
        raise IngestError(f"{path}: expected only an [epochs] table, found keys {sorted(doc)}")
    for epoch, names in doc["epochs"].items():
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise IngestError(f"{path}: epochs.{epoch}: expected a list of exposure names")
    return doc["epochs"]


def summary_table(campaign: Campaign, added: Iterable[str] = ()) -> str:
    """Exposures per target, role, epoch and filter (with how many are new and their
    mid-time range, MJD) as aligned text."""
    added = set(added)
    rows: dict[tuple[str, str, str, str], list[ExposureInfo]] = {}
    for e in campaign.exposures:
        rows.setdefault((e.target, e.role, e.epoch or "-", e.filter), []).append(e)
    table = [("target", "role", "epoch", "filter", "exposures", "new", "mid-time (MJD)")]
    for key, members in sorted(rows.items()):
        times = [e.expmid for e in members]
        span = f"{min(times):.4f}" + (f"-{max(times):.4f}" if len(members) > 1 else "")
        new = sum(e.name in added for e in members)
        table.append((*key, str(len(members)), str(new), span))
    return aligned(table)


def aligned(rows: Sequence[Sequence[str]]) -> str:
    """Rows of text cells as left-aligned columns two spaces apart, one line per row."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def add_gain_option(parser: argparse.ArgumentParser) -> None:
    """`--gain E_PER_DN` (default NIRISS's; 'none': no gain, so files in DN are refused)
    and the ramp options `--saturation-dn DN`, `--max-groups N`, `--saturated HOW`
    (`RampOptions`) for
    commands that read JWST products."""
    parser.add_argument(
        "--gain",
        type=_gain,
        default=NIRISS_GAIN,
        metavar="E_PER_DN",
        help=f"detector gain for JWST rate and ramp products in DN (default NIRISS "
        f"{NIRISS_GAIN}; 'none' refuses them)",
    )
    parser.add_argument(
        "--saturation-dn",
        type=float,
        default=DEFAULT_SATURATION_DN,
        metavar="DN",
        help=f"raw DN from which an _uncal group counts as saturated (default "
        f"{DEFAULT_SATURATION_DN:.0f})",
    )
    parser.add_argument(
        "--max-groups",
        type=int,
        metavar="N",
        help="keep only the first N groups of each ramp (default all)",
    )
    parser.add_argument(
        "--saturated",
        choices=SATURATION_HANDLING,
        default="slopes",
        help="what a saturated group masks: its slope and later ones (default), the whole "
        "pixel, or every pixel's ramp from the first saturated group of the exposure",
    )


def _gain(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def ramp_options(args: argparse.Namespace) -> RampOptions:
    """The `RampOptions` of `--saturation-dn` and `--max-groups` (IngestError if invalid)."""
    try:
        return RampOptions(args.saturation_dn, args.max_groups, args.saturated)
    except ValueError as err:
        raise IngestError(str(err)) from None


def add_ingest_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `scaling ingest FILE_OR_GLOB... --out CAMPAIGN.zarr`."""
    summary = (
        "check FITS exposures (slope files, JWST rate and ramp products) and add them to a store"
    )
    p = subparsers.add_parser("ingest", help=summary, description=summary)
    p.add_argument("inputs", nargs="+", metavar="FILE_OR_GLOB", help="FITS files or patterns")
    p.add_argument("--out", required=True, metavar="CAMPAIGN.zarr", help="path or fsspec URL")
    add_gain_option(p)
    epochs = p.add_mutually_exclusive_group()
    epochs.add_argument(
        "--epoch-window-hours",
        type=float,
        metavar="H",
        help=f"epoch = exposures within H hours of its first (default {DEFAULT_WINDOW_HOURS})",
    )
    epochs.add_argument(
        "--epoch-table", metavar="TOML", help="explicit epochs: [epochs] name = [exposures]"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=ingest_command)


def ingest_command(args: argparse.Namespace) -> int:
    """Run `scaling ingest` and print the summary; bad input raises (`cli.main` reports it)."""
    table = load_epoch_table(args.epoch_table) if args.epoch_table else None
    result = ingest(
        args.inputs,
        args.out,
        window_hours=args.epoch_window_hours,
        epoch_table=table,
        progress=not args.quiet,
        gain=args.gain,
        ramps=ramp_options(args),
    )
    print(summary_table(result.campaign, result.added))
    print(
        f"{len(result.added)} exposures added, {len(result.skipped)} already present; "
        f"{len(result.campaign.exposures)} exposures in {len(result.campaign.epochs)} epochs "
        f"in {args.out}"
    )
    return 0


class _Transaction:
    """New exposure groups written aside; `commit` makes all of them visible at once."""

    def __init__(self, out: Location, exists: bool):
        self._path = local_path(out)
        self._exists = exists
        self._written: list[str] = []
        if self._path is not None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._aside = self._path.with_name(f".{self._path.name}.ingest-{uuid.uuid4().hex}")
            if exists:
                shutil.copytree(self._path, self._aside, copy_function=os.link)
            self.store = LocalStore(self._aside)
        else:
            self.store = as_store(out, read_only=False)
        if not exists:
            attributes = _root_attributes([], {}, {})
            zarr.open_group(self.store, mode="w", zarr_format=3, attributes=attributes)
            zarr.create_group(self.store, path="exposures", zarr_format=3)

    def write(self, name: str, checked: CheckedExposure) -> None:
        self._written.append(name)
        _write_exposure(self.store, name, checked)

    def commit(self, attributes: dict[str, Any]) -> None:
        """Consolidate, then list the new exposures in the root (one write); swap a
        local store into place."""
        consolidate(self.store)
        root = zarr.open_group(self.store, mode="r+", zarr_format=3, use_consolidated=True)
        root.attrs.update(attributes)
        if self._path is None:
            return
        if self._exists:
            previous = previous_store(self._path)
            os.rename(self._path, previous)
            os.rename(self._aside, self._path)
            shutil.rmtree(previous)
        else:
            os.rename(self._aside, self._path)

    def abort(self) -> None:
        """Remove everything this transaction wrote."""
        if self._path is not None:
            shutil.rmtree(self._aside, ignore_errors=True)
        elif not self._exists:
            sync(self.store.delete_dir(""))
        else:
            for name in self._written:
                sync(self.store.delete_dir(f"exposures/{name}"))


def _write_exposure(store: zarr.abc.store.Store, name: str, checked: CheckedExposure) -> None:
    """One exposure group: its metadata as attributes, each array as one Zstd chunk."""
    record = checked.record
    attributes = {f: getattr(record, f) for f in META_FIELDS}
    attributes |= {
        "role": "calibrator" if record.is_psf else "science",
        "source_file": checked.path.name,
        "sha256": checked.sha256,
        "target_ra": checked.target_ra,
        "target_dec": checked.target_dec,
        "kind": checked.kind,
        "gain": checked.gain,
    }
    group = zarr.create_group(store, path=f"exposures/{name}", zarr_format=3, attributes=attributes)
    masks = SLOPE_MASK_ARRAYS if record.slope_mask is not None else ()
    for array in (*ARRAYS, *masks):
        data = getattr(record, array)
        group.create_array(array, data=data, chunks=data.shape, compressors=_COMPRESSOR)


def _new_info(checked: CheckedExposure) -> ExposureInfo:
    """The `ExposureInfo` a checked file will have in the store (epoch decided later)."""
    r = checked.record
    return ExposureInfo(
        name=checked.name,
        epoch=None,
        role="calibrator" if r.is_psf else "science",
        shape=r.slope.shape,
        source_file=checked.path.name,
        sha256=checked.sha256,
        target_ra=checked.target_ra,
        target_dec=checked.target_dec,
        kind=checked.kind,
        gain=checked.gain,
        **{f: getattr(r, f) for f in META_FIELDS},
    )


def _duplicate(path: Path, new: ExposureInfo, old: ExposureInfo, where: str) -> str:
    return (
        f"{path}: PROGRAM/OBSERVTN/VISIT/EXPOSURE: exposure {new.name} is already in {where} "
        f"(from {old.source_file}, sha256 {old.sha256[:12]}…) with different content "
        f"(sha256 {new.sha256[:12]}…)"
    )


def _existing(out: Location) -> Campaign | None:
    """The campaign already at `out`, None if there is none; repairs an interrupted swap
    and clears what an interrupted ingest left behind."""
    path = local_path(out)
    if path is not None:
        if path.is_file():
            raise IngestError(f"{path}: the output path is a file, not a campaign store")
        _recover(path)
        return Campaign.open(path) if path.exists() else None
    store = as_store(out, read_only=False)
    if not sync(store.exists("zarr.json")):
        return None
    campaign = Campaign.open(store)
    exposures = zarr.open_group(store, mode="r+", path="exposures", zarr_format=3)
    for orphan in set(exposures.group_keys()) - set(campaign.names):
        del exposures[orphan]
    return campaign


def _recover(path: Path) -> None:
    """Finish or undo a local swap cut short, and delete stale `.NAME.ingest-*` folders."""
    previous = previous_store(path)
    if previous.exists():
        if path.exists():
            shutil.rmtree(previous)
        else:
            os.rename(previous, path)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.ingest-*"):
        shutil.rmtree(stale)


def _epochs(
    exposures: list[ExposureInfo],
    window_hours: float | None,
    table: Mapping[str, Sequence[str]] | None,
    existing: Campaign | None,
) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """(rule, epochs): the rule given, else the store's own, else the default window."""
    if table is None and window_hours is None:
        rule = existing.epoch_rule if existing else {"window_hours": DEFAULT_WINDOW_HOURS}
        if "table" in rule:
            table = {k: list(v) for k, v in existing.epochs.items()}
        else:
            window_hours = rule["window_hours"]
    if table is not None:
        return {"table": True}, table_epochs(exposures, table)
    return {"window_hours": window_hours}, window_epochs(exposures, window_hours)


def _root_attributes(
    exposures: list[ExposureInfo], epochs: dict[str, list[str]], rule: dict[str, Any]
) -> dict[str, Any]:
    return {
        "kind": KIND,
        "schema_version": SCHEMA_VERSION,
        "exposures": sorted(e.name for e in exposures),
        "epochs": epochs,
        "epoch_rule": rule,
    }
