"""What a fit uses and where it starts: `[select]` (the exposures), `calibration` (shared
instrument parameters from another fit's results), `position_start` (centroids), and the
companion grid that starts a binary fit."""

import dataclasses
import re

import jax.numpy as jnp
import numpy as np
import pytest

from model import make_spec
from scaling.config import (
    BinaryConfig,
    FitConfig,
    InstrumentConfig,
    OptimiserConfig,
    SelectConfig,
    TrackingConfig,
)
from scaling.data.ingest import ingest
from scaling.data.results import Results
from scaling.fit import fit_campaign
from scaling.fitting.companion import companion_grid, sky_grid
from scaling.fitting.params import Observation
from scaling.fitting.start import (
    centroid_position,
    initial_local,
    initial_params,
    initial_shared,
    load_observations,
    open_selection,
    settings_from,
)
from tests.campaigns import RECORD_NPIX, write_campaign
from tests.helpers import FILTER, generic_ami_params, tiny_ami_model

TINY = InstrumentConfig(npix=RECORD_NPIX, oversample=2, pupil_npix=32, nwavels=1, n_hole_zernikes=1)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two Io epochs of two exposures (observations 1, 2) and a calibrator CAL1 (90)."""
    root = tmp_path_factory.mktemp("select")
    files = write_campaign(root / "files")
    ingest([str(f) for f in files], root / "campaign.zarr", progress=False)
    return root


def _config(root, **changes) -> FitConfig:
    return FitConfig(campaign=str(root / "campaign.zarr"), instrument=TINY, **changes)


# --- [select] -------------------------------------------------------------------------


def test_empty_select_keeps_every_exposure(store):
    assert len(open_selection(_config(store)).names) == 5


@pytest.mark.parametrize(
    ("select", "expected"),
    [
        (SelectConfig(targets=("CAL1",)), ["o090_e001"]),
        (SelectConfig(observations=(2,)), ["o002_e001", "o002_e002"]),
        (SelectConfig(targets=("IO",), observations=(1, 90)), ["o001_e001", "o001_e002"]),
        (SelectConfig(filters=("F430M",), targets=("IO", "CAL1")), None),
    ],
)
def test_select_keeps_the_matching_exposures(store, select, expected):
    campaign = open_selection(_config(store, select=select))
    kept = {(e.observation, e.exposure) for e in campaign.exposures}
    if expected is None:
        assert len(kept) == 5
    else:
        assert kept == {(int(n[1:4]), int(n[6:])) for n in expected}


@pytest.mark.parametrize(
    ("select", "key"),
    [
        (SelectConfig(targets=("IO", "CAL2")), "select.targets[1]"),
        (SelectConfig(filters=("F380M",)), "select.filters[0]"),
        (SelectConfig(observations=(7,)), "select.observations[0]"),
    ],
)
def test_select_of_something_absent_names_the_key(store, select, key):
    with pytest.raises(ValueError, match=re.escape(f"{key}: ")):
        open_selection(_config(store, select=select))


def test_select_that_matches_nothing_together_is_an_error(store):
    select = SelectConfig(targets=("CAL1",), observations=(1,))
    with pytest.raises(ValueError, match="no exposure"):
        open_selection(_config(store, select=select))


def test_cluster_workers_read_the_same_selection(store):
    """The Ray path partitions the selected view and each shard worker (plain Python
    here, no Ray) opens the store through the same selection: together they hold
    exactly the selected exposures, and a shard naming another one is refused."""
    from cluster.worker import ShardWorker
    from scaling.data.store import Shard

    optimisers = {"position": OptimiserConfig("sgd", 0.5, 0, True)}
    config = _config(store, select=SelectConfig(observations=(1, 90)), optimisers=optimisers)
    selected = open_selection(config)
    shards = [s for s in selected.partition(2) if s.exposures]
    workers = [ShardWorker(config, shard, ["F430M"]) for shard in shards]
    held = sorted(o.name for w in workers for o in w.observations)
    assert held == sorted(selected.names) and len(held) == 3
    other = next(e for e in open_selection(_config(store)).exposures if e.observation == 2)
    with pytest.raises(KeyError, match="no exposure"):
        ShardWorker(config, Shard(0, (other.name,), (), 0), ["F430M"])


# --- calibration ----------------------------------------------------------------------


def _calibration(path, filters=("F430M",), aberrations=7) -> dict:
    """A results store holding a calibration: aberrations per filter, jitter, flat, and a
    binary's separation and contrast (which a calibration must not carry)."""
    rng = np.random.default_rng(4)
    shared = {
        "aberrations": {f: rng.standard_normal(aberrations) for f in filters},
        "jitter": np.asarray(0.37),
        "flat": 1 + 0.01 * rng.standard_normal((RECORD_NPIX, RECORD_NPIX)),
        "separation": np.asarray(123.0),
        "contrast": {f: np.asarray(3.3) for f in filters},
    }
    Results.create(path).save(
        5, images=[], shared=shared, exposure={}, exposure_names=[], loss=np.zeros(5)
    )
    return shared


