"""`scaling sweep` on Ray Tune: trials as nested MLflow runs, ASHA, a failing trial, a
driver killed mid-sweep and resumed, and trials of 2 shard workers in their own
placement groups. One local Ray cluster of 6 CPUs and one MLflow server for the module."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
from mlflow.tracking import MlflowClient

from cluster.sweep import run_sweep
from scaling.config import ConfigError, load_config, parse_config
from scaling.config.load import override
from scaling.report.compare import find_runs
from scaling.report.tracking import EXPERIMENT, local_server

from .campaigns import simulated_campaign, write_toml
from .conftest import CACHE

pytestmark = [pytest.mark.slow, pytest.mark.ray]

STEPS = 6


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    simulated_campaign("configs/io_test.toml", root)
    return root


@pytest.fixture(scope="module")
def server(root):
    with local_server(f"sqlite:///{root / 'mlflow.db'}") as uri:
        yield uri


def base_fit(root: Path, server: str, steps: int = STEPS) -> str:
    """The suite's fit config on the module's campaign: `steps` steps, a checkpoint (and a
    report to Tune) every 2, the image fitted from the first step, runs to `server`."""
    base = load_config("configs/io_test_fit.toml")
    config = override(base, {"optimisers.log_image.start": 0.0})
    config = dataclasses.replace(
        config,
        campaign=str(root / "campaign.zarr"),
        truth=str(root / "sim"),
        steps=steps,
        checkpoint_every=2,
        tracking=dataclasses.replace(config.tracking, uri=server),
        cluster=dataclasses.replace(config.cluster, compile_cache=CACHE),
    )
    return write_toml(root / f"fit-{steps}.toml", config)


def write_sweep(root: Path, name: str, fit: str, space: dict, **keys) -> str:
    lines = ['kind = "sweep"', f'fit = "{fit}"', f'name = "{name}"', f'out = "{root}"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in keys.items()]
    lines += ["[space]"] + [f'"{k}" = {{ grid = {json.dumps(v)} }}' for k, v in space.items()]
    path = root / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def nested(server: str, parent: str):
    return find_runs(MlflowClient(server), parent=parent, missing_ok=True)


def test_sweep_config_errors_name_the_key(root):
    with pytest.raises(ConfigError, match=r"space\.a: expected one of"):
        parse_config({"kind": "sweep", "fit": "f.toml", "space": {"a": {"bogus": [1]}}})
    with pytest.raises(ConfigError, match="loguniform: expected low > 0"):
        parse_config({"kind": "sweep", "fit": "f", "space": {"a": {"loguniform": [0, 1]}}})
    base = load_config("configs/io_test_fit.toml")
    with pytest.raises(ConfigError, match=r"optimisers\.nope is no table"):
        override(base, {"optimisers.nope.lr": 1.0})
    with pytest.raises(ConfigError, match=r"regularisers\.tv: expected a finite weight >= 0"):
        override(base, {"regularisers.tv": -1.0})


SWEEP_DRIVER = "import sys; from cluster.cli import main; sys.exit(main(['sweep', sys.argv[1]]))"


@pytest.fixture(scope="module")
def interrupted(root, server, local_ray):
    """A 6-trial sweep (TV weight × image learning rate, 2 at once, ASHA) whose driver is
    SIGKILLed once 3 trials have ended, then resumed with `--resume` in this process.
    TV = -1 is no valid weight: those 2 trials fail. → (parent run id, the trials' runs
    that had ended before the kill, the sweep's outcome)."""
    fit = base_fit(root, server)
    space = {"regularisers.tv": [0.1, 10.0, -1.0], "optimisers.log_image.lr": [0.02, 0.05]}
    address = ray.get_runtime_context().gcs_address  # the driver joins the session's Ray
    path = write_sweep(root, "tv-lr", fit, space, concurrent=2, grace_period=2, address=address)
    client = MlflowClient(server)
    driver = subprocess.Popen(
        [sys.executable, "-c", SWEEP_DRIVER, path],
        start_new_session=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ended, parent, began = [], None, time.monotonic()
    try:
        while len(ended) < 3:
            assert driver.poll() is None, "the sweep ended before 3 trials had"
            assert time.monotonic() - began < 600, "3 trials did not end in 10 minutes"
            time.sleep(1)
            experiment = client.get_experiment_by_name(EXPERIMENT)
            tag = str(root.resolve() / "tv-lr")
            parents = client.search_runs([experiment.experiment_id], f"tags.sweep = '{tag}'")
            if parents:
                parent = parents[0].info.run_id
                ended = [r for r in nested(server, parent) if r.status != "RUNNING"]
    finally:  # also when the wait fails: a driver left running outlives the module
        os.killpg(driver.pid, signal.SIGKILL)  # Ray ends the trials of a driver that died
        driver.wait()
    outcome = run_sweep(path, resume=True, verbose=0)
    return parent, ended, outcome


def test_resumed_sweep_has_every_trial_once_under_one_parent(server, interrupted):
    parent, ended, outcome = interrupted
    assert outcome.parent_run_id == parent
    runs = nested(server, parent)
    assert len(runs) == 6 and len({r.results for r in runs}) == 6
    assert sorted(outcome.trials) == sorted(Path(r.results).stem for r in runs)
    now = {r.run_id: r for r in runs}
    for before in ended:  # ended before the kill: not run again
        assert now[before.run_id].status == before.status
        assert now[before.run_id].metrics == before.metrics


def test_failing_trials_are_failed_with_their_error_and_the_rest_run(server, interrupted):
    parent, _, _ = interrupted
    runs = nested(server, parent)
    failed = [r for r in runs if r.status == "FAILED"]
    assert len(failed) == 2 and all(r.params["regularisers.tv"] == "-1.0" for r in failed)
    client = MlflowClient(server)
    for r in failed:
        assert (
            "regularisers.tv: expected a finite weight >= 0"
            in client.get_run(r.run_id).data.tags["error"]
        )
    assert {r.status for r in runs} - {"FAILED"} <= {"FINISHED", "KILLED"}


def test_asha_stops_trials_early_and_every_step_is_logged_once(server, interrupted):
    parent, _, _ = interrupted
    client = MlflowClient(server)
    runs = [r for r in nested(server, parent) if r.status != "FAILED"]
    stopped = [r for r in runs if r.status == "KILLED"]
    assert len(stopped) >= 1
    for r in runs:
        steps = [m.step for m in client.get_metric_history(r.run_id, "total")]
        reports = [m.step for m in client.get_metric_history(r.run_id, "validation_nll")]
        last = STEPS if r.status == "FINISHED" else reports[-1]
        assert sorted(steps) == list(range(1, last + 1)), r.run_id
        assert sorted(reports) == list(range(2, last + 1, 2)), r.run_id
    for r in stopped:
        assert client.get_run(r.run_id).data.tags["stopped_early"] == "asha"


def test_best_trial_and_comparison_are_on_the_parent(server, interrupted, root):
    parent, _, outcome = interrupted
    client = MlflowClient(server)
    finished = [r for r in nested(server, parent) if r.status == "FINISHED"]
    best = min(finished, key=lambda r: r.metrics["validation_nll"])
    run = client.get_run(parent)
    assert run.info.status == "FINISHED"
    assert run.data.tags["best.run_id"] == best.run_id
    assert run.data.metrics["best.validation_nll"] == best.metrics["validation_nll"]
    assert outcome.best_config == {
        "regularisers.tv": float(best.params["regularisers.tv"]),
        "optimisers.log_image.lr": float(best.params["optimisers.log_image.lr"]),
    }
    artifacts = {a.path for a in client.list_artifacts(parent)}
    assert {"best_config.json", "compare"} <= artifacts
    compared = {a.path for a in client.list_artifacts(parent, "compare")}
    assert {"compare/images.png", "compare/metrics.csv", "compare/lcurve.png"} <= compared


def test_trials_of_two_workers_each_run_in_their_own_placement_group(root, server, local_ray):
    """2 trials at once, each a driver and 2 shard workers (3 bundles), on 6 CPUs."""
    fit = base_fit(root, server, steps=2)
    space = {"regularisers.tv": [0.1, 1.0]}
    path = write_sweep(
        root, "placed", fit, space, concurrent=2, workers_per_trial=2, scheduler="fifo"
    )
    outcome = run_sweep(path, verbose=0)
    client = MlflowClient(server)
    runs = [client.get_run(r) for r in outcome.trials.values()]
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]
    groups = []
    for run in runs:
        tags = run.data.tags
        group = tags["placement.driver_group"]
        assert group and tags["placement.worker0.group"] == tags["placement.worker1.group"] == group
        assert tags["placement.worker0.pid"] != tags["placement.worker1.pid"]
        groups.append(group)
    assert groups[0] != groups[1]
    spans = sorted((r.info.start_time, r.info.end_time) for r in runs)
    assert spans[1][0] < spans[0][1], "the two trials did not run at the same time"
