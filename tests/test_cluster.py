"""Ray fits equal the single-process engine: 2 workers, 3 (uneven shards) on several
nodes, lost workers, a killed driver, a failing worker, and a driver that never reads
exposure arrays."""

import contextlib
import dataclasses
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import ray
import zarr
from mlflow.tracking import MlflowClient

from cluster.bench import main as bench_main
from cluster.bench import sub_campaigns
from cluster.coordinator import RayStepper
from scaling.config import load_config
from scaling.data.results import Results
from scaling.data.store import Campaign
from scaling.fit import fit_campaign

from .campaigns import CLI, assert_saved_equal, run_python, simulated_campaign, write_toml
from .conftest import CACHE

pytestmark = [pytest.mark.slow, pytest.mark.ray]

STEPS = 20


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    simulated_campaign("configs/io_test.toml", root)
    return root


def config(
    root, name: str, workers: int = 0, campaign: str = "campaign.zarr", transport: str = "tasks"
):
    """The suite's fit (configs/io_test_fit.toml) of the store under `root`, for STEPS
    steps with a checkpoint every 5, on `workers` Ray workers of half a CPU each."""
    base = load_config("configs/io_test_fit.toml")
    return dataclasses.replace(
        base,
        campaign=str(root / campaign),
        results=str(root / f"{name}.zarr"),
        truth="",
        steps=STEPS,
        checkpoint_every=5,
        tracking=dataclasses.replace(base.tracking, uri=f"sqlite:///{root}/mlflow.db"),
        cluster=dataclasses.replace(
            base.cluster,
            workers=workers,
            cpus_per_worker=0.5,
            compile_cache=CACHE,
            transport=transport,
        ),
    )


@pytest.fixture(scope="module")
def reference(root):
    return fit_campaign(config(root, "reference"), progress=False)


@pytest.fixture
def driver_without_arrays(monkeypatch):
    """Exposure arrays may be read by workers only, never by this (the driver) process."""

    def refuse(self, names):
        raise AssertionError(f"the driver read exposure arrays of {list(names)}")

    monkeypatch.setattr(Campaign, "read", refuse)


def assert_equal_params(params, reference, rtol=1e-10):
    pairs = zip(jax.tree.leaves(params), jax.tree.leaves(reference.params), strict=True)
    for a, b in pairs:
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=1e-14)


def test_local_ray_binds_to_localhost(local_ray):
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}


def test_workers_equal_single_process(root, reference, local_ray, driver_without_arrays):
    """2 workers; 3 (uneven shards) on 3 nodes in `test_three_nodes_hold_one_shard_each`;
    through a compiled graph in `test_killed_worker_rolls_back_and_equals_uninterrupted`."""
    workers = 2
    cfg = config(root, f"workers{workers}", workers)
    out = fit_campaign(cfg, progress=False, stepper=RayStepper)
    assert out.step == STEPS
    assert_equal_params(out.params, reference)
    assert out.reduced_chi2 == pytest.approx(reference.reduced_chi2, rel=1e-10)
    np.testing.assert_allclose(out.history["total"], reference.history["total"], rtol=1e-10)
    run = MlflowClient(cfg.tracking.uri).get_run(out.run_id)
    times = {k for k in run.data.metrics if k.startswith("worker_time.")}
    assert len(times) == workers


def test_sub_campaigns_take_whole_observations_in_time_order(root):
    store = str(root / "campaign.zarr")
    exposures = Campaign.open(store).exposures
    counts = {
        o: sum(e.observation == o for e in exposures) for o in {e.observation for e in exposures}
    }
    first = min(exposures, key=lambda e: e.expmid).observation
    small, every = sub_campaigns(store, [1, 10**6])
    assert small == (first,)
    assert sorted(every) == sorted(counts)
    starts = [min(e.expmid for e in exposures if e.observation == o) for o in every]
    assert starts == sorted(starts)
    two = sub_campaigns(store, [counts[first] + 1])[0]
    assert len(two) == 2 and two[0] == first


