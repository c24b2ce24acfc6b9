"""Suite-wide setup: float64 JAX, no implicit rank promotion, and session-scoped tiny models
shared by the physics tests.

`import model` turns float64 on; the assertion below fails loudly if that ever changes,
because every tolerance in the physics tests assumes double precision.

Implicit rank promotion (`x + y` with arrays of different rank) raises, as in equinox's own
suite: every broadcast in `model/` and `scaling/` must be spelled out. The environment
variable carries the same setting into the subprocesses and Ray workers the tests start.

One JAX persistent compilation cache serves the whole run (a fresh folder, removed at the
end; its environment variables reach subprocesses and Ray workers): fits of the same
campaign shapes compile to the same programs (learning rates and regulariser weights are
traced), so later tests load what earlier ones compiled.
"""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import jax
import pytest

CACHE = tempfile.mkdtemp(prefix="ami-scaling-tests-jax-")
atexit.register(shutil.rmtree, CACHE, ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = CACHE
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
jax.config.update("jax_compilation_cache_dir", CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

import model  # noqa: E402, F401  (after the cache settings: the first compile fixes them)
from tests.helpers import (  # noqa: E402
    generic_ami_params,
    generic_field_params,
    tiny_ami_model,
    tiny_field_model,
)

jax.config.update("jax_numpy_rank_promotion", "raise")
os.environ["JAX_NUMPY_RANK_PROMOTION"] = "raise"  # subprocesses and Ray workers
assert jax.config.jax_enable_x64, "import model must enable float64"


@pytest.fixture(scope="session")
def ami():
    """Tiny NIRISS AMI exposure model (16 px, 2× oversampled, 64² pupil, 3 wavelengths)."""
    return tiny_ami_model()


@pytest.fixture(scope="session")
def field():
    """Tiny filled-aperture star-field model on the same grids."""
    return tiny_field_model()


@pytest.fixture(scope="session")
def ami_params():
    """Generic resolved-source parameters: off-centre, aberrated, non-flat image, BFE, …"""
    return generic_ami_params()


@pytest.fixture(scope="session")
def field_params():
    """Generic three-star field parameters."""
    return generic_field_params()


DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "jw01093"
"""The real NIRISS AMI files of JWST program 1093, beside the repository (`../shared/`)."""


@pytest.fixture(scope="session")
def real_files() -> list[Path]:
    """The 20 real `_cal` files; the test is skipped where they are absent (a user's clone)."""
    files = sorted(DATA.glob("*_cal.fits"))
    if not files:
        pytest.skip(f"real JWST data not present at {DATA}")
    return files


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray cluster per test process (6 CPU slots: the sweep's trials), started by
    the first test that needs it and stopped at the end of the session. A test process
    starts Ray at most once: Ray may crash a process that starts it again while threads of
    the first session remain (ray-project/ray#31145)."""
    import ray

    from cluster.coordinator import connect
    from scaling.config import ClusterConfig

    started = connect(ClusterConfig(workers=6, cpus_per_worker=1.0))
    yield
    if started:
        ray.shutdown()


def pytest_collection_modifyitems(items):
    """The Ray tests (the longest modules: test_cluster, test_sweep) first: `make test`'s
    2 pytest-xdist workers take whole modules in this order (`--no-loadscope-reorder` in
    pyproject.toml keeps xdist from reordering them by size), so those two start side by
    side instead of queueing behind each other on one worker."""
    items.sort(key=lambda item: item.get_closest_marker("ray") is None)
