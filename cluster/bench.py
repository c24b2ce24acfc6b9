"""Side-by-side timing of one fit in process and on N Ray workers, over campaign sizes.

    python -m cluster.bench configs/io_demo.toml configs/io_demo_fit.toml \\
        --workers 0,1,2 --steps 60 --out out/cluster_bench.json [--gpus-per-worker 1]
    python -m cluster.bench configs/io_campaign_large.toml configs/io_demo_fit.toml \\
        --exposures 50,100,200,400 --workers 1,2 --steps 6 --warmup 2 --psf-pad 8 \\
        --out out/scaling.json

Simulates and ingests the campaign into a temporary folder (MLflow there too). With
`--exposures` it fits sub-campaigns of it: for each size, whole observations (an epoch,
or a calibrator visit) in time order until at least that many exposures (the first
epochs and the calibrators among them). Each size is fitted once per worker count (0: in
this process) with a fresh persistent compilation cache (cold), then, on workers, its
first step is timed again by a one-step fit with that cache (warm). Per run it records:

* the median step time after `--warmup` steps, exposure-steps per second and the time
  per exposure-step;
* each worker's median compute time, and the coordinator's share of the step: the
  median of each step's time beyond its slowest worker's compute (Ray's transfers, the
  gradient sum, the shared update) as milliseconds and as a fraction of the step;
* the resident host memory of the driver when the fit starts and its peak during the
  fit, and the peak of each worker (and the peak device memory of workers on GPUs);
* the time to gather and write the checkpoint (the fit writes one, at its last step);
* the first step with a cold and a warm compile cache, and each beyond the median step
  (what compiling, or loading from the cache, adds);
* the final loss, which must agree across worker counts to float64 round-off.

With `--transport collective,tasks,graph` each worker count is fitted once per transport of the
step (`ClusterConfig.transport`), side by side.

It writes the JSON, prints a table, and with `--exposures` draws a PNG beside the JSON:
time per exposure-step and the coordinator's share against exposures.
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
from cluster.coordinator import connect
from cluster.worker import device_peaks, host_peak_bytes, reset_host_peak
from scaling.config import CampaignConfig, ClusterConfig, FitConfig, load_config
from scaling.data.ingest import ingest
from scaling.data.store import Campaign
from scaling.fit import fit_campaign
from scaling.simulate import simulate

WARMUP = 5
"""Steps left out of the medians by default (compilation and first transfers)."""


def _memory(stepper) -> dict:
    if hasattr(stepper, "workers"):
        peaks = ray.get([w.memory_stats.remote() for w in stepper.workers])
        return {f"worker{i}": p for i, p in enumerate(peaks)}
    return {"driver": device_peaks()}


def _overhead(history: dict, warmup: int) -> tuple[float | None, float | None]:
    """(median ms, median fraction of the step) over steps after `warmup` of the step
    time beyond its slowest worker's compute: what Ray and the coordinator add (None, None
    in process)."""
    workers = [np.asarray(v) for k, v in history.items() if k.startswith("worker_time.")]
    if not workers:
        return None, None
    steps = np.asarray(history["step_time"])[warmup:]
    extra = steps - np.max(workers, axis=0)[warmup:]
    return float(1000 * np.median(extra)), float(np.median(extra / steps))


def _with_workers(
    config: FitConfig, workers: int, gpus: float, cache: str, transport: str
) -> FitConfig:
    cluster = dataclasses.replace(
        config.cluster,
        workers=workers,
        gpus_per_worker=gpus,
        compile_cache=cache,
        transport=transport,
    )
    return dataclasses.replace(config, cluster=cluster)


def time_fit(
    config: FitConfig,
    workers: int,
    gpus: float,
    exposures: int,
    warmup: int,
    cache: str,
    transport: str = ClusterConfig.transport,
) -> dict:
    """Fit with `workers` Ray workers (0: in process) and summarise its timings; on
    workers, time a one-step fit with the same compile cache afterwards (warm)."""
    config = _with_workers(config, workers, gpus, cache, transport)
    seen: dict = {}

    def at_end(step, stepper):
        if step == config.steps:
            seen["memory"] = _memory(stepper)
            seen["placement"] = getattr(stepper, "where", [])

    reset_host_peak()
    driver_start = host_peak_bytes()
    began = time.perf_counter()
    outcome = fit_campaign(config, progress=False, stepper=stepper_for(config), callback=at_end)
    wall = time.perf_counter() - began
    driver_peak = host_peak_bytes()
    steps = np.asarray(outcome.history["step_time"])
    median = float(np.median(steps[warmup:]))
    overhead_ms, share = _overhead(outcome.history, warmup)
    warm = None
    if workers:
        again = dataclasses.replace(
            config, steps=1, checkpoint_every=1, results=config.results + "-warm"
        )
        warm = float(
            fit_campaign(again, progress=False, stepper=stepper_for(again)).history["step_time"][0]
        )
    return {
        "workers": workers,
        "exposures": exposures,
        "gpus_per_worker": gpus,
        "transport": config.cluster.transport if workers else "",
        "wall_s": wall,
        "first_step_s": float(steps[0]),
        "first_step_warm_cache_s": warm,
        "first_step_beyond_median_s": float(steps[0]) - median,
        "first_step_warm_cache_beyond_median_s": None if warm is None else warm - median,
        "median_step_s": median,
        "exposure_steps_per_s": exposures / median,
        "exposure_step_ms": 1000 * median / exposures,
        "median_ray_overhead_ms": overhead_ms,
        "coordinator_share": share,
        "median_worker_compute_s": {
            k: float(np.median(np.asarray(v)[warmup:]))
            for k, v in outcome.history.items()
            if k.startswith("worker_time.")
        },
        "driver_start_host_bytes": driver_start,
        "driver_peak_host_bytes": driver_peak,
        "peak_bytes": seen.get("memory", {}),
        "checkpoint_s": outcome.checkpoint_seconds,
        "placement": [
            {k: w[k] for k in ("index", "node_id", "devices", "cost", "batches")}
            for w in seen.get("placement", [])
        ],
        "final_loss": float(outcome.history["total"][-1]),
        "reduced_chi2": outcome.reduced_chi2,
    }


def sub_campaigns(store: str, sizes: list[int]) -> list[tuple[int, ...]]:
    """For each size, the observation numbers of the first whole observations of `store`
    in time order that hold at least that many exposures (all of them at most)."""
    campaign = Campaign.open(store)
    starts: dict[int, float] = {}
    for e in campaign.exposures:
        starts[e.observation] = min(e.expmid, starts.get(e.observation, np.inf))
    order = sorted(starts, key=starts.get)
    counts = {o: sum(e.observation == o for e in campaign.exposures) for o in order}
    cumulative = np.cumsum([counts[o] for o in order])
    return [tuple(order[: int(np.searchsorted(cumulative, n)) + 1]) for n in sizes]


def _line(run: dict) -> str:
    share = run["coordinator_share"]
    warm = run["first_step_warm_cache_beyond_median_s"]
    workers = [v["host"] for v in run["peak_bytes"].values() if "host" in v]
    start, peak = run["driver_start_host_bytes"], run["driver_peak_host_bytes"]
    return (
        f"{run['exposures']:>9} {run['workers']:>7} {run['transport']:>9} "
        f"{1000 * run['median_step_s']:>9.1f} "
        f"{run['exposure_step_ms']:>8.2f} {run['exposure_steps_per_s']:>8.1f} "
        f"{'-' if share is None else f'{100 * share:.1f}%':>7} "
        f"{run['first_step_beyond_median_s']:>7.1f} {'-' if warm is None else f'{warm:.1f}':>6} "
        f"{np.median(run['checkpoint_s']):>7.2f} "
        f"{f'{start / 2**20:.0f}+{(peak - start) / 2**20:.0f}':>11} "
        f"{'/'.join(f'{b / 2**20:.0f}' for b in workers) or '-':>11}"
    )


def table(runs: list[dict]) -> str:
    """One line per run (times s or ms, memory MiB): "cold s" and "warm s" are the first
    step beyond the median step with a cold and a warm compile cache; "driver MiB" its
    resident memory at the fit's start + the most the fit added."""
    head = (
        "exposures workers transport   ms/step ms/exp-s  exp-s/s  coord.  cold s warm s ckpt s "
        " driver MiB  worker MiB"
    )
    return "\n".join([head, *map(_line, runs)])


