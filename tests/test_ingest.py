"""FITS → campaign store: validation, idempotence, appends, epochs, atomicity, the CLI."""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import numpy as np
import pytest
import zarr
from astropy.io import fits

from scaling.cli import main
from scaling.data._zarr import StoreError
from scaling.data.fitsio import META_FIELDS, ExposureRecord, read_exposure
from scaling.data.ingest import (
    ingest,
    load_epoch_table,
    summary_table,
)
from scaling.data.store import SCHEMA_VERSION, Campaign, previous_store
from scaling.data.validate import IngestError, file_sha256
from tests.campaigns import (
    make_record,
    records_equal,
    tree_digest,
    write,
    write_campaign,
)
from tests.test_fitsio import to_jwst

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def campaign(tmp_path):
    """(files, store path) of 2 epochs × 2 exposures + 1 calibrator, already ingested."""
    files = write_campaign(tmp_path / "fits")
    store = tmp_path / "c.zarr"
    ingest(files, store, progress=False)
    return files, store


def _cli(argv: list[str]) -> int:
    return main(argv)


def test_round_trip_is_bit_identical(tmp_path):
    files = write_campaign(tmp_path / "fits", nepochs=2, per_epoch=2, ncal=2)
    result = ingest([str(tmp_path / "fits" / "*.fits")], tmp_path / "c.zarr", progress=False)
    assert len(result.added) == len(files) and result.skipped == ()
    campaign = Campaign.open(tmp_path / "c.zarr")
    records = campaign.read(campaign.names)
    by_file = {campaign.info(n).source_file: r for n, r in records.items()}
    for path in files:
        assert records_equal(by_file[path.name], read_exposure(path))
    for name in campaign.names:
        group = zarr.open_group(tmp_path / "c.zarr" / "exposures" / name, mode="r")
        assert [group[a].dtype for a in ("slope", "variance", "badpix")] == [
            np.float64,
            np.float64,
            np.bool_,
        ]
        for a in ("slope", "variance", "badpix"):
            assert group[a].metadata.zarr_format == 3 and group[a].chunks == group[a].shape
            assert [type(c).__name__ for c in group[a].compressors] == ["ZstdCodec"]
        path = tmp_path / "fits" / group.attrs["source_file"]
        record = by_file[path.name]
        assert {f: group.attrs[f] for f in META_FIELDS} == {
            f: getattr(record, f) for f in META_FIELDS
        }
        assert group.attrs["sha256"] == file_sha256(path) == campaign.info(name).sha256
        assert group.attrs["role"] == ("calibrator" if record.is_psf else "science")


def test_reingest_is_a_no_op_and_new_files_append(tmp_path):
    files = write_campaign(tmp_path / "fits")
    store = tmp_path / "c.zarr"
    first = ingest(files[:2], store, progress=False)
    before = tree_digest(store)
    again = ingest(files[:2], store, progress=False)
    assert again.added == () and again.skipped == tuple(files[:2])
    assert tree_digest(store) == before
    more = ingest(files, store, progress=False)
    assert len(more.added) == len(files) - 2
    assert set(Campaign.open(store).names) == set(first.added) | set(more.added)
    assert not list(tmp_path.glob(".c.zarr.*"))


def test_epochs_by_time_window(tmp_path):
    files = write_campaign(tmp_path / "fits", nepochs=3, per_epoch=2, ncal=1, hours_apart=5)
    narrow = ingest(files, tmp_path / "a.zarr", window_hours=1, progress=False).campaign
    assert list(narrow.epochs) == ["IO_001", "IO_002", "IO_003"]
    assert all(len(v) == 2 for v in narrow.epochs.values())
    assert narrow.epoch_rule == {"window_hours": 1}
    assert [e.epoch for e in narrow.exposures if e.role == "calibrator"] == [None]
    wide = ingest(files, tmp_path / "b.zarr", window_hours=6, progress=False).campaign
    assert [len(v) for v in wide.epochs.values()] == [4, 2]


