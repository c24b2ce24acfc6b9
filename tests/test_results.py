"""Results store (saves, checkpoints) and FITS export with a celestial WCS."""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import zarr
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales

import scaling.data.results as results_module
from scaling.cli import main
from scaling.data._zarr import StoreError
from scaling.data.export import add_export_parser, export_fits
from scaling.data.results import EpochImage, Results


def _params(scale: float = 1.0) -> dict:
    return {
        "shared": {
            "flat": scale * jnp.ones((4, 4)),
            "aberrations": {"F430M": scale * jnp.arange(3.0)},
        },
        "epoch": {"log_image": scale * jnp.zeros((2, 5, 5))},
        "exposure": {"log_flux": scale * jnp.arange(3.0), "position": jnp.zeros((3, 2))},
    }


def _trees(scale: float = 1.0) -> dict:
    params = _params(scale)
    optimiser = optax.chain(optax.clip(1.0), optax.adam(1e-2))
    state = optimiser.init(params)
    _, state = optimiser.update(jax.tree.map(jnp.ones_like, params), state, params)
    return {"params": params, "opt_state": state}


def _equal(a, b) -> bool:
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    same_structure = jax.tree.structure(a) == jax.tree.structure(b)
    return same_structure and all(
        np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(x, y) for x, y in pairs
    )


@pytest.mark.parametrize("location", ["path", "memory://results-test/run.zarr"])
def test_checkpoint_round_trip_and_resume(tmp_path, location):
    location = tmp_path / "run.zarr" if location == "path" else location
    results = Results.create(location)
    results.write_checkpoint(10, _trees(1.0))
    results.write_checkpoint(20, _trees(2.0))
    reopened = Results.open(location)
    assert reopened.checkpoint_steps == [10, 20]
    templates = _trees(0.0)
    step, trees = reopened.read_checkpoint(templates)
    assert step == 20 and _equal(trees, _trees(2.0))
    step, trees = reopened.read_checkpoint({"params": None}, step=10)
    assert step == 10 and _equal(trees["params"], _trees(1.0)["params"])
    with pytest.raises(StoreError, match="no checkpoint at step 15"):
        reopened.read_checkpoint(templates, step=15)
    with pytest.raises(StoreError, match="not a tree of dicts; give a template"):
        reopened.read_checkpoint({"opt_state": None})


def test_checkpoint_template_mismatch_is_an_error(tmp_path):
    results = Results.create(tmp_path / "run.zarr")
    results.write_checkpoint(1, _trees())
    wrong = _trees()
    wrong["params"]["shared"]["flat"] = jnp.ones((5, 5))
    with pytest.raises(
        StoreError, match=r"leaf \['shared'\]\['flat'\]: template has float64\[5, 5\]"
    ):
        results.read_checkpoint({"params": wrong["params"]})
    del wrong["params"]["shared"]["flat"]
    with pytest.raises(StoreError, match=r"stored leaves \[\"\['shared'\]\['flat'\]\"\]"):
        results.read_checkpoint({"params": wrong["params"]})


def test_checkpoints_keep_and_replace(tmp_path):
    results = Results.create(tmp_path / "run.zarr")
    for step in (1, 2, 3):
        results.write_checkpoint(step, _trees(step), keep=2)
    results.write_checkpoint(3, _trees(30.0), keep=2)
    assert results.checkpoint_steps == [2, 3]
    assert len(list(zarr.open_group(tmp_path / "run.zarr" / "checkpoints").group_keys())) == 2
    assert _equal(results.read_checkpoint(_trees())[1], _trees(30.0))


def test_interrupted_checkpoint_leaves_the_previous_one(tmp_path, monkeypatch):
    results = Results.create(tmp_path / "run.zarr")
    results.write_checkpoint(5, _trees(5.0))
    calls = []

    def crash_on_second_tree(group, tree):
        calls.append(group.path)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        real_write_tree(group, tree)

    real_write_tree = results_module.write_tree
    monkeypatch.setattr(results_module, "write_tree", crash_on_second_tree)
    with pytest.raises(KeyboardInterrupt):
        results.write_checkpoint(6, _trees(6.0))
    reopened = Results.open(tmp_path / "run.zarr")
    assert reopened.checkpoint_steps == [5]
    assert _equal(reopened.read_checkpoint(_trees())[1], _trees(5.0))
    monkeypatch.undo()
    results.write_checkpoint(6, _trees(6.0))  # also removes the half-written group
    assert results.checkpoint_steps == [5, 6]
    assert len(list(zarr.open_group(tmp_path / "run.zarr" / "checkpoints").group_keys())) == 2


def test_only_numbers_are_stored(tmp_path):
    results = Results.create(tmp_path / "run.zarr")
    with pytest.raises(TypeError, match="expected numbers or booleans, got <U5"):
        results.write_checkpoint(1, {"params": {"name": np.asarray("hello")}})


def _image(name: str, orientation: float = 0.0, **kw) -> EpochImage:
    rng = np.random.default_rng(len(name))
    return EpochImage(name, rng.random((7, 9)), 0.0328, orientation, "IO", 60000.5, **kw)


