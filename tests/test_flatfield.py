"""The star-field (pixel-calibration) fit: recovery at a small size, and 2 Ray workers
equal to one process.

`configs/flatfield_small.toml`: a 32² detector, 6 stars, 6 dithers with pointing and
flux-scale errors, 5% pixel-response scatter; its fit `configs/flatfield_small_fit.toml`
renders the stars from the shared PSF (`model.shared_psf`).
"""

import dataclasses

import pytest

from scaling.config import load_config
from scaling.fit import fit_campaign
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
    for png in ("flat.png", "flat_error.png"):
        assert (root / "pictures" / png).read_bytes()[:4] == b"\x89PNG"


def test_metrics_match_a_fresh_comparison(root, reference):
    model = load_config("configs/flatfield_small_fit.toml").instrument.build(["F430M"])
    again = flatfield_comparison(str(root / "sim"), model, reference.params)
    assert again == pytest.approx(reference.truth_metrics, rel=1e-9)


@pytest.mark.slow
@pytest.mark.ray
def test_two_workers_equal_one_process(root, reference):
    """`scaling fit` of a config with 2 workers, in a process of its own (which starts
    and ends its Ray)."""
    path = write_toml(
        root / "workers2.toml", dataclasses.replace(config(root, "workers2", 2), truth="")
    )
    run_python("-c", CLI, "fit", path, "--quiet")
    assert_saved_equal(root / "workers2.zarr", reference)
