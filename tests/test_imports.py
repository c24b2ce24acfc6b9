"""Layering: importing the physics or the engine must not pull in Ray, MLflow or Zarr.

Each import runs in a fresh interpreter and inspects `sys.modules`, so modules already
loaded by other tests cannot hide (or fake) a leak. `model` is always checked; `scaling`
is checked whenever the package can be found (it is part of this distribution).
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("ray", "mlflow", "zarr")
"""Optional heavy dependencies: only `cluster/` and explicit `scaling` submodules may load them."""

PACKAGES = {"model": (*HEAVY, "scaling", "cluster")}
if importlib.util.find_spec("scaling") is not None:
    PACKAGES["scaling"] = (*HEAVY, "cluster")

ROOT = Path(__file__).resolve().parents[1]


def _loaded_after_import(package: str) -> set[str]:
    code = (
        "import json, sys\n"
        f"import {package}\n"
        "print(json.dumps(sorted({name.split('.')[0] for name in sys.modules})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def test_model_is_always_checked_and_the_probe_sees_a_leak():
    assert "model" in PACKAGES
    assert "zarr" in _loaded_after_import("zarr")  # a real dependency, so it must show


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_import_does_not_load_heavy_dependencies(package):
    loaded = _loaded_after_import(package)
    assert package in loaded  # the probe works
    leaked = sorted(loaded & set(PACKAGES[package]))
    assert not leaked, f"`import {package}` loads {leaked}"
