"""`scaling bench`: the engine's exposure-gradients per second against the plain loop.

    scaling bench CONFIG.toml --out bench.json [--repeats N] [--psf-pad P]

Simulates the campaign of CONFIG into a temporary folder, ingests it, and builds the
model, starting parameters and settings as `scaling fit` does (default optimisers and
regularisers, image and instrument sizes from CONFIG). Then, in one process, with the
repeats of each measurement interleaved so that load from other processes hits all alike:

* **engine**: one jitted, vmapped value-and-gradient of `scaling.fitting.objective.loss` over all
  batches (the work of a step), and one whole `Fitter.step` (gradient, updates, summary);
* **reference**: `scaling.fitting.reference.reference_value_and_grad`, a Python loop over the
  exposures with one jitted value-and-gradient each, as the notebooks fit;
* **logging**: `MetricLog.add` of one step's metrics into an embedded SQLite MLflow store,
  averaged over enough steps to include its batched sends;
* **hardware**: XLA's cost analysis of the compiled engine (FLOPs, bytes accessed), and
  the machine's measured rates, timed among the calls above: a complex128 and a float64
  matrix multiply of two N² matrices (N = `MATMUL_N`, `FLOAT_MATMUL_N`; 8·N³ and 2·N³
  real FLOPs: a complex multiply-add is 4 real multiplies and 4 adds) and a streaming
  `x / 2 + y` over `STREAM_N` float64 elements (3 × 8·`STREAM_N` bytes moved), so the
  record says what fraction of those limits the engine reaches and whether arithmetic or
  memory traffic bounds it (the roof: min(float64 matmul rate, FLOPs / byte × bandwidth)).

With `--psf-pad P` the engine and its step are also timed in the shared-PSF mode (the
same instrument with `psf_pad = P`, `model.shared_psf`), interleaved with the rest, and the
two modes' model slopes are compared at the simulation's true parameters, exposure by
exposure (so over the campaign's pointings, dithers and rolls); the shared mode's
gradient is checked against the loop run in the same mode.

Every call is compiled by a first call, timed apart; only warm calls count. All times are
wall-clock seconds after `jax.block_until_ready`.
"""

import argparse
import dataclasses
import datetime
import json
import os
import platform
import re
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
import numpy as np
from tqdm.auto import tqdm

from model import ExposureModel
from model.optics import Optics
from scaling.config import CampaignConfig, FitConfig, load_config
from scaling.data.ingest import ingest
from scaling.data.truthfiles import load_truth
from scaling.fitting.engine import FitSettings, make_fitter
from scaling.fitting.objective import loss
from scaling.fitting.params import Batch, Observation, make_batches, select
from scaling.fitting.reference import reference_value_and_grad
from scaling.simulate import simulate

TARGET_SPEEDUP = 10.0
"""The engine should compute exposure-gradients this many times faster than the loop."""

LOG_STEPS = 200
"""Steps of metrics logged to time `MetricLog.add` (several of its batched sends)."""

EDGE = 8
"""Detector pixels from the frame's edge left out of the `interior` slope difference."""

MATMUL_N = 768
"""Side of the square complex128 matrices whose product times the complex matmul rate."""

FLOAT_MATMUL_N = 1536
"""Side of the float64 matrices of the float64 matmul rate: twice `MATMUL_N`, so that the
call lasts tens of milliseconds and is timed through the load like the others."""

STREAM_N = 2**23
"""float64 elements per array of the streaming call that times memory bandwidth (64 MiB,
well beyond the caches)."""

TARGET_FRACTION = 0.3
"""The engine should reach this fraction of the measured float64 matmul rate."""

_DEFINITION = re.compile(r"%(\S+) = \w+\[([\d,]*)\]")
_COMPLEX_DOT = re.compile(
    r"= c(?:64|128)\[([\d,]*)\]\S* dot\(%([^,\s)]+).*?lhs_contracting_dims=\{([\d,]*)\}"
)


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
    shared: ExposureModel | None = None
    """The same instrument in the shared-PSF mode (`--psf-pad`), or None."""


