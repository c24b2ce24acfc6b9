"""The cluster launch files parse, keep the dashboard on loopback and ask for GPUs; the
command line refuses workers where only the in-process entry point is used."""

from pathlib import Path

import yaml

from scaling.cli import EXIT_USAGE, main

LAUNCH = Path(__file__).parent.parent / "cluster" / "launch"


def test_ray_up_yaml_has_gpu_workers_and_a_loopback_dashboard():
    spec = yaml.safe_load((LAUNCH / "ray-cluster.yaml").read_text())
    assert spec["head_node_type"] in spec["available_node_types"]
    assert any("--dashboard-host=127.0.0.1" in c for c in spec["head_start_ray_commands"])
    assert any("[cuda" in c for c in spec["setup_commands"])


def test_kuberay_manifest_requests_one_gpu_per_worker_pod():
    spec = yaml.safe_load((LAUNCH / "kuberay-raycluster.yaml").read_text())
    assert spec["kind"] == "RayCluster"
    assert spec["spec"]["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    (group,) = spec["spec"]["workerGroupSpecs"]
    (container,) = group["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_in_process_entry_point_refuses_workers(capsys):
    assert main(["fit", "configs/io_test_fit.toml", "--workers", "2"]) == EXIT_USAGE
    assert "cluster.workers" in capsys.readouterr().err
