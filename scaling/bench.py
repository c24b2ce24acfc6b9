"""`scaling bench`: the engine's exposure-gradients per second against the plain loop.

    scaling bench CONFIG.toml --out bench.json [--repeats N]

Simulates the campaign of CONFIG into a temporary folder, ingests it, and builds the
model, starting parameters and settings as `scaling fit` does (default optimisers and
regularisers, image and instrument sizes from CONFIG). Then, in one process, with the
repeats of each measurement interleaved so that load from other processes hits all alike:

* **engine**: one jitted, vmapped value-and-gradient of `scaling.fitting.objective.loss` over all
  batches (the work of a step), and one whole `Fitter.step` (gradient, updates, summary);
* **reference**: `scaling.fitting.reference.reference_value_and_grad`, a Python loop over the
  exposures with one jitted value-and-gradient each, as the notebooks fit;
* **logging**: `MetricLog.add` of one step's metrics into an embedded SQLite MLflow store,
  averaged over enough steps to include its batched sends.

Every call is compiled by a first call, timed apart; only warm calls count. All times are
wall-clock seconds after `jax.block_until_ready`.
"""

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
from tqdm.auto import tqdm

from model import ExposureModel
from scaling.config import CampaignConfig, FitConfig, load_config
from scaling.data.ingest import ingest
from scaling.fitting.engine import FitSettings, make_fitter
from scaling.fitting.objective import loss
from scaling.fitting.params import Batch, Observation, make_batches
from scaling.fitting.reference import reference_value_and_grad
from scaling.simulate import simulate

TARGET_SPEEDUP = 10.0
"""The engine should compute exposure-gradients this many times faster than the loop."""

LOG_STEPS = 200
"""Steps of metrics logged to time `MetricLog.add` (several of its batched sends)."""


@dataclass
class Setup:
    """A simulated campaign ready to fit: what both the engine and the loop consume."""

    model: ExposureModel
    params: dict
    observations: list[Observation]
    names: list[str]
    epochs: list[str]
    batches: list[Batch]
    settings: FitSettings


def fit_config(campaign: CampaignConfig, store: Path) -> FitConfig:
    """The default fit of a simulated campaign: its sizes, read noise and store."""
    return FitConfig(
        campaign=str(store),
        results=str(store.with_name("results.zarr")),
        image_npix=campaign.io.image_npix,
        read_noise=campaign.truth.read_noise,
        instrument=campaign.instrument,
    )


def prepare(campaign: CampaignConfig, folder: Path) -> Setup:
    """Simulate `campaign` into `folder`, ingest it and build what a fit starts from."""
    from scaling.data.store import Campaign
    from scaling.fitting.start import initial_params, load_observations, settings_from

    files = simulate(campaign, folder / "simulation", progress=False)
    store = folder / "campaign.zarr"
    ingest([str(f) for f in files], store, progress=False)
    config = fit_config(campaign, store)
    opened = Campaign.open(store)
    names = list(opened.names)
    epochs = sorted(opened.epochs)
    observations = load_observations(opened, names)
    model = config.instrument.build(sorted({o.spec.filter for o in observations}))
    params = initial_params(config, model, observations, epochs)
    batches = make_batches(observations, names, epochs)
    settings = settings_from(config, observations)
    return Setup(model, params, observations, names, epochs, batches, settings)


def seconds(call: Callable[[], object]) -> float:
    """Wall-clock seconds of `call()` until its result is computed."""
    start = time.perf_counter()
    jax.block_until_ready(call())
    return time.perf_counter() - start


def max_relative_difference(grads, reference) -> float:
    """max over leaves of max|g − r| / max|r| (each leaf relative to its own scale)."""
    worst = 0.0
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(reference), strict=True):
        scale = float(jnp.max(jnp.abs(r)))
        diff = float(jnp.max(jnp.abs(g - r)))
        worst = max(worst, diff / scale if scale > 0 else diff)
    return worst


def log_seconds(folder: Path, metrics: dict[str, float], steps: int = LOG_STEPS) -> float:
    """Mean seconds of one step's `MetricLog.add` into a fresh SQLite MLflow store."""
    from mlflow.tracking import MlflowClient

    from scaling.report.tracking import MetricLog

    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.create_experiment("bench", artifact_location=str(folder / "mlruns"))
    log = MetricLog(client, client.create_run(experiment).info.run_id)
    start = time.perf_counter()
    for step in range(steps):
        log.add(step, metrics)
    log.flush()
    return (time.perf_counter() - start) / steps


def timing(first: float, warm: list[float]) -> dict:
    """JSON record of a measurement: median and every warm repeat, and the first call, s."""
    return {"median_s": statistics.median(warm), "all_s": warm, "first_call_s": first}


