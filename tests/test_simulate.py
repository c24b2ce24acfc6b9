"""The campaign simulator: determinism, truth, ramp truncation, bad pixels, atomic output;
and the Io scene it renders."""

import dataclasses
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import scaling.simulate as sim
from model import make_spec
from model.constants import IO_ROTATION_PERIOD_H
from model.scenes import IoScene, spot_geometry
from scaling.config import load_config, parse_config
from scaling.data.fitsio import exposure_name, read_exposure
from scaling.data.truthfiles import load_truth
from scaling.report.plots import plot_exposures, plot_flatfield, plot_true_images

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.fixture(scope="module")
def io_config():
    return load_config(CONFIGS / "io_test.toml")


@pytest.fixture(scope="module")
def campaign(io_config, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("io") / "campaign"
    sim.simulate(io_config, out, progress=False)
    return out


@pytest.fixture(scope="module")
def field_campaign(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("field") / "campaign"
    sim.simulate(load_config(CONFIGS / "flatfield_test.toml"), out, progress=False)
    return out


def fits_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*_calslope.fits"))


# --- the simulator ---------------------------------------------------------------------


def test_same_seed_gives_byte_identical_files(io_config, campaign, tmp_path):
    again = tmp_path / "again"
    sim.simulate(io_config, again, progress=False)
    names = sorted(p.name for p in campaign.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    for name in names:
        assert (campaign / name).read_bytes() == (again / name).read_bytes(), name


def test_another_seed_gives_other_data(io_config, campaign, tmp_path):
    other = tmp_path / "other"
    sim.simulate(dataclasses.replace(io_config, seed=io_config.seed + 1), other, progress=False)
    first = fits_files(campaign)[0].name
    a, b = read_exposure(campaign / first), read_exposure(other / first)
    assert not np.array_equal(a.slope, b.slope)


def test_truth_is_complete(io_config, campaign):
    truth, arrays = load_truth(campaign)
    files = fits_files(campaign)
    ep, cal = io_config.epochs, io_config.calibrators
    nsci, ncal = ep.count * ep.exposures, cal.count
    assert len(files) == nsci + ncal
    names = [f.name.removesuffix("_calslope.fits") for f in files]
    assert sorted(truth["exposure_epoch"]) == names == sorted(truth["exposures"])
    epochs = [e["name"] for e in truth["epochs"]]
    assert len(epochs) == ep.count
    mapped = list(truth["exposure_epoch"].values())
    assert mapped.count(None) == ncal
    assert sorted(set(mapped) - {None}) == epochs
    assert parse_config(truth["config"]) == io_config
    n, k, npix = io_config.io.image_npix, len(io_config.io.volcanoes), io_config.instrument.npix
    nexp = nsci + ncal
    shapes = {
        "images": (ep.count, n, n),
        "log_images": (ep.count, n, n),
        "spot_xy": (ep.count, k, 2),
        "spot_visibility": (ep.count, k),
        "aberrations": (1, 7),  # 7 holes × 1 term
        "flat": (npix, npix),
        "ipc": (3, 3),
        "bfe": (2,),
        "nonlinearity": (1,),
        "bad_pixels": (npix, npix),
        "positions": (nexp, 2),
        "log_fluxes": (nexp,),
        "spectral_slopes": (nexp,),
    }
    assert {name: a.shape for name, a in arrays.items()} == shapes
    np.testing.assert_allclose(arrays["images"].sum(axis=(1, 2)), 1.0, rtol=1e-12)
    for name, row in truth["exposures"].items():
        assert truth["exposure_epoch"][name] is None or row["role"] == "science"
        assert (campaign / row["file"]).exists()


def test_headers_agree_with_truth(campaign):
    truth, arrays = load_truth(campaign)
    for name, row in truth["exposures"].items():
        record = read_exposure(campaign / row["file"])
        assert record.is_psf == (row["role"] == "calibrator")
        assert record.target == row["target"] and record.filter == row["filter"]
        assert (record.expmid, record.roll, record.nints) == (
            row["expmid"],
            row["roll"],
            row["nints"],
        )
        assert record.ngroups == row["ngroups"] and record.slope.shape[0] == row["ngroups"] - 1
        assert record.pupil == "NRM" and record.subarray == "SUB24"
        assert exposure_name(record.program, record.observation, record.exposure) == name
        np.testing.assert_array_equal(record.badpix, arrays["bad_pixels"])


def test_bad_pixels_are_flagged_and_corrupted(io_config, campaign):
    record = read_exposure(fits_files(campaign)[0])
    bad = record.badpix
    assert bad[0].all() and bad[-1].all() and bad[:, 0].all() and bad[:, -1].all()
    inner = bad[1:-1, 1:-1]
    assert 0 < inner.sum() < 0.1 * inner.size  # ~2% configured
    hot = record.slope[:, bad]
    assert hot.min() >= sim.HOT_RANGE[0] and hot.max() <= sim.HOT_RANGE[1]
    assert np.abs(record.slope[:, ~bad]).max() < sim.HOT_RANGE[0]


def test_variance_is_estimated_from_the_data(io_config, campaign):
    record = read_exposure(fits_files(campaign)[0])
    expected = sim.pipeline_variance(record.slope, io_config.truth.read_noise, record.nints)
    np.testing.assert_array_equal(record.variance, expected)


def test_ramp_is_truncated_below_the_well_depth(io_config, campaign, tmp_path):
    truth, _ = load_truth(campaign)
    science = [r for r in truth["exposures"].values() if r["role"] == "science"]
    read = io_config.epochs.ngroups
    assert all(r["ngroups"] == read for r in science)  # no truncation at the default well
    # A well of 0.6 × the brightest science pixel's charge after `read` groups holds 2.4
    # groups' worth: science ramps keep 2 groups; fainter calibrators keep all of theirs.
    well = 0.6 * max(r["peak_charge"] for r in science)
    config = dataclasses.replace(
        io_config,
        truth=dataclasses.replace(io_config.truth, well_depth=well),
        calibrators=dataclasses.replace(io_config.calibrators, log_flux=3.0),
    )
    sim.simulate(config, tmp_path / "shallow", progress=False)
    truth, _ = load_truth(tmp_path / "shallow")
    for row in truth["exposures"].values():
        assert row["peak_charge"] < well
        record = read_exposure(tmp_path / "shallow" / row["file"])
        assert record.ngroups == row["ngroups"] == record.slope.shape[0] + 1
        full = 2 if row["role"] == "science" else config.calibrators.ngroups
        assert row["ngroups"] == full


def test_truncating_a_ramp_equals_reading_fewer_groups(io_config, campaign):
    """The simulator drops a ramp's later groups: that must equal a shorter ramp."""
    m = io_config.instrument.build(io_config.filters)
    _, arrays = load_truth(campaign)
    params = {
        **{k: jnp.asarray(arrays[k]) for k in ("flat", "ipc", "bfe", "nonlinearity")},
        "dark": jnp.asarray(1.0),
        "jitter": jnp.asarray(0.1),
        "read_noise": jnp.asarray(10.0),
        "aberrations": jnp.asarray(arrays["aberrations"][0]),
        "position": jnp.zeros(2),
        "log_flux": jnp.asarray(7.0),
        "spectral_slope": jnp.asarray(0.3),
        "log_image": jnp.asarray(arrays["log_images"][0]),
    }
    full, _ = sim._forward(m, params, make_spec("F430M", 6, roll=20.0))
    short, _ = sim._forward(m, params, make_spec("F430M", 3, roll=20.0))
    np.testing.assert_allclose(short, full[:2], rtol=1e-12)


@pytest.mark.parametrize(
    ("peak", "well", "expected"),
    [(1000.0, 5500.0, 5), (1000.0, 5000.0, 4), (1000.0, 1e9, 20), (1000.0, np.inf, 20)],
)
def test_truncated_ngroups(peak, well, expected):
    assert sim.truncated_ngroups(peak, 1.0, well, 20) == expected


def test_too_bright_for_two_groups_is_an_error():
    with pytest.raises(ValueError, match="lower the flux"):
        sim.truncated_ngroups(1e5, 1.0, 1.5e5, 20)


def test_failure_leaves_nothing_behind(io_config, tmp_path, monkeypatch):
    calls = []

    def failing_write(path, record):
        calls.append(path)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        Path(path).write_bytes(b"partial")

    monkeypatch.setattr(sim, "write_exposure", failing_write)
    with pytest.raises(RuntimeError, match="disk full"):
        sim.simulate(io_config, tmp_path / "out", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_replaces_a_previous_simulation_only(io_config, campaign, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        sim.simulate(io_config, out, progress=False)
    (out / "notes.txt").unlink()
    (out / "truth.json").write_text("{}")  # looks like a previous simulation
    sim.simulate(io_config, out, progress=False)
    assert json.loads((out / "truth.json").read_text())["kind"] == "io"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_flatfield_workload(field_campaign):
    truth, arrays = load_truth(field_campaign)
    config = parse_config(truth["config"])
    records = [read_exposure(f) for f in fits_files(field_campaign)]
    assert len(records) == len(config.dithers) == len(arrays["dithers"])
    for record, dither in zip(records, config.dithers, strict=True):
        assert record.pupil == "CLEAR" and record.is_psf
        assert (record.dither_x, record.dither_y) == dither
    assert arrays["positions"].shape == (config.stars.n_stars, 2)
    assert arrays["flat"].shape == (config.instrument.npix,) * 2
    assert set(truth["exposure_epoch"].values()) == {None}


def test_plots_are_written(campaign, field_campaign, tmp_path):
    for path in (
        plot_true_images(campaign, tmp_path / "images.png"),
        plot_exposures(campaign, tmp_path / "exposures.png"),
        plot_flatfield(field_campaign, tmp_path / "flat.png"),
    ):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- the Io scene ----------------------------------------------------------------------


def scene(**changes) -> IoScene:
    values = dict(
        latitudes=jnp.array([0.0, 10.0, -20.0]),
        longitudes=jnp.array([0.0, 90.0, 180.0]),
        brightness=jnp.array([0.1, 0.05, 0.05]),
        diameter=1.1,
        limb_darkening=0.3,
        reference_mjd=60000.0,
        reference_longitude=0.0,
    )
    return IoScene(**{**values, **changes})


def test_scene_image_is_unit_sum_and_odd_sided():
    image = scene().image(jnp.asarray(60000.0), 41, 0.03)
    assert image.shape == (41, 41)
    np.testing.assert_allclose(float(image.sum()), 1.0, rtol=1e-12)
    assert float(image.min()) >= 0.0
    with pytest.raises(ValueError, match="odd"):
        scene().image(jnp.asarray(60000.0), 40, 0.03)


def test_scene_rotates_with_io():
    s = scene()
    t0 = jnp.asarray(60000.0)
    quarter = t0 + IO_ROTATION_PERIOD_H / 24 / 4
    np.testing.assert_allclose(float(s.sub_longitude(quarter)), 90.0, atol=1e-6)
    full_turn = float(s.sub_longitude(t0 + IO_ROTATION_PERIOD_H / 24))
    np.testing.assert_allclose(np.cos(np.deg2rad(full_turn)), 1.0, atol=1e-12)
    xy0, vis0 = s.spots(t0)
    # At t0: spot 0 is at the sub-observer point, spot 1 on the east limb (x < 0), spot 2 hidden.
    np.testing.assert_allclose(np.asarray(xy0[0]), [0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(float(xy0[1, 0]), -0.55 * np.cos(np.deg2rad(10.0)), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(vis0), [1.0, 0.0, 0.0], atol=1e-12)
    xy1, vis1 = s.spots(quarter)
    assert float(xy1[0, 0]) > 0.5  # spot 0 has crossed to the west limb
    assert float(vis1[1]) > 0.98  # spot 1 now faces the observer
    assert not np.allclose(s.image(t0, 41, 0.03), s.image(quarter, 41, 0.03))


def test_hidden_spots_do_not_show():
    t0 = jnp.asarray(60000.0)
    far = scene(brightness=jnp.array([0.0, 0.0, 10.0]))  # only the far-side spot is bright
    plain = scene(brightness=jnp.zeros(3))
    np.testing.assert_allclose(far.image(t0, 41, 0.03), plain.image(t0, 41, 0.03), atol=1e-15)


def test_spot_lands_where_projected():
    t0 = jnp.asarray(60000.0)
    s = scene(brightness=jnp.array([0.0, 5.0, 0.0]), reference_longitude=45.0)
    image = np.asarray(s.image(t0, 41, 0.03))
    row, col = np.unravel_index(np.argmax(image), image.shape)
    x, y = np.asarray(s.spots(t0)[0][1])
    assert abs((col - 20) * 0.03 - x) <= 0.015 and abs((row - 20) * 0.03 - y) <= 0.015


def test_spot_geometry_matches_orthographic_projection():
    xy, mu = spot_geometry(jnp.array([30.0]), jnp.array([20.0]), jnp.asarray(50.0), 0.0, 2.0)
    lat, dlon = np.deg2rad(30.0), np.deg2rad(50.0 - 20.0)
    np.testing.assert_allclose(np.asarray(xy[0]), [np.cos(lat) * np.sin(dlon), np.sin(lat)])
    np.testing.assert_allclose(float(mu[0]), np.cos(lat) * np.cos(dlon))
