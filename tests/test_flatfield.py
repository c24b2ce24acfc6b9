"""The star-field (pixel-calibration) fit: recovery at a small size, 2 Ray workers equal
to one process, and a resumed fit equal to an uninterrupted one across a Fisher refresh.

`configs/flatfield_small.toml`: a 32² detector, 6 stars, 6 dithers with pointing and
flux-scale errors, 5% pixel-response scatter; its fit `configs/flatfield_small_fit.toml`
renders the stars from the shared PSF (`model.shared_psf`).
"""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from scaling.config import load_config
from scaling.fit import fit_campaign
from scaling.fitting.engine import unit_mean_flat
from scaling.report.flatfield import flatfield_comparison

from .campaigns import CLI, assert_saved_equal, run_python, simulated_campaign, write_toml

STEPS = 60


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("flatfield")
    simulated_campaign("configs/flatfield_small.toml", root)
    return root


def config(root, name: str, workers: int = 0):
    base = load_config("configs/flatfield_small_fit.toml")
    return dataclasses.replace(
        base,
        campaign=str(root / "campaign.zarr"),
        results=str(root / f"{name}.zarr"),
        truth=str(root / "sim"),
        steps=STEPS,
        checkpoint_every=STEPS,
        tracking=dataclasses.replace(base.tracking, uri=f"sqlite:///{root}/mlflow.db"),
        cluster=dataclasses.replace(
            base.cluster, workers=workers, cpus_per_worker=0.5, compile_cache=str(root / "jax")
        ),
    )


@pytest.fixture(scope="module")
def reference(root):
    return fit_campaign(config(root, "reference"), progress=False, pictures=root / "pictures")


def test_star_field_fit_recovers_flat_and_aberrations(root, reference):
    truth = load_config("configs/flatfield_small.toml")
    metrics = reference.truth_metrics
    assert metrics["flat_bright_pixels"] > 100
    assert metrics["flat_mae_bright"] < truth.pixel_response_scatter / 3
    assert metrics["zernike_rel_error.F430M"] < 0.1
    assert metrics["star_position_rms_mas"] < 10.0
    assert metrics["star_log_flux_rms"] < 0.01
    assert reference.reduced_chi2 < 1.1
    assert metrics["flat_mae_bright_raw"] < truth.pixel_response_scatter / 3
    for png in ("flat.png", "flat_error.png"):
        assert (root / "pictures" / png).read_bytes()[:4] == b"\x89PNG"


def test_flat_updates_keep_the_weighted_mean():
    rng = np.random.default_rng(0)
    flat, weight, positions = rng.normal(size=(3, 8, 8))
    updates = {"shared": {"flat": jnp.asarray(flat), "positions": jnp.asarray(positions)}}
    scale = {"shared": {"flat": jnp.asarray(np.abs(weight)), "positions": jnp.ones((8, 8))}}
    out = unit_mean_flat(updates, scale)["shared"]
    assert float(jnp.sum(np.abs(weight) * out["flat"])) == pytest.approx(0, abs=1e-12)
    np.testing.assert_allclose(out["flat"] - flat, out["flat"][0, 0] - flat[0, 0], atol=1e-12)
    np.testing.assert_array_equal(out["positions"], positions)
    assert unit_mean_flat({"shared": {"x": 1.0}}, scale) == {"shared": {"x": 1.0}}


def test_metrics_match_a_fresh_comparison(root, reference):
    model = load_config("configs/flatfield_small_fit.toml").instrument.build(["F430M"])
    again = flatfield_comparison(str(root / "sim"), model, reference.params)
    assert again == pytest.approx(reference.truth_metrics, rel=1e-9)


def test_resume_after_a_fisher_refresh_equals_an_uninterrupted_fit(root, reference):
    """The config refreshes the Fisher diagonal before step 20: a fit stopped at step 30
    and resumed to the end goes on with the refreshed scale (saved in the checkpoint),
    not the one from the start."""
    assert config(root, "reference").fisher_refresh == (20,)
    first = dataclasses.replace(config(root, "resumed"), steps=30, checkpoint_every=30)
    fit_campaign(first, progress=False)
    resumed = fit_campaign(config(root, "resumed"), resume=True, progress=False)
    assert resumed.step == STEPS
    assert_saved_equal(root / "resumed.zarr", reference)


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.parametrize("transport", ["tasks", "collective"])
def test_two_workers_equal_one_process(root, reference, transport):
    """`scaling fit` of a config with 2 workers, in a process of its own (which starts
    and ends its Ray), with the Fisher refresh in both."""
    fit = config(root, f"workers2{transport}", 2)
    fit = dataclasses.replace(
        fit, truth="", cluster=dataclasses.replace(fit.cluster, transport=transport)
    )
    path = write_toml(root / f"workers2{transport}.toml", fit)
    run_python("-c", CLI, "fit", path, "--quiet")
    assert_saved_equal(root / f"workers2{transport}.zarr", reference)