def host_info() -> dict:
    """Platform, processor, CPU count, load and JAX backend of this process."""
    model_name = ""
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            model_name = next((ln.split(":", 1)[1].strip() for ln in f if "model name" in ln), "")
    return {
        "platform": platform.platform(),
        "processor": model_name or platform.processor(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average": list(os.getloadavg()),
        "python": platform.python_version(),
        "jax_version": jax.__version__,
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
    }


def measure(setup: Setup, folder: Path, repeats: int, progress: bool = True) -> dict:
    """Compile, then time the engine, its whole step and the loop `repeats` times each."""
    s = setup
    reg = s.settings.reg_weights
    engine = eqx.filter_jit(jax.value_and_grad(loss, argnums=1))
    fitter = make_fitter(s.model, s.params, s.batches, s.settings)
    state = fitter.init(s.params)
    calls = {
        "engine": lambda: engine(s.model, s.params, s.batches, reg),
        "reference": lambda: reference_value_and_grad(
            s.model, s.params, s.observations, s.names, s.epochs, reg
        ),
        "engine_step": lambda: fitter.step(s.params, state, s.batches),
    }
    first = {}
    for name, call in calls.items():
        _status(f"compiling {name}", progress)
        first[name] = seconds(call)
    warm: dict[str, list[float]] = {name: [] for name in calls}
    for _ in tqdm(range(repeats), desc="bench", disable=not progress):
        for name, call in calls.items():
            warm[name].append(seconds(call))
    (value, grads), (ref_value, ref_grads) = calls["engine"](), calls["reference"]()
    _, _, terms = calls["engine_step"]()
    _status("timing MetricLog.add", progress)
    log = log_seconds(folder, {**terms, "step_time": 1.0})
    return {
        "timings": {name: timing(first[name], warm[name]) for name in calls},
        "log_add_s": log,
        "gradient_max_relative_difference": max_relative_difference(grads, ref_grads),
        "value_relative_difference": abs(float(value - ref_value)) / abs(float(ref_value)),
    }


def _status(line: str, progress: bool) -> None:
    if progress:
        print(f"bench     {line}", file=sys.stderr, flush=True)


def run_bench(config_path: Path, repeats: int, command: str, progress: bool = True) -> dict:
    """The whole benchmark of a campaign config → the JSON record (see module docstring)."""
    campaign = load_config(config_path)
    if not isinstance(campaign, CampaignConfig):
        raise ValueError(f"{config_path}: kind: expected 'io', got {campaign.KIND!r}")
    started = datetime.datetime.now(datetime.UTC)
    with tempfile.TemporaryDirectory(prefix="scaling-bench-") as tmp:
        _status(f"simulating and ingesting {config_path}", progress)
        setup = prepare(campaign, Path(tmp))
        m = measure(setup, Path(tmp), repeats, progress)
    n = len(setup.observations)
    t = m["timings"]
    engine_rate = n / t["engine"]["median_s"]
    reference_rate = n / t["reference"]["median_s"]
    return {
        "config": str(config_path),
        "command": command,
        "date": started.isoformat(timespec="seconds"),
        "host": host_info(),
        "exposures": n,
        "batch_sizes": [b.size for b in setup.batches],
        "repeats": repeats,
        "timings": t,
        "exposure_gradients_per_s": {"engine": engine_rate, "reference": reference_rate},
        "speedup": engine_rate / reference_rate,
        "target_speedup": TARGET_SPEEDUP,
        "target_met": engine_rate / reference_rate >= TARGET_SPEEDUP,
        "gradient_max_relative_difference": m["gradient_max_relative_difference"],
        "value_relative_difference": m["value_relative_difference"],
        "log_add_per_step_s": m["log_add_s"],
        "logging_fraction_of_step": m["log_add_s"] / t["engine_step"]["median_s"],
    }


def summary(result: dict) -> str:
    """A few human lines on a bench record."""
    t, rate = result["timings"], result["exposure_gradients_per_s"]
    met = "met" if result["target_met"] else "NOT met"
    return "\n".join(
        [
            f"exposures {result['exposures']} in batches {result['batch_sizes']}, "
            f"{result['repeats']} repeats, backend {result['host']['jax_backend']}",
            f"engine    {t['engine']['median_s']:.4f} s per gradient, "
            f"{rate['engine']:.2f} exposure-gradients/s",
            f"reference {t['reference']['median_s']:.4f} s per gradient, "
            f"{rate['reference']:.2f} exposure-gradients/s",
            f"speedup   {result['speedup']:.2f}× (target {result['target_speedup']:.0f}×: {met})",
            f"gradients agree to {result['gradient_max_relative_difference']:.2e} (max relative)",
            f"logging   {result['log_add_per_step_s'] * 1e3:.3f} ms per step = "
            f"{100 * result['logging_fraction_of_step']:.3f}% of a "
            f"{t['engine_step']['median_s']:.4f} s step",
        ]
    )


def add_bench_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `scaling bench CONFIG.toml --out bench.json [--repeats N]`."""
    text = "time the engine's exposure-gradients per second against the plain loop"
    p = subparsers.add_parser("bench", help=text, description=text)
    p.add_argument("config", type=Path, help="campaign TOML config (kind = 'io')")
    p.add_argument("--out", type=Path, required=True, help="JSON file for the measurements")
    p.add_argument("--repeats", type=int, default=5, help="warm calls timed per measurement")
    p.add_argument("--quiet", action="store_true", help="no status lines or progress bar")
    p.set_defaults(handler=bench_command)


def bench_command(args: argparse.Namespace) -> int:
    """Run `scaling bench`; returns 0 (bad input raises: `scaling.cli.main` reports it)."""
    words = ["scaling", "bench", str(args.config), "--out", str(args.out)]
    command = shlex.join([*words, "--repeats", str(args.repeats)])
    if args.repeats < 1:
        raise ValueError(f"--repeats: expected an integer >= 1, got {args.repeats}")
    result = run_bench(args.config, args.repeats, command, progress=not args.quiet)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(summary(result))
    print(f"written   {args.out}")
    return 0
