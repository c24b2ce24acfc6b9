"""Side-by-side timing of one fit in process and on N Ray workers (JSON).

    python -m cluster.bench configs/io_demo.toml configs/io_demo_fit.toml \\
        --workers 0,1,2 --steps 60 --out out/cluster_bench.json [--gpus-per-worker 1]

Simulates and ingests the campaign into a temporary folder (MLflow there too), then fits
it once per worker count (0: in this process) and records the median step time after
the first five steps, the time per exposure-step, each worker's median compute time, the
median of each step's time beyond its slowest worker's compute (Ray and the coordinator:
the shared update, the gradient sum, the transfers), the peak device memory each worker
reports (GPUs), and the final loss, which must agree across worker counts to float64
round-off.
"""

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import ray

from cluster.cli import stepper_for
from cluster.worker import device_peaks
from scaling.config import CampaignConfig, FitConfig, load_config
from scaling.data.ingest import ingest
from scaling.fit import fit_campaign
from scaling.simulate import simulate

WARMUP = 5
"""Steps left out of the median (compilation and first transfers)."""


def _memory(stepper) -> dict:
    if hasattr(stepper, "workers"):
        peaks = ray.get([w.memory_stats.remote() for w in stepper.workers])
        return {f"worker{i}": p for i, p in enumerate(peaks)}
    return {"driver": device_peaks()}


def _overhead_ms(history: dict) -> float | None:
    """Median over steps after the warm-up of the step time minus its slowest worker's
    compute: what Ray and the coordinator add (None in process)."""
    workers = [np.asarray(v) for k, v in history.items() if k.startswith("worker_time.")]
    if not workers:
        return None
    extra = np.asarray(history["step_time"]) - np.max(workers, axis=0)
    return float(1000 * np.median(extra[WARMUP:]))


def time_fit(config: FitConfig, workers: int, gpus: float, exposures: int) -> dict:
    """Fit with `workers` Ray workers (0: in process) and summarise its timings."""
    cluster = dataclasses.replace(config.cluster, workers=workers, gpus_per_worker=gpus)
    config = dataclasses.replace(config, cluster=cluster)
    seen: dict = {}

    def at_end(step, stepper):
        if step == config.steps:
            seen["memory"] = _memory(stepper)
            seen["placement"] = getattr(stepper, "where", [])

    began = time.perf_counter()
    outcome = fit_campaign(config, progress=False, stepper=stepper_for(config), callback=at_end)
    wall = time.perf_counter() - began
    steps = np.asarray(outcome.history["step_time"])
    median = float(np.median(steps[WARMUP:]))
    return {
        "workers": workers,
        "gpus_per_worker": gpus,
        "wall_s": wall,
        "first_step_s": float(steps[0]),
        "median_step_s": median,
        "exposure_step_ms": 1000 * median / exposures,
        "median_ray_overhead_ms": _overhead_ms(outcome.history),
        "median_worker_compute_s": {
            k: float(np.median(np.asarray(v)[WARMUP:]))
            for k, v in outcome.history.items()
            if k.startswith("worker_time.")
        },
        "peak_device_bytes": seen.get("memory", {}),
        "placement": [
            {k: w[k] for k in ("index", "node_id", "devices", "cost")}
            for w in seen.get("placement", [])
        ],
        "final_loss": float(outcome.history["total"][-1]),
        "reduced_chi2": outcome.reduced_chi2,
    }


def bench(
    campaign: CampaignConfig, fit: FitConfig, workers: list[int], steps: int, gpus: float
) -> dict:
    """Timings of the same fit for each worker count, with host details."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = simulate(campaign, root / "sim", progress=False)
        ingest([str(f) for f in files], root / "campaign.zarr", progress=False)
        runs = []
        for n in workers:
            config = dataclasses.replace(
                fit,
                campaign=str(root / "campaign.zarr"),
                results=str(root / f"results{n}.zarr"),
                truth="",
                steps=steps,
                checkpoint_every=steps,
                tracking=dataclasses.replace(fit.tracking, uri=f"sqlite:///{root}/mlflow.db"),
            )
            runs.append(time_fit(config, n, gpus if n else 0.0, len(files)))
            print(
                f"workers {n}: {1000 * runs[-1]['median_step_s']:.1f} ms/step, "
                f"{runs[-1]['exposure_step_ms']:.2f} ms/exposure-step, Ray and coordinator "
                f"{runs[-1]['median_ray_overhead_ms'] or 0:.2f} ms/step",
                flush=True,
            )
    base = runs[0]["median_step_s"]
    for run in runs:
        run["step_time_vs_first"] = run["median_step_s"] / base
    losses = [r["final_loss"] for r in runs]
    return {
        "command": " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "host": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "jax": jax.__version__,
            "ray": ray.__version__,
            "devices": [str(d) for d in jax.devices()],
        },
        "exposures": len(files),
        "steps": steps,
        "final_loss_spread": (max(losses) - min(losses)) / abs(losses[0]),
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.bench", description=__doc__)
    parser.add_argument("campaign", type=Path, help="campaign config (kind = 'io')")
    parser.add_argument("fit", type=Path, help="fit config (kind = 'fit')")
    parser.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--gpus-per-worker", type=float, default=0.0)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    campaign, fit = load_config(args.campaign), load_config(args.fit)
    if not isinstance(campaign, CampaignConfig) or not isinstance(fit, FitConfig):
        print(f"{parser.prog}: error: expected an 'io' and a 'fit' config", file=sys.stderr)
        return 2
    if args.steps <= WARMUP:
        print(f"{parser.prog}: error: --steps must exceed {WARMUP}", file=sys.stderr)
        return 2
    workers = [int(n) for n in args.workers.split(",")]
    report = bench(campaign, fit, workers, args.steps, args.gpus_per_worker)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