def test_epochs_from_a_table(tmp_path):
    files = write_campaign(tmp_path / "fits", nepochs=2, per_epoch=2, ncal=1)
    probe = ingest(files, tmp_path / "probe.zarr", progress=False).campaign
    science = [e.name for e in probe.exposures if e.role == "science"]
    table_file = tmp_path / "epochs.toml"
    table_file.write_text(f"[epochs]\nearly = {json.dumps(science[:3])}\nlate = {science[3:]!r}\n")
    table = load_epoch_table(table_file)
    store = tmp_path / "c.zarr"
    campaign = ingest(files[:4], store, epoch_table=table, progress=False).campaign
    assert campaign.epochs == {"early": tuple(science[:3]), "late": (science[3],)}
    assert campaign.epoch_rule == {"table": True}
    extra = write(tmp_path / "fits", make_record(7, 1, 60003.0))
    with pytest.raises(IngestError, match=r"science exposures in no epoch: jw01373007001"):
        ingest([extra], store, progress=False)
    calibrator = next(e.name for e in probe.exposures if e.role == "calibrator")
    with pytest.raises(IngestError, match=rf"late: {calibrator} is a calibrator"):
        ingest(files, tmp_path / "d.zarr", epoch_table={**table, "late": [calibrator]})
    with pytest.raises(IngestError, match="is in both"):
        ingest(files, tmp_path / "e.zarr", epoch_table={**table, "late": science}, progress=False)


def test_summary_table_counts_per_target_filter_epoch(campaign):
    _, store = campaign
    text = summary_table(Campaign.open(store), added=Campaign.open(store).names[:1])
    lines = text.splitlines()
    assert lines[0].split() == [
        "target",
        "role",
        "epoch",
        "filter",
        "exposures",
        "new",
        "mid-time",
        "(MJD)",
    ]
    assert [line.split()[:5] for line in lines[1:]] == [
        ["CAL1", "calibrator", "-", "F430M", "1"],
        ["IO", "science", "IO_001", "F430M", "2"],
        ["IO", "science", "IO_002", "F430M", "2"],
    ]


def with_nonfinite_masked(record: ExposureRecord) -> ExposureRecord:
    """`record` with pixels (0, 0) and (7, 7) masked and holding what JWST products put
    on DO_NOT_USE pixels: NaN and ±inf slopes, NaN, zero and negative variance."""
    badpix, slope, variance = record.badpix.copy(), record.slope.copy(), record.variance.copy()
    badpix[0, 0] = badpix[7, 7] = True
    slope[:, 0, 0], variance[:, 0, 0] = np.nan, np.nan
    slope[:, 7, 7], variance[:, 7, 7] = np.inf, 0.0
    slope[0, 7, 7], variance[0, 7, 7] = -np.inf, -1.0
    return dataclasses.replace(record, badpix=badpix, slope=slope, variance=variance)


@pytest.mark.parametrize("jwst", [False, True], ids=["our names", "JWST names"])
def test_nonfinite_and_nonpositive_values_on_masked_pixels_are_kept(tmp_path, jwst):
    path = write(tmp_path / "fits", with_nonfinite_masked(make_record(1, 1, 60000.0)))
    if jwst:
        to_jwst(path)
    campaign = ingest([path], tmp_path / "c.zarr", progress=False).campaign
    (stored,) = campaign.read(campaign.names).values()
    assert records_equal(stored, read_exposure(path))  # bit for bit, NaN included
    assert np.isnan(stored.slope[:, 0, 0]).all() and np.isnan(stored.variance[:, 0, 0]).all()
    assert np.isinf(stored.slope[:, 7, 7]).all() and stored.variance[0, 7, 7] == -1.0


# --- bad input: each names the file and the field, and leaves the store as it was ----------


def _truncated(folder: Path) -> Path:
    path = write(folder, make_record(5, 1, 60001.0), "truncated.fits")
    path.write_bytes(path.read_bytes()[:-1000])
    return path


def _not_fits(folder: Path) -> Path:
    path = folder / "notes.fits"
    path.write_text("SIMPLE? no, this is a text file\n")
    return path