def test_cluster_bench_times_workers_side_by_side(tmp_path, local_ray):
    """A sub-campaign of two epochs (4 of the 5 exposures) in process and on 2 workers."""
    out = tmp_path / "bench.json"
    args = ["configs/io_test.toml", "configs/io_test_fit.toml", "--workers", "0,2"]
    options = ["--exposures", "3", "--steps", "4", "--warmup", "2", "--out", str(out)]
    assert bench_main([*args, *options]) == 0
    report = json.loads(out.read_text())
    one, two = report["runs"]
    assert (one["workers"], two["workers"], two["transport"]) == (0, 2, "tasks")
    assert 3 <= one["exposures"] == two["exposures"] < report["exposures"]
    assert all(spread < 1e-12 for spread in report["final_loss_spread"].values())
    assert two["median_step_s"] > 0 and len(two["median_worker_compute_s"]) == 2
    assert [w["batches"] for w in two["placement"]] == [1, 1]  # one filter, one frame size
    assert one["median_ray_overhead_ms"] is None and one["first_step_warm_cache_s"] is None
    assert 0 <= two["median_ray_overhead_ms"] < 1000 * two["median_step_s"]
    assert 0 <= two["coordinator_share"] < 1
    assert 0 < two["first_step_warm_cache_s"] < two["first_step_s"]
    assert len(two["peak_bytes"]) == 2
    assert all(p["host"] > 2**20 for p in two["peak_bytes"].values())
    assert all(
        2**20 < r["driver_start_host_bytes"] <= r["driver_peak_host_bytes"] for r in report["runs"]
    )
    assert two["first_step_warm_cache_beyond_median_s"] < two["first_step_beyond_median_s"]
    assert all(len(r["checkpoint_s"]) == 1 and r["checkpoint_s"][0] > 0 for r in report["runs"])
    assert out.with_suffix(".png").stat().st_size > 0


def test_asking_for_missing_gpus_fails_at_once(root, local_ray):
    cfg = config(root, "gpus", 2)
    cfg = dataclasses.replace(cfg, cluster=dataclasses.replace(cfg.cluster, gpus_per_worker=1))
    with pytest.raises(ValueError, match="gpus_per_worker: 2 workers need 2 GPU"):
        fit_campaign(cfg, progress=False, stepper=RayStepper)


@pytest.mark.parametrize("transport", ["tasks", "graph", "collective"])
def test_killed_worker_rolls_back_and_equals_uninterrupted(
    root, reference, local_ray, driver_without_arrays, transport
):
    """Worker 1 SIGKILLed after step 7; the fit rolls back to step 5 and ends equal to
    one process. Before that, every worker listens on the loopback address alone (with
    "collective", the group's service too)."""
    cfg = config(root, f"killed-{transport}", 2, transport=transport)
    killed, listening = [], set()

    def kill_worker_1(step, stepper):
        if step == 1:
            for w in stepper.where:
                listening.update(_listening(w["pid"]))
        if step == 7 and not killed:
            killed.append(stepper.where[1]["pid"])
            os.kill(stepper.where[1]["pid"], signal.SIGKILL)

    out = fit_campaign(cfg, progress=False, stepper=RayStepper, callback=kill_worker_1)
    assert killed
    assert listening and all(_loopback(a) for a in listening), listening
    assert_equal_params(out.params, reference)
    run = MlflowClient(cfg.tracking.uri).get_run(out.run_id)
    assert run.data.tags["restarts"] == "1"
    assert run.info.status == "FINISHED"


