"""`scaling inspect`: one line per exposure of slope files, JWST rate products and stores."""

import numpy as np
import pytest
from astropy.io import fits

from scaling.cli import main
from scaling.data.ingest import ingest
from scaling.data.inspect import COLUMNS, inspect_rows, saturated_pixels
from scaling.data.jwst import UNUSABLE_DQ_FLAGS, read_rate_product
from scaling.data.store import Campaign
from tests.campaigns import T0, make_record, write, write_campaign, write_rate_file
from tests.conftest import DATA
from tests.test_fitsio import to_jwst

SATURATED = UNUSABLE_DQ_FLAGS["SATURATED"]


def cells(rows: list) -> list[dict[str, str]]:
    return [dict(zip(COLUMNS, row, strict=True)) for row in rows]


def test_real_files(capsys):
    files = sorted(DATA.glob("*_cal.fits"))
    if not files:
        pytest.skip(f"real JWST data not present at {DATA}")
    assert main(["inspect", str(DATA / "*_cal.fits")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("  ")[0] == "file" and "saturated" in lines[0] and len(lines) == 21
    for path, row in zip(files, cells(inspect_rows(files)), strict=True):
        header = {**fits.getheader(path, 0), **fits.getheader(path, "SCI")}
        product = read_rate_product(path)
        dq = fits.getdata(path, "DQ").astype(np.int64)
        assert row["file"] == path.name and row["kind"] == "rate"
        assert (row["target"], row["filter"]) == (header["TARGPROP"], header["FILTER"])
        assert row["ints×groups"] == f"{header['NINTS']}×{header['NGROUPS']}"
        assert float(row["mid-time (MJD)"]) == pytest.approx(header["EXPMID"], abs=1e-5)
        assert float(row["roll (deg)"]) == pytest.approx(-header["PA_APER"], abs=1e-3)
        assert float(row["masked"]) == pytest.approx(product.bad.mean(), abs=1e-4)
        peak = product.rate.max() * header["NGROUPS"] * header["TGROUP"]
        assert float(row["peak e-"]) == pytest.approx(peak, abs=0.5)
        assert row["saturated"] == str(int(((dq & SATURATED) != 0).sum()))


def test_store_and_files_give_the_same_lines(tmp_path, capsys):
    slopes = write_campaign(tmp_path / "fits", nepochs=1, per_epoch=2, ncal=0)
    rate = write_rate_file(tmp_path / "rates", 4, 1, T0 + 0.5)
    store = tmp_path / "c.zarr"
    ingest([*slopes, rate], store, progress=False)
    from_files = inspect_rows([*slopes, rate])
    from_store = inspect_rows([store])
    assert [r[:-1] for r in from_store] == [r[:-1] for r in from_files]
    assert [r[-1] for r in from_store] == ["-"] * 3
    assert [r[-1] for r in from_files] == ["-", "-", "0"]  # BADPIX files have no DQ
    assert [r[1] for r in from_files] == ["slopes", "slopes", "rate"]
    record = Campaign.open(store).read(["jw01373001001_01101_00001_nis"])
    slope_row = cells(from_files)[0]
    (r,) = record.values()
    peak = np.max(np.where(r.badpix, -np.inf, r.slope.mean(axis=0))) * r.ngroups
    assert float(slope_row["peak e-"]) == pytest.approx(peak, abs=0.5)
    assert main(["inspect", str(store)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 4


def test_saturation_flags_are_counted(tmp_path):
    jwst_names = to_jwst(write(tmp_path, make_record(1, 1, T0)))
    assert saturated_pixels(jwst_names) == 0
    with fits.open(jwst_names, mode="update") as hdul:
        hdul["DQ"].data[1, 2] |= SATURATED
        hdul["DQ"].data[3, 4] |= SATURATED | 1
    assert saturated_pixels(jwst_names) == 2
    assert saturated_pixels(write(tmp_path, make_record(1, 2, T0))) is None


def test_bad_inputs_exit_with_one_line(tmp_path, capsys):
    bad = write_rate_file(tmp_path, 1, 1, T0)
    with fits.open(bad, mode="update") as hdul:
        hdul["SCI"].header["BUNIT"] = "MJy/sr"
    for inputs, message in (
        ([str(bad)], f"{bad}: BUNIT: "),
        ([str(tmp_path / "absent.fits")], "absent.fits: no such file"),
        ([str(tmp_path)], f"{tmp_path}: not a Zarr v3 ami-campaign store"),
    ):
        assert main(["inspect", *inputs]) == 2
        err = capsys.readouterr().err
        assert err.startswith("scaling inspect: error: ") and err.count("\n") == 1
        assert message in err, err