def _without(folder: Path, *, extension: str | None = None, keyword: str | None = None) -> Path:
    path = write(folder, make_record(5, 1, 60001.0), "stripped.fits")
    with fits.open(path) as hdul:
        hdus = fits.HDUList([h.copy() for h in hdul if h.name != extension])
    if keyword:
        del hdus[0].header[keyword]
    hdus.writeto(path, overwrite=True)
    return path


def _drop_keyword(path: Path, keyword: str) -> Path:
    with fits.open(path, mode="update") as hdul:
        del hdul[0].header[keyword]
    return path


def _bad(name: str, **changes):
    def make(folder: Path) -> Path:
        good = make_record(5, 1, 60001.0)
        changed = {k: v(good) if callable(v) else v for k, v in changes.items()}
        return write(folder, dataclasses.replace(good, **changed), f"{name}.fits")

    return make


def _set(array_name: str, value: float, masked: bool = False):
    def change(record):
        array = getattr(record, array_name).copy()
        y, x = np.argwhere(record.badpix if masked else ~record.badpix)[0]
        array[1, y, x] = value
        return array

    return change


def _duplicate(folder: Path) -> Path:
    record = make_record(1, 1, 60000.0)
    return write(folder, dataclasses.replace(record, slope=record.slope * 2), "again.fits")


