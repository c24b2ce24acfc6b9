"""Layering: what an import loads, and which package may import which.

Loading: importing the physics or the engine must not pull in Ray, MLflow or Zarr, and a
Ray worker must not pull in MLflow or matplotlib. Each import runs in a fresh interpreter
and inspects `sys.modules`, so modules already loaded by other tests cannot hide (or fake)
a leak. `model` is always checked; `scaling` and `cluster` whenever they can be found
(they are part of this distribution).

Source: every module of `model/`, `scaling/` and `cluster/` is parsed, and each of its
imports, including lazy ones inside functions, must point at its own layer or a lower one.
"""

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("ray", "mlflow", "zarr")
"""Optional heavy dependencies: only `cluster/` and explicit `scaling` submodules may load them."""

PACKAGES = {"model": (*HEAVY, "scaling", "cluster")}
"""Module → top-level packages that importing it must not load."""
if importlib.util.find_spec("scaling") is not None:
    PACKAGES["scaling"] = (*HEAVY, "cluster")
if importlib.util.find_spec("cluster") is not None:
    PACKAGES["cluster.worker"] = ("mlflow", "matplotlib")  # tracking and pictures: the driver's

ROOT = Path(__file__).resolve().parents[1]


def _loaded_after_import(module: str) -> set[str]:
    """Names of every module in `sys.modules` after `import module` in a fresh interpreter."""
    code = f"import json, sys\nimport {module}\nprint(json.dumps(sorted(sys.modules)))\n"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def test_model_is_always_checked_and_the_probe_sees_a_leak():
    assert "model" in PACKAGES
    assert "zarr" in _loaded_after_import("zarr")  # a real dependency, so it must show


@pytest.mark.parametrize("module", sorted(PACKAGES))
def test_import_does_not_load_heavy_dependencies(module):
    loaded = _loaded_after_import(module)
    assert module in loaded  # the probe works
    leaked = sorted({name.split(".")[0] for name in loaded} & set(PACKAGES[module]))
    assert not leaked, f"`import {module}` loads {leaked}"


# --- layers of the source ---------------------------------------------------------------

LAYERS = {
    "model": 0,
    "scaling.config": 1,
    "scaling.data": 2,
    "scaling": 2,
    "scaling.fitting": 3,
    "scaling.report": 4,
    "scaling.cli": 5,
    "scaling.fit": 5,
    "scaling.bench": 5,
    "scaling.flatbench": 5,
    "scaling.seed_figures": 5,
    "scaling.dithers": 5,
    "scaling.simulate": 5,
    "scaling.study": 5,
    "cluster": 6,
}
"""Module (and, except the bare `scaling`, its submodules) → layer; a module may import only
from its own layer or lower ones. `scaling.config` and `scaling.data` form one layer in
which data may import config but not the other way round, so config sits just below.
The `scaling` package itself re-exports config and data, so it ranks with data. Modules
of other packages (the standard library, third parties) have no layer and are not checked."""

OURS = ("model", "scaling", "cluster")


def layer(module: str) -> int | None:
    """Layer of `module` (longest matching entry of `LAYERS`); None if it is not ours.

    Raises:
        KeyError: one of our modules that `LAYERS` does not place.
    """
    if module.split(".")[0] not in OURS:
        return None
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if module == prefix or (prefix != "scaling" and module.startswith(prefix + ".")):
            return LAYERS[prefix]
    raise KeyError(f"{module} has no layer: add it to LAYERS")


def imported_modules(source: str, module: str, is_package: bool, known: set[str]):
    """(line, module) of every import in `source`, at any depth (lazy imports included).

    Relative imports are resolved against `module`; `from package import name` names the
    submodule `package.name` when that is one of the `known` modules.
    """
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            parts = package[: len(package) - node.level + 1] if node.level else []
            base = ".".join([*parts, *([node.module] if node.module else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield node.lineno, sub if sub in known else base


def upward_imports(source: str, module: str, is_package: bool = False, known=()) -> list[str]:
    """'module:line imports target' for each import of `source` from a higher layer."""
    own = layer(module)
    return [
        f"{module}:{line} imports {target}"
        for line, target in imported_modules(source, module, is_package, set(known))
        if (rank := layer(target)) is not None and rank > own
    ]


def _our_modules() -> dict[str, Path]:
    """Module name → file of every module under model/, scaling/ and cluster/."""
    modules = {}
    for top in OURS:
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def test_layer_checker_flags_upward_imports():
    """The checker sees lazy, relative and `from package import module` imports upwards,
    and lets downward and same-layer ones through."""
    known = {"scaling.report.plots", "scaling.fitting.engine", "scaling.data.store"}
    lazy = "import numpy\n\ndef f():\n    from scaling.fitting.engine import split\n"
    assert upward_imports(lazy, "scaling.config.load") == [
        "scaling.config.load:4 imports scaling.fitting.engine"
    ]
    relative = "from ..report import plots\nfrom . import params\n"
    assert upward_imports(relative, "scaling.fitting.engine", known=known) == [
        "scaling.fitting.engine:1 imports scaling.report.plots"
    ]
    assert upward_imports("from scaling import load_config\n", "scaling.config.checks") == [
        "scaling.config.checks:1 imports scaling"  # the package, which loads data
    ]
    assert upward_imports(
        "from scaling import fit\n", "scaling.report.plots", known={"scaling.fit"}
    )
    assert upward_imports("from scaling.data import store\n", "scaling.config.load")
    assert upward_imports("import cluster.worker\n", "model.optics")
    assert upward_imports("import scaling\n", "model")
    downward = "import ray\nfrom scaling.data.store import Campaign\nfrom model import ami_model\n"
    assert upward_imports(downward, "cluster.worker") == []
    assert upward_imports("from scaling.config import FitConfig\n", "scaling.data.store") == []
    assert upward_imports("from scaling.bench import main\n", "scaling.cli") == []
    with pytest.raises(KeyError, match=r"scaling\.unplaced has no layer"):
        layer("scaling.unplaced")


def test_no_module_imports_from_a_higher_layer():
    modules = _our_modules()
    assert {"model", "scaling.config.load", "scaling.fitting.engine", "cluster.worker"} <= set(
        modules
    )
    upward = []
    for module, path in modules.items():
        source = path.read_text()
        upward += upward_imports(source, module, path.name == "__init__.py", modules)
    assert not upward, "\n".join(upward)
