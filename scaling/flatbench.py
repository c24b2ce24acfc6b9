"""`scaling flatbench`: the project's star-field fit beside the seed notebook's loop.

Simulates the star field of a config, ingests it, fits it in this process (the fit
config's steps and L-BFGS iterations) and runs the peer script
(`../shared/peers/flatfield_seed.py`, the seed notebook on current releases, in its own
Python, through `scaling/seed_figures.py`) for as many steps in float64 unless
`--float32`; writes both runs' time per step and recovery figures to a JSON file and
prints them side by side. The seed script simulates its own data (its
sizes are the config's: see `configs/flatfield_seed.toml`).
"""

import argparse
import dataclasses
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from scaling.config import FlatFieldConfig, StarFieldFitConfig, load_config


def run_seed(python: str, script: str, steps: int, x64: bool) -> dict:
    """The peer script's figures (compile_s, step_s, ff_mae_bright, zernike_rel_err, …)
    with the scaled MAE and noise floor that `scaling/seed_figures.py` adds."""
    harness = str(Path(__file__).with_name("seed_figures.py"))
    args = [python, harness, script, str(steps), *(["x64"] if x64 else [])]
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{script} failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_project(sim: FlatFieldConfig, fit: StarFieldFitConfig, folder: Path) -> dict:
    """Simulate, ingest and fit in this process; time per step (the median of steps 2…
    of the first stage, and the whole fit's wall time over all its steps and L-BFGS
    iterations, compilation, saving and pictures included), the recovery figures and
    the flat's noise floor (`scaling.dithers.expected_mae`)."""
    from scaling.data.truthfiles import load_truth
    from scaling.dithers import expected_mae
    from scaling.fit import fit_campaign
    from scaling.report.flatfield import bright_pixels
    from scaling.simulate import simulated_campaign

    tracking = dataclasses.replace(fit.tracking, uri=f"sqlite:///{folder}/mlflow.db")
    config = simulated_campaign(sim, fit, folder, tracking=tracking)
    start = time.perf_counter()
    out = fit_campaign(config, progress=False)
    wall = time.perf_counter() - start
    steps = out.history["step_time"]
    signal, bright = bright_pixels(config.instrument.build([sim.filter]), str(folder / "sim"))
    dithers = len(load_truth(folder / "sim")[1]["dithers"])
    lbfgs = out.history.get("lbfgs_total", [])
    return {
        "steps": out.step + len(lbfgs),
        "lbfgs_iterations": len(lbfgs),
        "flat_mae_floor": expected_mae(signal, bright, sim.read_noise, dithers),
        "x64": True,
        "first_step_s": float(steps[0]),
        "step_s": float(np.median(steps[1:])),
        "fit_wall_s": wall,
        "mean_step_s": wall / (out.step + len(lbfgs)),
        "reduced_chi2": out.reduced_chi2,
        **out.truth_metrics,
    }


def flatbench(args: argparse.Namespace) -> dict:
    sim, fit = load_config(args.config), load_config(args.fit)
    if not isinstance(sim, FlatFieldConfig) or not isinstance(fit, StarFieldFitConfig):
        raise ValueError(f"{args.config}, {args.fit}: expected kinds 'flatfield', 'flatfield_fit'")
    with tempfile.TemporaryDirectory() as tmp:
        project = run_project(sim, fit, Path(tmp))
    steps = fit.steps + fit.quasi_newton.steps
    seed = run_seed(args.seed_python, args.seed_script, steps, not args.float32)
    report = {
        "project": project,
        "seed": seed,
        "speedup_per_step": seed["step_s"] / project["mean_step_s"],
        "command": (
            f"scaling flatbench {args.config} {args.fit} --out {args.out} "
            f"--seed-python {args.seed_python}" + (" --float32" if args.float32 else "")
        ),
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    rows = [
        ("time per step (s)", project["mean_step_s"], seed["step_s"]),
        ("pixel response MAE, bright", project["flat_mae_bright_raw"], seed["ff_mae_bright"]),
        ("  the same, mean matched", project["flat_mae_bright"], seed["ff_mae_bright_scaled"]),
        ("  noise floor", project["flat_mae_floor"], seed["ff_mae_floor"]),
        ("bright pixels", project["flat_bright_pixels"], seed["ff_pixels_bright"]),
        ("Zernike |error| / |truth|", project["zernike_rel_error.F430M"], seed["zernike_rel_err"]),
    ]
    print(f"{'':30s} {'project':>12s} {'seed':>12s}")
    for name, ours, theirs in rows:
        print(f"{name:30s} {ours:12.5g} {theirs:12.5g}")
    print(f"speed-up per step: {report['speedup_per_step']:.1f}x")
    return report


def add_flatbench_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `scaling flatbench SIM.toml FIT.toml --out FILE`."""
    summary = "time the star-field fit against the seed notebook's loop, side by side (JSON)"
    p = subparsers.add_parser("flatbench", help=summary, description=summary)
    p.add_argument("config", type=Path, help="flatfield simulation config")
    p.add_argument(
        "fit", type=Path, help="flatfield_fit config (its steps + L-BFGS iterations: both runs')"
    )
    p.add_argument("--out", type=Path, required=True, help="JSON report")
    p.add_argument("--seed-python", default="python3", help="Python with dLux, zodiax, optax")
    p.add_argument(
        "--seed-script",
        default=str(Path(__file__).resolve().parents[2] / "shared/peers/flatfield_seed.py"),
        help="the peer script (default ../shared/peers/flatfield_seed.py)",
    )
    p.add_argument("--float32", action="store_true", help="run the seed in float32")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    flatbench(args)
    return 0