def fit_config(campaign: CampaignConfig, store: Path) -> FitConfig:
    """The default fit of a simulated campaign: its sizes, read noise and store."""
    return FitConfig(
        campaign=str(store),
        results=str(store.with_name("results.zarr")),
        image_npix=campaign.io.image_npix,
        read_noise=campaign.truth.read_noise,
        instrument=campaign.instrument,
    )


def prepare(campaign: CampaignConfig, folder: Path, psf_pad: int = 0) -> Setup:
    """Simulate `campaign` into `folder`, ingest it and build what a fit starts from; with
    `psf_pad`, also the model in the shared-PSF mode (its pad checked as a fit checks it)."""
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
    filters = sorted({o.spec.filter for o in observations})
    model = config.instrument.build(filters)
    params = initial_params(config, model, observations, epochs)
    batches = make_batches(observations, names, epochs)
    settings = settings_from(config, observations)
    shared = None
    if psf_pad:
        instrument = dataclasses.replace(config.instrument, psf_pad=psf_pad)
        shared = instrument.build(filters)
        initial_params(
            dataclasses.replace(config, instrument=instrument), shared, observations, epochs
        )
    return Setup(model, params, observations, names, epochs, batches, settings, shared)


def true_params(setup: Setup, truth_folder: Path) -> dict:
    """The fit's parameter tree at the simulation's truth (aberrations, detector, images,
    pointings, fluxes and spectral slopes of every exposure)."""
    truth, arrays = load_truth(truth_folder)
    rows = [truth["exposures"][n]["index"] for n in setup.names]
    filters = truth["filters"]
    shared = dict(setup.params["shared"])
    shared["aberrations"] = {
        f: jnp.asarray(arrays["aberrations"][filters.index(f)]) for f in shared["aberrations"]
    }
    for name in ("flat", "ipc", "bfe", "nonlinearity"):
        shared[name] = jnp.asarray(arrays[name])
    shared["dark"], shared["jitter"] = jnp.asarray(truth["dark"]), jnp.asarray(truth["jitter"])
    exposure = {
        "position": jnp.asarray(arrays["positions"][rows]),
        "log_flux": jnp.asarray(arrays["log_fluxes"][rows]),
        "spectral_slope": jnp.asarray(arrays["spectral_slopes"][rows]),
    }
    epoch = {"log_image": jnp.asarray(arrays["log_images"])}
    return {"shared": shared, "epoch": epoch, "exposure": exposure}


def mode_differences(setup: Setup, params: dict) -> dict:
    """How far the shared-PSF mode is from the exact one at `params`, per exposure.

    `slopes`: max |shared − exact| / max |exact| of the model slopes over all pixels, the
    good ones (the exposure's bad-pixel mask) and those `EDGE` or more from the frame's
    edge; `illumination`: the same for the oversampled image against the exact mode on
    the optical grid padded by the pad a side (cropped), which truncates no PSF light
    that the shared mode keeps.
    """
    exact, shared, pad = setup.model, setup.shared, setup.shared.psf_pad
    optics = exact.optics
    grid = Optics(optics.pupil, optics.psf_npix + 2 * pad, optics.psf_pixel_scale)
    padded = dataclasses.replace(exact, optics=grid)
    slopes = eqx.filter_jit(lambda m, p, s: m.slopes(p, s))
    image = eqx.filter_jit(lambda m, p, s: m.illumination(p, s))
    out = {}
    for obs in setup.observations:
        i_epoch = None if obs.epoch is None else setup.epochs.index(obs.epoch)
        p, spec = select(params, obs.spec.filter, setup.names.index(obs.name), i_epoch), obs.spec
        want, got = np.asarray(slopes(exact, p, spec)), np.asarray(slopes(shared, p, spec))
        peak, diff = np.abs(want).max(), np.abs(got - want)
        inner = diff[:, EDGE:-EDGE, EDGE:-EDGE]
        full = np.asarray(image(padded, p, spec))[pad:-pad, pad:-pad]
        fast = np.asarray(image(shared, p, spec))
        out[obs.name] = {
            "position_arcsec": np.asarray(p["position"] + spec.dither).tolist(),
            "roll": float(spec.roll),
            "slopes_all": float(diff.max() / peak),
            "slopes_good": float(np.where(obs.bad[None], 0.0, diff).max() / peak),
            "slopes_interior": float(inner.max() / peak),
            "illumination_vs_padded_exact": float(np.abs(fast - full).max() / np.abs(full).max()),
        }
    return out


