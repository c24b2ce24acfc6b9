"""Small synthetic exposure files for the store, ingest and results tests (8×8 pixels)."""

import dataclasses
import hashlib
from pathlib import Path

import numpy as np

from scaling.config import load_config
from scaling.fitsio import ExposureRecord, write_exposure
from scaling.ingest import ingest
from scaling.simulate import simulate

NPIX = 8
T0 = 60000.0
"""Mid-time of the first epoch, MJD."""


def make_record(observation: int, exposure: int, expmid: float, **changes) -> ExposureRecord:
    """A valid record with random data seeded by its ids; `changes` override fields."""
    ngroups = changes.pop("ngroups", 4)
    rng = np.random.default_rng([observation, exposure])
    shape = (ngroups - 1, NPIX, NPIX)
    record = ExposureRecord(
        filter="F430M",
        pupil="NRM",
        target="IO",
        is_psf=False,
        expmid=expmid,
        roll=10.0 * exposure,
        nints=2,
        ngroups=ngroups,
        group_time=0.07544,
        subarray="SUB80",
        program=1373,
        observation=observation,
        visit=1,
        exposure=exposure,
        dither_x=0.0,
        dither_y=0.0,
        slope=rng.normal(100.0, 10.0, shape),
        variance=rng.uniform(50.0, 150.0, shape),
        badpix=rng.random((NPIX, NPIX)) < 0.1,
    )
    return dataclasses.replace(record, **changes)


def write_campaign(
    folder: Path, nepochs: int = 2, per_epoch: int = 2, ncal: int = 1, hours_apart: float = 10.0
) -> list[Path]:
    """`nepochs` Io epochs of `per_epoch` exposures (10 min apart) and `ncal` calibrator
    exposures of star CAL1; returns the files (named by observation and exposure)."""
    files = []
    for i in range(nepochs):
        for k in range(per_epoch):
            t = T0 + i * hours_apart / 24 + k * 10 / 1440
            files.append(write(folder, make_record(i + 1, k + 1, t)))
    for c in range(ncal):
        t = T0 + (c + 0.5) * hours_apart / 24
        record = make_record(90, c + 1, t, target="CAL1", is_psf=True, ngroups=3)
        files.append(write(folder, record))
    return files


def write(folder: Path, record: ExposureRecord, name: str | None = None) -> Path:
    """Write `record` to folder/NAME (default o<obs>_e<exp>.fits); returns the path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name or f"o{record.observation:03d}_e{record.exposure:03d}.fits")
    write_exposure(path, record)
    return path


def tree_digest(path: Path) -> dict[str, str]:
    """Relative path → SHA-256 of every file under `path` (a snapshot to compare)."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def records_equal(a: ExposureRecord, b: ExposureRecord) -> bool:
    """Every field equal, arrays bit for bit (values, shape and dtype)."""
    for field in dataclasses.fields(ExposureRecord):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if isinstance(x, np.ndarray):
            if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
                return False
        elif type(x) is not type(y) or x != y:
            return False
    return True


def simulated_campaign(config: str, root: Path) -> Path:
    """Simulate the campaign `config` into root/sim, ingest it into root/campaign.zarr;
    returns the simulation folder (which holds the truth)."""
    files = simulate(load_config(config), root / "sim", progress=False)
    ingest([str(f) for f in files], root / "campaign.zarr", progress=False)
    return root / "sim"