def test_calibration_replaces_the_instrument_start(tmp_path):
    saved = _calibration(tmp_path / "cal.zarr", filters=("F430M", "F480M"))
    config = _config(tmp_path, calibration=str(tmp_path / "cal.zarr"))
    shared = initial_shared(config, TINY.build(["F430M"]))
    assert set(shared["aberrations"]) == {"F430M"}  # the filters of the fit
    np.testing.assert_array_equal(shared["aberrations"]["F430M"], saved["aberrations"]["F430M"])
    np.testing.assert_array_equal(shared["flat"], saved["flat"])
    assert float(shared["jitter"]) == 0.37
    assert "separation" not in shared  # a target's own, never carried
    binary = dataclasses.replace(config, binary=BinaryConfig(200.0, 10.0, 4.0))
    shared = initial_shared(binary, TINY.build(["F430M"]))
    assert float(shared["separation"]) == 200.0
    assert float(shared["contrast"]["F430M"]) == 4.0
    assert float(shared["jitter"]) == 0.37


def test_calibration_without_a_filter_or_of_another_size_is_refused(tmp_path):
    _calibration(tmp_path / "cal.zarr", filters=("F480M",))
    config = _config(tmp_path, calibration=str(tmp_path / "cal.zarr"))
    with pytest.raises(ValueError, match=r"calibration: .* not for \['F430M'\]"):
        initial_shared(config, TINY.build(["F430M"]))
    _calibration(tmp_path / "big.zarr", aberrations=21)
    config = _config(tmp_path, calibration=str(tmp_path / "big.zarr"))
    with pytest.raises(ValueError, match=r"calibration: .* aberrations of shape \(21,\)"):
        initial_shared(config, TINY.build(["F430M"]))


def test_a_fit_uses_its_selection_and_holds_its_calibration(store, tmp_path):
    """`scaling fit` with `[select]` fits and saves only those exposures; a calibrated
    parameter without an optimiser comes out exactly as the calibration had it."""
    saved = _calibration(tmp_path / "cal.zarr")
    optimisers = {n: OptimiserConfig("sgd", 0.5, 0, True) for n in ("position", "log_flux")}
    config = _config(
        store,
        results=str(tmp_path / "results.zarr"),
        calibration=str(tmp_path / "cal.zarr"),
        select=SelectConfig(targets=("IO",), observations=(2,)),
        steps=2,
        checkpoint_every=2,
        image_npix=3,
        optimisers=optimisers,
        tracking=TrackingConfig(f"sqlite:///{tmp_path / 'mlflow.db'}"),
    )
    outcome = fit_campaign(config, progress=False)
    assert np.isfinite(outcome.reduced_chi2)
    snapshot = Results.open(config.results).load()
    expected = [e.name for e in open_selection(config).exposures]
    assert [e.observation for e in open_selection(config).exposures] == [2, 2]
    assert snapshot.exposure_names == expected
    assert [image.name for image in snapshot.images] == ["IO_002"]
    np.testing.assert_array_equal(
        snapshot.shared["aberrations"]["F430M"], saved["aberrations"]["F430M"]
    )
    assert float(snapshot.shared["jitter"]) == 0.37
    # the image is not fitted, so it cannot carry the pointing: every position moved
    moved = np.abs(snapshot.exposure["position"]).sum(axis=1)
    assert np.all(moved > 0)


# --- positions start at the centroid --------------------------------------------------


def test_centroid_start_is_where_the_model_puts_the_star():
    """A star the model puts at (0.25, -0.12) arcsec (x along columns, y along rows, from
    the frame centre) starts within a tenth of a pixel of there, on a 32-pixel frame."""
    model = InstrumentConfig(npix=32, oversample=2, pupil_npix=64, nwavels=3).build([FILTER])
    params = {k: v for k, v in generic_ami_params().items() if k != "log_image"}
    params |= {
        "aberrations": jnp.zeros(21),
        "flat": jnp.ones((32, 32)),
        "dark": jnp.asarray(0.0),
        "position": jnp.array([0.25, -0.12]),
    }
    spec = make_spec(FILTER, 2, roll=30.0)
    rate = np.asarray(model.mean_rate(params, spec))[None]
    bad = np.zeros((32, 32), bool)
    bad[3, 5] = True
    observation = Observation("x", None, spec, rate, bad, "rate", np.ones_like(rate))
    found = centroid_position(observation)
    assert np.all(np.abs(found - [0.25, -0.12]) < 0.1 * 0.0656)
    local = initial_local(FitConfig(position_start="centroid"), [observation], 0)
    np.testing.assert_allclose(local["exposure"]["position"][0], found, rtol=0, atol=1e-15)
    centred = initial_local(FitConfig(), [observation], 0)  # the default: the old start
    np.testing.assert_array_equal(centred["exposure"]["position"], np.zeros((1, 2)))