def _listening(pid: int) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Addresses process `pid` listens on over TCP (Linux: /proc)."""
    links = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):  # closed since listed
            links.append(os.readlink(fd))
    inodes = {link[8:-1] for link in links if link.startswith("socket:")}
    out = set()
    for table, words in (("tcp", 1), ("tcp6", 4)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                raw = bytes.fromhex(fields[1].split(":")[0])
                host = b"".join(raw[4 * i : 4 * i + 4][::-1] for i in range(words))
                out.add(ipaddress.ip_address(host))
    return out


def _loopback(address) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


@pytest.mark.parametrize("transport", ["tasks", "collective"])
def test_worker_error_names_worker_exposure_and_step(root, local_ray, transport):
    """A worker whose loss is not finite fails the fit with a message naming it (in a
    group, the other worker, waiting for it in the all-reduce, is not waited for)."""
    bad = root / f"bad-{transport}.zarr"
    shutil.copytree(root / "campaign.zarr", bad)
    victim = Campaign.open(bad).names[0]
    group = zarr.open_group(str(bad), mode="r+")
    slope = group[f"exposures/{victim}/slope"]
    i, j = np.argwhere(~group[f"exposures/{victim}/badpix"][...])[0]
    data = slope[...]
    data[0, i, j] = np.nan
    slope[...] = data
    cfg = config(root, f"failing-{transport}", 2, campaign=bad.name, transport=transport)
    with pytest.raises(RuntimeError, match=rf"worker \d \(exposures [^)]*{victim}.*step 1"):
        fit_campaign(cfg, progress=False, stepper=RayStepper)
    client = MlflowClient(cfg.tracking.uri)
    runs = client.search_runs(
        [client.get_experiment_by_name("ami-scaling").experiment_id],
        filter_string=f"tags.results = '{cfg.results}'",
    )
    assert runs[0].info.status == "FAILED"
    assert victim in runs[0].data.tags["error"]


DRIVER_KILLED_AT_12 = """
import os, signal, sys
from cluster.coordinator import RayStepper
from scaling.config import load_config
from scaling.fit import fit_campaign

def die(step, stepper):
    if step == 12:
        os.kill(os.getpid(), signal.SIGKILL)

fit_campaign(load_config(sys.argv[1]), progress=False, stepper=RayStepper, callback=die)
"""


def test_killed_driver_resumes_to_the_same_result(root, reference, local_ray):
    """The driver, a process joining the session's Ray, SIGKILLs itself after step 12 (the
    last checkpoint is step 10; Ray ends its workers); then `scaling fit --resume`
    finishes the fit."""
    cfg = config(root, "driver", 2)
    address = ray.get_runtime_context().gcs_address
    cfg = dataclasses.replace(cfg, cluster=dataclasses.replace(cfg.cluster, address=address))
    path = write_toml(root / "driver.toml", cfg)
    assert load_config(path) == cfg
    results = root / "driver.zarr"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    first = subprocess.Popen(
        [sys.executable, "-c", DRIVER_KILLED_AT_12, path],
        start_new_session=True,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert first.wait(timeout=600) == -signal.SIGKILL
    with contextlib.suppress(ProcessLookupError):
        os.killpg(first.pid, signal.SIGKILL)  # the Ray processes it started
    assert _steps(results) == [5, 10]
    run_python("-c", CLI, "fit", path, "--resume", "--quiet")
    assert_saved_equal(results, reference)


def _steps(results) -> list[int]:
    try:
        return Results.open(results).checkpoint_steps
    except Exception:
        return []


THREE_NODES = """
import dataclasses, json, sys
import ray
from ray.cluster_utils import Cluster
from cluster.coordinator import RayStepper
from scaling.config import load_config
from scaling.fit import fit_campaign

nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
for _ in range(2):
    nodes.add_node(num_cpus=1)
placement = []

def record(step, stepper):
    if step == 1:
        placement.extend(w["node_id"] for w in stepper.where)

try:
    cfg = load_config(sys.argv[1])
    cfg = dataclasses.replace(cfg, cluster=dataclasses.replace(cfg.cluster, address=nodes.address))
    fit_campaign(cfg, progress=False, stepper=RayStepper, callback=record)
finally:
    ray.shutdown()
    nodes.shutdown()
print(json.dumps(placement))
"""


def test_three_nodes_hold_one_shard_each(root, reference):
    """A head and two more nodes on this machine (in a process of their own: this one
    already runs the session's Ray); STRICT_SPREAD puts a shard on each."""
    cfg = config(root, "nodes", 3)
    cluster = dataclasses.replace(cfg.cluster, cpus_per_worker=1.0, placement="STRICT_SPREAD")
    path = write_toml(root / "nodes.toml", dataclasses.replace(cfg, cluster=cluster))
    placement = json.loads(run_python("-c", THREE_NODES, path).strip().splitlines()[-1])
    assert len(placement) == 3 and len(set(placement)) == 3
    assert_saved_equal(cfg.results, reference)