BAD_INPUTS = {
    "truncated": (_truncated, "truncated.fits: file is truncated"),
    "not FITS": (_not_fits, "notes.fits: not a readable FITS file"),
    "missing extension": (
        lambda f: _without(f, extension="VARIANCE"),
        "stripped.fits: missing extension VARIANCE",
    ),
    "missing keyword": (
        lambda f: _without(f, keyword="NGROUPS"),
        "stripped.fits: missing header keyword NGROUPS",
    ),
    "mismatched shapes": (
        _bad("shapes", variance=lambda r: r.variance[:, :, :-1]),
        r"shapes.fits: extension VARIANCE: expected shape \(3, 8, 8\), got \(3, 8, 7\)",
    ),
    "NaN slope": (
        _bad("nan", slope=_set("slope", np.nan)),
        "nan.fits: SLOPE: 1 unmasked values are NaN",
    ),
    "inf slope": (
        _bad("inf", slope=_set("slope", -np.inf)),
        "inf.fits: SLOPE: 1 unmasked values are NaN or inf",
    ),
    "NaN in SCI (JWST names)": (
        lambda f: to_jwst(_bad("sci", slope=_set("slope", np.nan))(f)),
        "sci.fits: SCI: 1 unmasked values are NaN",
    ),
    "zero variance": (
        _bad("zero", variance=_set("variance", 0.0)),
        "zero.fits: VARIANCE: 1 unmasked values are <= 0",
    ),
    "negative variance": (
        _bad("negative", variance=_set("variance", -1.0)),
        "negative.fits: VARIANCE: 1 unmasked values are <= 0",
    ),
    "negative ERR (JWST names)": (
        lambda f: to_jwst(_bad("err", variance=_set("variance", -1.0))(f)),
        "err.fits: ERR: 1 unmasked values are <= 0",
    ),
    "all pixels masked": (
        _bad("masked", badpix=lambda r: np.ones_like(r.badpix)),
        "masked.fits: BADPIX: every pixel is masked",
    ),
    "all pixels DO_NOT_USE (JWST names)": (
        lambda f: to_jwst(_bad("dq", badpix=lambda r: np.ones_like(r.badpix))(f)),
        "dq.fits: DQ: every pixel is masked",
    ),
    "missing keyword and its aliases (JWST names)": (
        lambda f: _drop_keyword(to_jwst(_bad("jw")(f)), "TARGNAME"),
        r"jw.fits: missing header keyword TARGPROP \(or TARGNAME\)",
    ),
    "unknown filter": (
        _bad("filter", filter="F999M"),
        "filter.fits: FILTER: unknown filter 'F999M'",
    ),
    "duplicate exposure": (
        _duplicate,
        "again.fits: PROGRAM/OBSERVTN/VISIT/EXPOSURE: exposure jw01373001001_01101_00001_nis "
        "is already in .* with different content",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_names_file_and_field_and_leaves_store_untouched(
    case, campaign, tmp_path, capsys
):
    files, store = campaign
    make, message = BAD_INPUTS[case]
    new = write(tmp_path / "new", make_record(6, 1, 60002.0))
    bad = make(tmp_path / "new")
    before = tree_digest(store)
    with pytest.raises(IngestError, match=message):
        ingest([*files, new, bad], store, progress=False)
    assert tree_digest(store) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.zarr", "fits", "new"]
    argv = ["ingest", *map(str, [*files, new, bad]), "--out", str(store)]
    _assert_cli_refuses(argv, message, capsys)
    assert tree_digest(store) == before


def _assert_cli_refuses(argv: list[str], message: str, capsys) -> None:
    """`scaling ARGV --quiet` exits with 2 and prints one error line matching `message`."""
    assert _cli([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scaling ingest: error: ") and err.count("\n") == 1
    assert re.search(message, err), err


def test_bad_paths_and_stores_on_the_command_line_exit_nonzero(campaign, tmp_path, capsys):
    files, store = campaign
    before = tree_digest(store)
    (tmp_path / "file.zarr").write_text("x")
    (tmp_path / "epochs.toml").write_text("[epochs\n")
    names = list(map(str, files))
    table = ["--epoch-table", str(tmp_path / "epochs.toml")]
    cases = {
        "none-.*: the pattern matches no file": [str(tmp_path / "none-*.fits")],
        "epochs.toml: cannot read the epoch table": [*names, *table],
        f"schema_version: this code reads version {SCHEMA_VERSION}": names,
    }
    for message, inputs in cases.items():
        if "schema" in message:
            zarr.open_group(store, mode="r+", use_consolidated=True).attrs["schema_version"] = 99
            before = tree_digest(store)
        _assert_cli_refuses(["ingest", *inputs, "--out", str(store)], message, capsys)
        assert tree_digest(store) == before
    out = str(tmp_path / "file.zarr")
    _assert_cli_refuses(["ingest", *names, "--out", out], "the output path is a file", capsys)
    assert (tmp_path / "file.zarr").read_text() == "x"


def test_command_line_ingest_with_an_epoch_window(tmp_path, capsys):
    files = write_campaign(tmp_path / "fits")
    out = str(tmp_path / "d.zarr")
    assert _cli(["ingest", *map(str, files), "--out", out, "--epoch-window-hours", "100"]) == 0
    captured = capsys.readouterr()
    assert "5 exposures added, 0 already present; 5 exposures in 1 epochs" in captured.out
    assert re.search(r"ingest: 100%.* 5/5", captured.err)  # the progress bar
    assert Campaign.open(out).epoch_rule == {"window_hours": 100.0}


def test_empty_glob_and_missing_file(tmp_path):
    with pytest.raises(IngestError, match=r"nothing-\*\.fits: the pattern matches no file"):
        ingest([str(tmp_path / "nothing-*.fits")], tmp_path / "c.zarr")
    with pytest.raises(IngestError, match=r"absent\.fits: no such file"):
        ingest([tmp_path / "absent.fits"], tmp_path / "c.zarr")
    assert list(tmp_path.iterdir()) == []


def test_output_path_that_is_a_file(tmp_path):
    files = write_campaign(tmp_path / "fits", nepochs=1, ncal=0)
    out = tmp_path / "c.zarr"
    out.write_text("not a store")
    with pytest.raises(IngestError, match=r"c\.zarr: the output path is a file"):
        ingest(files, out, progress=False)
    assert out.read_text() == "not a store"


def test_store_of_another_schema_version_is_refused(campaign, tmp_path):
    _, store = campaign
    root = zarr.open_group(store, mode="r+", use_consolidated=True)
    root.attrs["schema_version"] = 99
    before = tree_digest(store)
    new = write(tmp_path, make_record(6, 1, 60002.0))
    message = rf"schema_version: this code reads version {SCHEMA_VERSION}, .* with 99"
    with pytest.raises(StoreError, match=message):
        ingest([new], store, progress=False)
    with pytest.raises(StoreError, match="schema_version"):
        Campaign.open(store)
    assert tree_digest(store) == before


def test_failed_ingest_into_an_fsspec_url_leaves_no_trace(tmp_path):
    files = write_campaign(tmp_path / "fits")
    url = "memory://failed-ingest/c.zarr"
    ingest(files[:3], url, progress=False)
    fs = fsspec.filesystem("memory")
    before = {p: fs.cat(p) for p in fs.find("/failed-ingest")}
    bad = _bad("nan", slope=_set("slope", np.nan))(tmp_path)
    with pytest.raises(IngestError, match=r"nan\.fits: SLOPE"):
        ingest([*files, bad], url, progress=False)  # files[3:] are written, then removed
    assert {p: fs.cat(p) for p in fs.find("/failed-ingest")} == before
    assert len(Campaign.open(url).names) == 3


# --- killed mid-way: the old store or the complete new one -----------------------------

_SLOW_INGEST = """
import sys, time
import scaling.data.ingest as ingest_module

marker, out, *files = sys.argv[1:]
write = ingest_module._write_exposure
written = []

def slow_write(store, name, checked):
    write(store, name, checked)
    written.append(name)
    if len(written) == 2:
        open(marker, "w").close()
        time.sleep(120)

ingest_module._write_exposure = slow_write
ingest_module.ingest(files, out, progress=False)
"""


def _kill_midway(out: str, files: list[Path], marker: Path) -> None:
    """Run an ingest in a subprocess and SIGKILL it after its second exposure."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    args = [sys.executable, "-c", _SLOW_INGEST, str(marker), out, *map(str, files)]
    proc = subprocess.Popen(args, env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the ingest never reached its second exposure"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()


@pytest.mark.parametrize("url", [False, True], ids=["local path", "file:// url"])
def test_killed_ingest_leaves_old_store_then_completes(tmp_path, url):
    files = write_campaign(tmp_path / "fits", nepochs=3, per_epoch=2, ncal=1)
    path = tmp_path / "c.zarr"
    out = f"file://{path}" if url else str(path)
    old = ingest(files[:2], out, progress=False).campaign.names
    before = tree_digest(path)
    _kill_midway(out, files, tmp_path / "marker")
    survivor = Campaign.open(out)
    assert survivor.names == old
    assert all(r.slope.shape == (3, 8, 8) for r in survivor.read(old).values())
    if not url:
        assert tree_digest(path) == before
    done = ingest(files, out, progress=False)
    assert len(done.added) == len(files) - 2
    assert len(Campaign.open(out).names) == len(files)
    assert not list(tmp_path.glob(".c.zarr.*"))
    assert sorted(p.name for p in (path / "exposures").iterdir()) == sorted(
        ["zarr.json", *Campaign.open(out).names]
    )


def test_swap_cut_between_renames_is_repaired(campaign):
    files, store = campaign
    names = Campaign.open(store).names
    store.rename(previous_store(store))  # as if killed between the two renames
    assert Campaign.open(store).names == names
    assert ingest(files, store, progress=False).added == ()
    assert store.is_dir() and not previous_store(store).exists()


# --- the simulator's campaign ------------------------------------------------------------


@pytest.mark.slow
def test_simulated_campaign_round_trips_and_epochs_match_truth(tmp_path):
    from scaling.config import load_config
    from scaling.data.truthfiles import load_truth
    from scaling.simulate import simulate

    folder = tmp_path / "sim"
    files = simulate(load_config(REPO / "configs" / "io_test.toml"), folder, progress=False)
    campaign = ingest(files, tmp_path / "c.zarr", progress=False).campaign
    records = campaign.read(campaign.names)
    assert set(records) == {f.name.removesuffix("_calslope.fits") for f in files}
    for name, record in records.items():
        assert records_equal(record, read_exposure(folder / campaign.info(name).source_file))
    truth, _ = load_truth(folder)
    true_epochs: dict[str, set[str]] = {}
    for name, epoch in truth["exposure_epoch"].items():
        if epoch is not None:
            true_epochs.setdefault(epoch, set()).add(name)
    assert sorted(map(sorted, true_epochs.values())) == sorted(
        map(sorted, campaign.epochs.values())
    )
    roles = {n: e["role"] for n, e in truth["exposures"].items()}
    assert {e.name: e.role for e in campaign.exposures} == roles
