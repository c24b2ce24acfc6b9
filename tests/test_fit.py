"""`scaling fit`: store → engine → results store + MLflow run; resume equals uninterrupted."""

import dataclasses
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from scaling.cli import main
from scaling.config import QuasiNewtonConfig, load_config
from scaling.data.results import Results
from scaling.data.store import Campaign
from scaling.fit import fit_campaign

from .campaigns import simulated_campaign, write_toml

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    root = tmp_path_factory.mktemp("fit")
    sim = simulated_campaign("configs/io_test.toml", root)
    return root, sim


def _config(root, sim, name: str, steps: int):
    base = load_config("configs/io_test_fit.toml")
    tracking = dataclasses.replace(base.tracking, uri=f"sqlite:///{root / 'mlflow.db'}")
    return dataclasses.replace(
        base,
        campaign=str(root / "campaign.zarr"),
        results=str(root / f"{name}.zarr"),
        truth=str(sim),
        steps=steps,
        tracking=tracking,
    )


@pytest.fixture(scope="module")
def full(campaign):
    root, sim = campaign
    config = _config(root, sim, "full", 4)
    return config, fit_campaign(config, progress=False)


def test_fit_writes_results_and_mlflow_run(full):
    config, outcome = full
    assert outcome.step == 4
    assert outcome.history["total"][-1] < outcome.history["total"][0]
    snapshot = Results.open(config.results).load()
    assert [im.name for im in snapshot.images] == ["IO_001", "IO_002"]
    for image in snapshot.images:
        assert image.data.shape == (37, 37)
        assert image.data.sum() == pytest.approx(1.0, rel=1e-12)
    assert len(snapshot.exposure_names) == 5
    client = MlflowClient(config.tracking.uri)
    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["steps"] == "4"
    assert run.data.params["optimisers.log_image.kind"] == "adam"
    assert run.data.tags["results"] == config.results
    assert run.data.tags["campaign.digest"] == Campaign.open(config.campaign).digest
    assert run.data.tags["campaign.exposures"] == "5"
    assert "version.jax" in run.data.tags
    totals = client.get_metric_history(outcome.run_id, "total")
    assert [m.step for m in totals] == [1, 2, 3, 4]
    assert run.data.metrics["reduced_chi2"] == pytest.approx(outcome.reduced_chi2)
    written = client.get_metric_history(outcome.run_id, "checkpoint_time")
    assert [m.value for m in written] == outcome.checkpoint_seconds
    assert len(written) >= 1 and all(t > 0 for t in outcome.checkpoint_seconds)
    assert {"ncc.IO_001", "ncc.IO_002"} <= set(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(outcome.run_id, "pictures")}
    pictures = ("images.png", "loss.png", "residuals.png", "aberrations.png", "volcano_tracks.png")
    assert artifacts >= {f"pictures/{n}" for n in pictures}
    assert "pictures/epochs.gif" in artifacts
    fits = [a.path for a in client.list_artifacts(outcome.run_id, "fits")]
    assert len(fits) == 2 and all(p.endswith(".fits") for p in fits)


DRIVER = """
import os, signal, sys
from scaling.config import load_config
from scaling.fit import fit_campaign

def stop(step, stepper):
    if step == 3:
        os.kill(os.getpid(), getattr(signal, sys.argv[2]))

fit_campaign(load_config(sys.argv[1]), progress=False, callback=stop)
"""
"""A fit that stops itself after step 3 with the signal named by its second argument."""


@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGTERM"])
def test_stopped_and_resumed_fit_equals_uninterrupted(campaign, full, signal_name):
    """The driver dies after step 3 (the last checkpoint is step 2): killed outright, its
    step-3 metrics die with it; terminated, it flushes them and marks the run KILLED.
    Resumed, the run holds every metric of steps 1-4 once, with the uninterrupted fit's
    values, and the results store the same loss history."""
    root, sim = campaign
    reference_config, uninterrupted = full
    config = _config(root, sim, f"stopped-{signal_name}", 4)
    path = write_toml(root / f"stopped-{signal_name}.toml", config)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    stopped = subprocess.run(
        [sys.executable, "-c", DRIVER, path, signal_name], env=env, capture_output=True
    )
    if signal_name == "SIGKILL":
        assert stopped.returncode == -signal.SIGKILL
    else:
        assert stopped.returncode != 0 and b"KeyboardInterrupt: signal SIGTERM" in stopped.stderr
    assert Results.open(config.results).checkpoint_steps == [2]
    client = MlflowClient(config.tracking.uri)
    run_id = client.search_runs(
        [client.get_experiment_by_name("ami-scaling").experiment_id],
        filter_string=f"tags.results = '{config.results}'",
    )[0].info.run_id
    logged = [m.step for m in client.get_metric_history(run_id, "total")]
    assert logged == ([1, 2] if signal_name == "SIGKILL" else [1, 2, 3])
    if signal_name == "SIGTERM":
        assert client.get_run(run_id).info.status == "KILLED"

    resumed = fit_campaign(config, resume=True, progress=False)
    assert resumed.run_id == run_id and resumed.step == 4
    pairs = zip(jax.tree.leaves(resumed.params), jax.tree.leaves(uninterrupted.params), strict=True)
    for a, b in pairs:
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-300)
    for name in set(uninterrupted.history) - {"step_time"}:
        history = client.get_metric_history(run_id, name)
        assert [m.step for m in history] == [1, 2, 3, 4], name
        np.testing.assert_allclose(
            [m.value for m in history], uninterrupted.history[name], rtol=1e-12, err_msg=name
        )
    assert len(client.get_metric_history(run_id, "step_time")) == 4
    loss = Results.open(config.results).load().loss
    np.testing.assert_allclose(loss, Results.open(reference_config.results).load().loss, rtol=1e-12)
    assert client.get_run(run_id).info.status == "FINISHED"


def test_cli_rejects_a_simulation_config(capsys):
    assert main(["fit", "configs/io_test.toml"]) == 2
    assert "kind: expected 'fit'" in capsys.readouterr().err


def test_quasi_newton_stage_follows_the_first_order_steps(campaign):
    root, sim = campaign
    base = _config(root, sim, "lbfgs", 2)
    stage = QuasiNewtonConfig(steps=3, parameters=("log_flux",))
    outcome = fit_campaign(dataclasses.replace(base, quasi_newton=stage), progress=False)
    totals = outcome.history["lbfgs_total"]
    assert len(totals) == 3 and totals[-1] <= totals[0]
    steps = MlflowClient(base.tracking.uri).get_metric_history(outcome.run_id, "lbfgs_total")
    assert [m.step for m in steps] == [3, 4, 5]