def agreement(engine: tuple, reference: tuple) -> dict[str, float]:
    """How the engine's (value, gradients) agree with the loop's: the largest relative
    gradient difference (`max_relative_difference`) and the relative value difference."""
    (value, grads), (ref_value, ref_grads) = engine, reference
    return {
        "gradient_max_relative_difference": max_relative_difference(grads, ref_grads),
        "value_relative_difference": abs(float(value - ref_value)) / abs(float(ref_value)),
    }


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


def _dims(text: str) -> list[int]:
    return [int(d) for d in text.split(",") if d]


def complex_dot_flops(hlo: str) -> float:
    """FLOPs of the complex dots of an HLO module (its text) as XLA's cost analysis counts
    them: 2 per multiply-add, i.e. 2 · (output elements) · (contracted length)."""
    shapes = {name: _dims(dims) for name, dims in _DEFINITION.findall(hlo)}
    total = 0.0
    for out, lhs, contracting in _COMPLEX_DOT.findall(hlo):
        contracted = [shapes[lhs][i] for i in _dims(contracting)]
        total += 2.0 * float(np.prod(_dims(out))) * float(np.prod(contracted))
    return total


def xla_cost(fn: Callable, *args) -> dict[str, float]:
    """XLA's cost analysis of `fn(*args)` compiled (its arrays traced, the rest static).

    XLA counts 2 FLOPs per multiply-add whatever the type; `flops` counts real
    arithmetic, so a complex dot's multiply-add is 8 (`xla_flops` + 3 × `complex_dot_xla_flops`;
    complex element-wise operations stay at XLA's count, one per element). `bytes`: bytes
    accessed, the sum over operations of their operands and results (cache hits included).
    XLA counts a loop's body once, not per iteration (the ramp's and likelihood's scans).
    FLOPs and bytes of one call.
    """
    dynamic, static = eqx.partition(args, eqx.is_array)
    compiled = jax.jit(lambda d: fn(*eqx.combine(d, static))).lower(dynamic).compile()
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    dots = complex_dot_flops(compiled.as_text())
    return {
        "flops": analysis["flops"] + 3 * dots,
        "xla_flops": analysis["flops"],
        "complex_dot_xla_flops": dots,
        "bytes": analysis["bytes accessed"],
        "transcendentals": analysis.get("transcendentals", 0.0),
    }


def mft_flops(model: ExposureModel, filter_name: str) -> float:
    """Analytic real FLOPs of one exposure's MFT matrix products, value and gradient.

    Per wavelength the MFT of the n² pupil onto the m² PSF grid is two complex products,
    m·n·n and m·m·n multiply-adds; the backward pass has four of the same sizes (the
    gradients of the phasor, for the aberrations, and of both transfer matrices, for the
    position's shift): 3 (m·n·n + m·m·n) multiply-adds of 8 real FLOPs each. A lower
    bound on the step's FLOPs (the exact mode; the shared mode makes a PSF per filter).
    """
    n = model.optics.pupil.transmission.shape[-1]
    m = model.optics.psf_npix
    nwavels = model.bandpasses[filter_name].wavelengths.shape[-1]
    return 3 * 8 * nwavels * (m * n * n + m * m * n)