def _save(results: Results, step: int, images: list[EpochImage]) -> None:
    params = _params(step)
    results.save(
        step,
        images=images,
        shared=params["shared"],
        exposure=params["exposure"],
        exposure_names=["a", "b", "c"],
        loss=np.linspace(10, 1, step),
    )


def test_save_and_load_a_snapshot(tmp_path):
    results = Results.create(tmp_path / "run.zarr")
    with pytest.raises(StoreError, match="no results saved yet"):
        results.load()
    _save(results, 3, [_image("IO_001")])
    _save(results, 4, [_image("IO_001", 30.0), _image("IO_002", ra=10.0, dec=-5.0)])
    snap = Results.open(tmp_path / "run.zarr").load()
    assert snap.step == 4 and snap.exposure_names == ["a", "b", "c"]
    assert _equal(snap.shared, _params(4)["shared"]) and _equal(
        snap.exposure, _params(4)["exposure"]
    )
    assert np.array_equal(snap.loss, np.linspace(10, 1, 4))
    first, second = snap.images
    assert (first.name, first.orientation, first.pixel_scale, first.ra) == (
        "IO_001",
        30.0,
        0.0328,
        None,
    )
    assert np.array_equal(first.data, _image("IO_001").data)
    assert (second.ra, second.dec, second.mjd, second.target) == (10.0, -5.0, 60000.5, "IO")
    assert len(list(zarr.open_group(tmp_path / "run.zarr" / "saves").group_keys())) == 1
    with pytest.raises(ValueError, match="leading axis of 2 exposures"):
        results.save(
            5, images=[], shared={}, exposure={"x": np.zeros(3)}, exposure_names=["a", "b"], loss=[]
        )


def test_stores_of_another_kind_or_version_are_refused(tmp_path):
    with pytest.raises(StoreError, match="already exists"):
        Results.create(tmp_path / "run.zarr") and Results.create(tmp_path / "run.zarr")
    zarr.open_group(tmp_path / "run.zarr", mode="r+").attrs["schema_version"] = 2
    with pytest.raises(StoreError, match="schema_version: this code reads version 1"):
        Results.open(tmp_path / "run.zarr")
    zarr.open_group(tmp_path / "other.zarr", mode="w")
    with pytest.raises(StoreError, match="attribute kind: expected 'ami-results'"):
        Results.open(tmp_path / "other.zarr")


# --- FITS export -------------------------------------------------------------------------


def _north_and_east(wcs: WCS, x: float, y: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel displacements (unit length) toward north and toward east from (x, y)."""
    centre = wcs.pixel_to_world(x, y)
    out = []
    for angle in (0, 90):
        step = centre.directional_offset_by(angle * u.deg, 1 * u.arcsec)
        px, py = wcs.world_to_pixel(step)
        d = np.array([px - x, py - y])
        out.append(d / np.hypot(*d))
    return out[0], out[1]


@pytest.mark.parametrize("orientation", [0.0, 30.0, -125.0])
def test_exported_fits_has_the_right_wcs(tmp_path, orientation):
    results = Results.create(tmp_path / "run.zarr")
    target = (83.5, -5.25)
    _save(
        results, 2, [_image("IO_001", orientation, ra=target[0], dec=target[1]), _image("IO 002")]
    )
    files = export_fits(tmp_path / "run.zarr", tmp_path / "fits")
    assert [f.name for f in files] == ["IO_001.fits", "IO_002.fits"]
    with fits.open(files[0]) as hdul:
        header, data = hdul[0].header, hdul[0].data
    assert np.array_equal(data, _image("IO_001").data)
    wcs = WCS(header)
    assert wcs.has_celestial and header["RADECSRC"] == "TARGET"
    assert np.allclose(proj_plane_pixel_scales(wcs) * 3600, [0.0328, 0.0328], rtol=1e-12)
    centre = wcs.pixel_to_world((9 - 1) / 2, (7 - 1) / 2)
    assert centre.separation(SkyCoord(*target, unit="deg")).arcsec < 1e-9
    north, east = _north_and_east(wcs, 4.0, 3.0)
    theta = np.deg2rad(orientation)
    assert np.allclose(north, [-np.sin(theta), np.cos(theta)], atol=1e-6)
    assert np.allclose(east, [-np.cos(theta), -np.sin(theta)], atol=1e-6)  # east 90° CCW of north
    with fits.open(files[1]) as hdul:
        assert hdul[0].header["RADECSRC"] == "PLACEHOLDER"
        assert tuple(WCS(hdul[0].header).wcs.crval) == (0.0, 0.0)


def test_export_command(tmp_path, capsys):
    _save(Results.create(tmp_path / "run.zarr"), 2, [_image("IO_001"), _image("IO_002")])
    parser = argparse.ArgumentParser(prog="scaling")
    add_export_parser(parser.add_subparsers())
    args = parser.parse_args(
        ["export", str(tmp_path / "run.zarr"), "--fits", str(tmp_path / "out")]
    )
    assert args.handler(args) == 0
    assert "2 epoch images written" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["IO_001.fits", "IO_002.fits"]
    assert main(["export", str(tmp_path / "absent.zarr"), "--fits", str(tmp_path / "x")]) == 2
    assert "scaling export: error:" in (err := capsys.readouterr().err) and "absent.zarr" in err