def plot(runs: list[dict], path: Path) -> None:
    """Time per exposure-step and coordinator share against exposures, a line per worker
    count."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    left, right = fig.subplots(1, 2)
    for n in sorted({r["workers"] for r in runs}):
        mine = sorted((r for r in runs if r["workers"] == n), key=lambda r: r["exposures"])
        x = [r["exposures"] for r in mine]
        label = f"{n} worker{'s' if n > 1 else ''}" if n else "in process"
        left.plot(x, [r["exposure_step_ms"] for r in mine], "o-", label=label)
        if n:
            right.plot(x, [100 * r["coordinator_share"] for r in mine], "o-", label=label)
    left.set(xlabel="exposures", ylabel="ms per exposure-step", xscale="log", ylim=(0, None))
    right.set(xlabel="exposures", ylabel="coordinator share of the step (%)", xscale="log")
    right.axhline(5, color="grey", ls=":", label="5%")
    for ax in (left, right):
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _runs(campaign, fit, root: Path, workers, steps, gpus, sizes, warmup, transports):
    """(runs, final-loss spread per size, exposures of the campaign) in folder `root`."""
    files = simulate(campaign, root / "sim", progress=False)
    store = str(root / "campaign.zarr")
    ingest([str(f) for f in files], store, progress=False)
    runs, spreads = [], {}
    for selection in sub_campaigns(store, sizes or [len(files)]):
        count = len(Campaign.open(store).select(observation=selection).names)
        losses = []
        pairs = [(w, t) for w in workers for t in (transports if w else [ClusterConfig.transport])]
        for n, transport in pairs:
            config = dataclasses.replace(
                fit,
                campaign=store,
                results=str(root / f"results{count}-{n}-{transport}.zarr"),
                truth="",
                steps=steps,
                checkpoint_every=steps,
                select=dataclasses.replace(fit.select, observations=selection),
                tracking=dataclasses.replace(fit.tracking, uri=f"sqlite:///{root}/mlflow.db"),
            )
            cache = str(root / f"cache{count}-{n}-{transport}")
            runs.append(time_fit(config, n, gpus if n else 0.0, count, warmup, cache, transport))
            losses.append(runs[-1]["final_loss"])
            print(_line(runs[-1]), flush=True)
        spreads[str(count)] = (max(losses) - min(losses)) / abs(losses[0])
    return runs, spreads, len(files)


def bench(
    campaign: CampaignConfig,
    fit: FitConfig,
    workers: list[int],
    steps: int,
    gpus: float,
    sizes: list[int] | None = None,
    warmup: int = WARMUP,
    psf_pad: int | None = None,
    transports: tuple[str, ...] = (ClusterConfig.transport,),
) -> dict:
    """Timings of the same fit for each campaign size and worker count, with host
    details."""
    if psf_pad is not None:
        fit = dataclasses.replace(
            fit, instrument=dataclasses.replace(fit.instrument, psf_pad=psf_pad)
        )
    owns_ray = max(workers) > 0 and connect(dataclasses.replace(fit.cluster, workers=max(workers)))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            runs, spreads, exposures = _runs(
                campaign, fit, Path(tmp), workers, steps, gpus, sizes, warmup, transports
            )
    finally:
        if owns_ray:
            ray.shutdown()
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
        "exposures": exposures,
        "steps": steps,
        "warmup": warmup,
        "psf_pad": fit.instrument.psf_pad,
        "final_loss_spread": spreads,
        "runs": runs,
    }


def _ints(text: str) -> list[int]:
    return [int(n) for n in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.bench", description=__doc__)
    parser.add_argument("campaign", type=Path, help="campaign config (kind = 'io')")
    parser.add_argument("fit", type=Path, help="fit config (kind = 'fit')")
    parser.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    parser.add_argument("--exposures", default="", help="comma-separated sub-campaign sizes")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=WARMUP, help="steps left out of medians")
    parser.add_argument("--psf-pad", type=int, help="the fit's instrument.psf_pad instead")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0)
    parser.add_argument(
        "--transport",
        default=ClusterConfig.transport,
        help="comma-separated step transports (collective,tasks,graph)",
    )
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    campaign, fit = load_config(args.campaign), load_config(args.fit)
    if not isinstance(campaign, CampaignConfig) or not isinstance(fit, FitConfig):
        print(f"{parser.prog}: error: expected an 'io' and a 'fit' config", file=sys.stderr)
        return 2
    if args.steps <= args.warmup:
        print(
            f"{parser.prog}: error: --steps must exceed --warmup ({args.warmup})", file=sys.stderr
        )
        return 2
    sizes = _ints(args.exposures) if args.exposures else None
    print(table([]), flush=True)
    report = bench(
        campaign, fit, _ints(args.workers), args.steps, args.gpus_per_worker, sizes,
        args.warmup, args.psf_pad, tuple(args.transport.split(",")),
    )  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    if sizes:
        plot(report["runs"], args.out.with_suffix(".png"))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