def test_the_shared_psf_pad_must_cover_the_pointings(store):
    """Sources at the centre, no dithers and 0.1 arcsec of margin: 4 optical pixels of
    32.8 mas (the images' half width need not fit: their far light wraps round)."""
    campaign = open_selection(_config(store))
    names, epochs = list(campaign.names), sorted(campaign.epochs)
    observations = load_observations(campaign, names)
    for pad, fits in ((3, False), (4, True)):
        instrument = dataclasses.replace(TINY, psf_pad=pad)
        config = dataclasses.replace(_config(store, image_npix=5), instrument=instrument)
        model = instrument.build([FILTER])
        if fits:
            assert initial_params(config, model, observations, epochs)["exposure"]["position"].shape
        else:
            with pytest.raises(ValueError, match=r"instrument.psf_pad: .* 4 optical pixels; got 3"):
                initial_params(config, model, observations, epochs)


def test_science_positions_are_frozen_only_where_the_image_carries_the_pointing():
    observations = [
        Observation("a", "e0", make_spec(FILTER, 2), np.zeros((1, 4, 4)), np.zeros((4, 4), bool))
    ]
    grads = {"exposure": {"position": jnp.ones((1, 2))}}
    imaged = settings_from(FitConfig(), observations).grad_hook
    assert float(imaged(grads, None)["exposure"]["position"].sum()) == 0.0
    binary = FitConfig(binary=BinaryConfig(separation=100.0))
    assert settings_from(binary, observations).grad_hook is None
    no_image = FitConfig(optimisers={"position": OptimiserConfig()})
    assert settings_from(no_image, observations).grad_hook is None


# --- the companion grid ------------------------------------------------------------------


def test_sky_grid_spacing_and_angles():
    separation, angle = sky_grid(100.0, 25.0, 30.0)
    assert separation.min() >= 30.0 and separation.max() <= 100.0
    assert np.all((angle >= 0) & (angle < 360))
    north = np.isclose(separation, 50.0) & np.isclose(angle, 0.0)
    east = np.isclose(separation, 50.0) & np.isclose(angle, 90.0)
    assert north.sum() == 1 and east.sum() == 1


def test_companion_grid_finds_a_simulated_companion():
    """Two noisy rate exposures of a binary (150 mas, PA 40°, Δm 1.5) at two rolls: the
    best grid point lies within one grid step of the companion and its Δm within 0.3."""
    model = tiny_ami_model()
    base = {k: v for k, v in generic_ami_params().items() if k != "log_image"}
    base |= {"dark": jnp.asarray(0.0), "log_flux": jnp.asarray(6.0)}
    truth = {"separation": 150.0, "position_angle": 40.0, "contrast": 1.5}
    rng = np.random.default_rng(2)
    observations, singles = [], []
    for k, roll in enumerate((0.0, 60.0)):
        spec = make_spec(FILTER, 2, roll=roll)
        binary = base | {n: jnp.asarray(v) for n, v in truth.items()}
        rate = np.asarray(model.mean_rate(binary, spec))
        variance = np.maximum(rate, 1.0)
        data = rate + np.sqrt(variance) * rng.standard_normal(rate.shape)
        bad = np.zeros(rate.shape, bool)
        observations.append(
            Observation(f"x{k}", None, spec, data[None], bad, "rate", variance[None])
        )
        singles.append(base)
    shared = {k: v for k, v in base.items() if k not in ("position", "log_flux", "spectral_slope")}
    shared["aberrations"] = {FILTER: shared["aberrations"]}
    exposure = {
        n: jnp.stack([s[n] for s in singles]) for n in ("position", "log_flux", "spectral_slope")
    }
    params = {"shared": shared, "epoch": {}, "exposure": exposure}
    grid = companion_grid(model, params, observations, max_separation=240.0, step=30.0)
    best = grid.best
    west = -np.sin(np.radians(grid.position_angle[best])) * grid.separation[best]
    north = np.cos(np.radians(grid.position_angle[best])) * grid.separation[best]
    true_west, true_north = -150 * np.sin(np.radians(40.0)), 150 * np.cos(np.radians(40.0))
    assert np.hypot(west - true_west, north - true_north) < 30.0 * np.sqrt(2) / 2 + 1e-9
    assert grid.improvement() > 100.0
    assert abs(grid.contrast_by_filter()[FILTER] - 1.5) < 0.3