def hardware_calls() -> dict[str, Callable[[], object]]:
    """The calls that time the machine's limits: `matmul_complex128`, `matmul_float64`
    (`MATMUL_N`² and `FLOAT_MATMUL_N`² products) and `stream_float64` (`x ← x / 2 + y`
    over `STREAM_N` elements, written into x's buffer: memory traffic, not the page
    faults of a fresh output)."""
    keys = jax.random.split(jax.random.key(0), 6)
    n, n_real = (MATMUL_N, MATMUL_N), (FLOAT_MATMUL_N, FLOAT_MATMUL_N)
    a, b = (jax.random.normal(k, n, jnp.complex128) for k in keys[:2])
    a_real, b_real = (jax.random.normal(k, n_real, jnp.float64) for k in keys[2:4])
    x, y = (jax.random.normal(k, (STREAM_N,), jnp.float64) for k in keys[4:])
    product = jax.jit(jnp.matmul)
    stream = jax.jit(lambda x, y: x * 0.5 + y, donate_argnums=0)
    buffer = {"x": x}

    def streamed() -> jax.Array:
        buffer["x"] = stream(buffer["x"], y)
        return buffer["x"]

    return {
        "matmul_complex128": lambda: product(a, b),
        "matmul_float64": lambda: product(a_real, b_real),
        "stream_float64": streamed,
    }


def hardware_record(t: dict, n: int, costs: dict[str, dict], analytic: float) -> dict:
    """JSON record of the engine against the measured machine limits: rates in GFLOP/s
    and GB/s from the median times `t`, FLOPs and bytes per exposure of `n`."""
    complex_rate = 8 * MATMUL_N**3 / t["matmul_complex128"]["median_s"] / 1e9
    float_rate = 2 * FLOAT_MATMUL_N**3 / t["matmul_float64"]["median_s"] / 1e9
    bandwidth = 3 * 8 * STREAM_N / t["stream_float64"]["median_s"] / 1e9
    out = {
        "matmul_n": MATMUL_N,
        "float64_matmul_n": FLOAT_MATMUL_N,
        "stream_elements": STREAM_N,
        "complex128_matmul_gflop_per_s": complex_rate,
        "float64_matmul_gflop_per_s": float_rate,
        "stream_bandwidth_gb_per_s": bandwidth,
        "mft_flops_per_exposure": analytic,
        "target_fraction": TARGET_FRACTION,
    }
    for name, cost in costs.items():
        gflops = cost["flops"] / t[name]["median_s"] / 1e9
        intensity = cost["flops"] / cost["bytes"]
        roof = min(float_rate, intensity * bandwidth)
        out[name] = {
            **{f"{key}_per_exposure": value / n for key, value in cost.items()},
            "flops_per_byte": intensity,
            "gflop_per_s": gflops,
            "fraction_of_complex128_matmul": gflops / complex_rate,
            "fraction_of_float64_matmul": gflops / float_rate,
            "roof_gflop_per_s": roof,
            "bound": "memory" if roof < float_rate else "arithmetic",
            "fraction_of_roof": gflops / roof,
        }
    out["target_met"] = out["engine"]["fraction_of_float64_matmul"] >= TARGET_FRACTION
    return out


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
    loss_grad = jax.value_and_grad(loss, argnums=1)
    engine = eqx.filter_jit(loss_grad)
    fitter = make_fitter(s.model, s.params, s.batches, s.settings)
    state = fitter.init(s.params)
    reference = lambda model: reference_value_and_grad(  # noqa: E731
        model, s.params, s.observations, s.names, s.epochs, reg
    )
    calls = {
        "engine": lambda: engine(s.model, s.params, s.batches, reg),
        "reference": lambda: reference(s.model),
        "engine_step": lambda: fitter.step(s.params, state, s.batches),
    }
    if s.shared is not None:
        shared_fitter = make_fitter(s.shared, s.params, s.batches, s.settings)
        shared_state = shared_fitter.init(s.params)
        calls["engine_shared"] = lambda: engine(s.shared, s.params, s.batches, reg)
        calls["engine_step_shared"] = lambda: shared_fitter.step(s.params, shared_state, s.batches)
    calls.update(hardware_calls())
    first = {}
    for name, call in calls.items():
        _status(f"compiling {name}", progress)
        first[name] = seconds(call)
    warm: dict[str, list[float]] = {name: [] for name in calls}
    for _ in tqdm(range(repeats), desc="bench", disable=not progress):
        for name, call in calls.items():
            warm[name].append(seconds(call))
    _status("XLA's cost analysis of the engine", progress)
    costs = {"engine": xla_cost(loss_grad, s.model, s.params, s.batches, reg)}
    if s.shared is not None:
        costs["engine_shared"] = xla_cost(loss_grad, s.shared, s.params, s.batches, reg)
    _, _, terms = calls["engine_step"]()
    _status("timing MetricLog.add", progress)
    log = log_seconds(folder, {**terms, "step_time": 1.0})
    out = {
        "timings": {name: timing(first[name], warm[name]) for name in calls},
        "log_add_s": log,
        "costs": costs,
        **agreement(calls["engine"](), calls["reference"]()),
    }
    if s.shared is not None:
        _status("the loop in the shared-PSF mode", progress)
        out["shared"] = agreement(calls["engine_shared"](), reference(s.shared))
    return out


