"""What a large shared map costs the coordinator per step (JSON line per size).

    python -m cluster.mapbench --sizes 512,1024 --workers 2

The pixel-response map is the largest shared gradient a star-field fit sums. For each
map side, the coordinator's two per-step operations on the shared tree of a star field
(flat, 7 aberrations, 15 stars) are timed as `RayStepper.step` runs them: the fixed-order
sum of the workers' partial gradients (`cluster.coordinator._sum`) and the shared update
(`Fitter.shared_step`: Fisher scaling, sgd, projection, apply; result fetched to host).
Medians of 20 after 3 warm-up calls.
"""

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from cluster.coordinator import _sum
from model import field_model
from scaling.config import OptimiserConfig
from scaling.fitting.engine import FitSettings, join, make_fitter


def time_map(npix: int, workers: int, repeats: int = 20) -> dict:
    """Median seconds of the sum and of the update for an npix² map."""
    model = field_model(npix=8, oversample=1, pupil_npix=16, nwavels=1)
    shared = {
        "flat": jnp.ones((npix, npix)),
        "aberrations": {"F430M": jnp.zeros(7)},
        "positions": jnp.zeros((15, 2)),
        "log_fluxes": jnp.zeros(15),
    }
    optimisers = {name: OptimiserConfig("sgd", 0.5, precondition=True) for name in shared}
    empty = {"epoch": {}, "exposure": {}}
    scale = join(jax.tree.map(lambda x: x + 2.0, {"shared": shared}), empty)
    fitter = make_fitter(model, join({"shared": shared}, empty), [], FitSettings(optimisers), scale)
    state = fitter.shared_optimiser.init({"shared": shared})
    rng = np.random.default_rng(0)
    parts = [
        jax.tree.map(lambda x: rng.standard_normal(np.shape(x)), shared) for _ in range(workers)
    ]
    host = jax.device_get(shared)
    sums, updates = [], []
    for i in range(repeats + 3):
        began = time.perf_counter()
        grads = {"shared": _sum(parts)}
        summed = time.perf_counter()
        new, _, sumsq = fitter.shared_step({"shared": host}, state, grads)
        jax.device_get(new["shared"]), float(sumsq)
        if i >= 3:
            sums.append(summed - began)
            updates.append(time.perf_counter() - summed)
    return {
        "map": f"{npix}x{npix}",
        "workers": workers,
        "sum_ms": 1e3 * float(np.median(sums)),
        "update_ms": 1e3 * float(np.median(updates)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.mapbench", description=__doc__)
    parser.add_argument("--sizes", default="512,1024", help="comma-separated map sides")
    parser.add_argument("--workers", type=int, default=2, help="partial gradients summed")
    args = parser.parse_args(argv)
    for npix in (int(n) for n in args.sizes.split(",")):
        print(json.dumps(time_map(npix, args.workers)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