def _status(line: str, progress: bool) -> None:
    if progress:
        print(f"bench     {line}", file=sys.stderr, flush=True)


def run_bench(
    config_path: Path, repeats: int, command: str, progress: bool = True, psf_pad: int = 0
) -> dict:
    """The whole benchmark of a campaign config → the JSON record (see module docstring)."""
    campaign = load_config(config_path)
    if not isinstance(campaign, CampaignConfig):
        raise ValueError(f"{config_path}: kind: expected 'io', got {campaign.KIND!r}")
    started = datetime.datetime.now(datetime.UTC)
    with tempfile.TemporaryDirectory(prefix="scaling-bench-") as tmp:
        _status(f"simulating and ingesting {config_path}", progress)
        setup = prepare(campaign, Path(tmp), psf_pad)
        m = measure(setup, Path(tmp), repeats, progress)
        if psf_pad:
            _status("the two modes' slopes at the truth", progress)
            differences = mode_differences(setup, true_params(setup, Path(tmp) / "simulation"))
    n = len(setup.observations)
    t = m["timings"]
    engine_rate = n / t["engine"]["median_s"]
    reference_rate = n / t["reference"]["median_s"]
    record = {
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
    analytic = sum(mft_flops(setup.model, o.spec.filter) for o in setup.observations) / n
    record["hardware"] = hardware_record(t, n, m["costs"], analytic)
    if psf_pad:
        record["shared_psf"] = shared_record(t, n, psf_pad, m, differences)
    return record


def shared_record(t: dict, n: int, psf_pad: int, m: dict, differences: dict) -> dict:
    """JSON record of the shared-PSF mode against the exact one (`--psf-pad`)."""
    worst = {
        key: max(d[key] for d in differences.values())
        for key in ("slopes_all", "slopes_good", "slopes_interior", "illumination_vs_padded_exact")
    }
    return {
        "psf_pad": psf_pad,
        "seconds_per_exposure_step": {
            "exact": t["engine_step"]["median_s"] / n,
            "shared": t["engine_step_shared"]["median_s"] / n,
        },
        "step_speedup": t["engine_step"]["median_s"] / t["engine_step_shared"]["median_s"],
        "gradient_speedup": t["engine"]["median_s"] / t["engine_shared"]["median_s"],
        **m["shared"],
        "max_difference_over_peak": worst,
        "per_exposure": differences,
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
            *_hardware_summary(result["hardware"]),
            *_shared_summary(result.get("shared_psf")),
        ]
    )


def _hardware_summary(hardware: dict) -> list[str]:
    met = "met" if hardware["target_met"] else "NOT met"
    lines = [
        f"machine   matmul {hardware['complex128_matmul_gflop_per_s']:.1f} GFLOP/s complex128 "
        f"(N = {hardware['matmul_n']}), {hardware['float64_matmul_gflop_per_s']:.1f} float64 "
        f"(N = {hardware['float64_matmul_n']}); "
        f"stream {hardware['stream_bandwidth_gb_per_s']:.1f} GB/s"
    ]
    for name, label in (("engine", "exact"), ("engine_shared", "shared")):
        if name not in hardware:
            continue
        e = hardware[name]
        target = f" (target {100 * hardware['target_fraction']:.0f}%: {met})"
        lines += [
            f"flops     {label}: {e['flops_per_exposure'] / 1e9:.3f} GFLOP (XLA counts "
            f"{e['xla_flops_per_exposure'] / 1e9:.3f}) and {e['bytes_per_exposure'] / 1e9:.3f} GB "
            f"per exposure, {e['flops_per_byte']:.2f} FLOP/byte; {e['gflop_per_s']:.2f} GFLOP/s",
            f"{'':<9} = {100 * e['fraction_of_float64_matmul']:.1f}% of float64 matmul"
            f"{target if name == 'engine' else ''}, "
            f"{100 * e['fraction_of_complex128_matmul']:.1f}% of complex128; {e['bound']}-bound, "
            f"{100 * e['fraction_of_roof']:.1f}% of the roof {e['roof_gflop_per_s']:.1f} GFLOP/s",
        ]
    return lines


def _shared_summary(shared: dict | None) -> list[str]:
    if shared is None:
        return []
    per, worst = shared["seconds_per_exposure_step"], shared["max_difference_over_peak"]
    return [
        f"shared    psf_pad {shared['psf_pad']}: {per['shared']:.4f} s per exposure-step "
        f"against {per['exact']:.4f} exact ({shared['step_speedup']:.2f}×; gradient "
        f"{shared['gradient_speedup']:.2f}×); agrees with the loop to "
        f"{shared['gradient_max_relative_difference']:.2e}",
        f"slopes    shared − exact, max / peak: {worst['slopes_all']:.2e} all pixels, "
        f"{worst['slopes_good']:.2e} good, {worst['slopes_interior']:.2e} ≥ {EDGE} px in; "
        f"image vs exact on the padded grid {worst['illumination_vs_padded_exact']:.2e}",
    ]


def add_bench_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `scaling bench CONFIG.toml --out bench.json [--repeats N]`."""
    text = "time the engine's exposure-gradients per second against the plain loop"
    p = subparsers.add_parser("bench", help=text, description=text)
    p.add_argument("config", type=Path, help="campaign TOML config (kind = 'io')")
    p.add_argument("--out", type=Path, required=True, help="JSON file for the measurements")
    p.add_argument("--repeats", type=int, default=5, help="warm calls timed per measurement")
    p.add_argument(
        "--psf-pad",
        type=int,
        default=0,
        help="also time the shared-PSF mode with this pad (optical pixels) and compare its slopes",
    )
    p.add_argument("--quiet", action="store_true", help="no status lines or progress bar")
    p.set_defaults(handler=bench_command)


def bench_command(args: argparse.Namespace) -> int:
    """Run `scaling bench`; returns 0 (bad input raises: `scaling.cli.main` reports it)."""
    words = ["scaling", "bench", str(args.config), "--out", str(args.out)]
    words += ["--repeats", str(args.repeats)]
    command = shlex.join([*words, "--psf-pad", str(args.psf_pad)] if args.psf_pad else words)
    if args.repeats < 1:
        raise ValueError(f"--repeats: expected an integer >= 1, got {args.repeats}")
    if args.psf_pad < 0:
        raise ValueError(f"--psf-pad: expected an integer >= 0, got {args.psf_pad}")
    result = run_bench(args.config, args.repeats, command, not args.quiet, args.psf_pad)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(summary(result))
    print(f"written   {args.out}")
    return 0
