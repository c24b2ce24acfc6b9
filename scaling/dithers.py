"""`scaling dithers`: the pixel-response error against the number of dithers.

For each count N, the star field of a config is simulated with N dithers (drawn from the
config's seed, so every N sees the same sky, flat field and first dithers), ingested
and fitted (`--workers` Ray workers or this process); the fitted pixel response is
compared with the truth on the pixels above the signal threshold
(`scaling.report.flatfield`). Photon noise predicts each pixel's error
σ_i = sqrt(S_i + 2 r²) / (S_i sqrt(N)) for S_i electrons per exposure and read noise r
(one slope per exposure), so a mean absolute error of sqrt(2/π) mean_i σ_i: a slope of
-1/2 in log-log. Writes `dithers.json` and `dithers.png` into the output folder and logs
both, with the error per N, to one MLflow run.
"""

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from scaling.config import FlatFieldConfig, StarFieldFitConfig, load_config


def expected_mae(signal: np.ndarray, bright: np.ndarray, read_noise: float, n: int) -> float:
    """Photon- and read-noise-limited mean absolute flat error over `bright` pixels for
    `n` exposures of `signal` (p, p) electrons each (module docstring)."""
    s = signal[bright]
    return float(np.sqrt(2 / np.pi) * np.mean(np.sqrt(s + 2 * read_noise**2) / (s * np.sqrt(n))))


def run_count(sim, fit, n: int, folder: Path, stepper_for, workers: int) -> dict:
    """Simulate, ingest and fit the field with `n` dithers; its figures."""
    from scaling.fit import fit_campaign
    from scaling.report.flatfield import bright_pixels
    from scaling.simulate import simulated_campaign

    sim = dataclasses.replace(sim, dither_count=n)
    cluster = dataclasses.replace(fit.cluster, workers=workers)
    config = simulated_campaign(sim, fit, folder, cluster=cluster)
    start = time.perf_counter()
    out = fit_campaign(config, progress=False, stepper=stepper_for(config))
    wall = time.perf_counter() - start
    signal, bright = bright_pixels(config.instrument.build([sim.filter]), str(folder / "sim"))
    return {
        "dithers": n,
        "flat_mae_bright": out.truth_metrics["flat_mae_bright"],
        "expected_mae": expected_mae(signal, bright, sim.read_noise, n),
        "bright_pixels": int(bright.sum()),
        "zernike_rel_error": out.truth_metrics[f"zernike_rel_error.{sim.filter}"],
        "reduced_chi2": out.reduced_chi2,
        "fit_wall_s": wall,
        "median_step_s": float(np.median(out.history["step_time"][1:])),
        "run_id": out.run_id,
    }


def slope(rows: list[dict], key: str) -> float:
    """Least-squares slope of log(key) against log(dithers)."""
    x = np.log([r["dithers"] for r in rows])
    return float(np.polyfit(x, np.log([r[key] for r in rows]), 1)[0])


def _png(path: Path, rows: list[dict]) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4), layout="constrained")
    ax = fig.subplots()
    n = [r["dithers"] for r in rows]
    ax.loglog(n, [r["flat_mae_bright"] for r in rows], "o-", label="measured")
    ax.loglog(n, [r["expected_mae"] for r in rows], "k--", label="photon + read noise")
    ax.set(xlabel="dithers", ylabel="pixel response mean |error| (bright pixels)")
    ax.legend()
    fig.savefig(path, dpi=100)


def dithers(args: argparse.Namespace) -> dict:
    sim, fit = load_config(args.config), load_config(args.fit)
    if not isinstance(sim, FlatFieldConfig) or not isinstance(fit, StarFieldFitConfig):
        raise ValueError(f"{args.config}, {args.fit}: expected kinds 'flatfield', 'flatfield_fit'")
    counts = [int(c) for c in args.counts.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fit = dataclasses.replace(
        fit, tracking=dataclasses.replace(fit.tracking, uri=fit.tracking.uri or args.tracking)
    )
    start = time.perf_counter()
    rows = []
    for n in counts:
        rows.append(run_count(sim, fit, n, out / f"n{n}", args.stepper, args.workers or 0))
        print(json.dumps(rows[-1]))
    report = {
        "rows": rows,
        "measured_slope": slope(rows, "flat_mae_bright"),
        "expected_slope": slope(rows, "expected_mae"),
        "workers": args.workers or 0,
        "wall_s": time.perf_counter() - start,
    }
    (out / "dithers.json").write_text(json.dumps(report, indent=2) + "\n")
    _png(out / "dithers.png", rows)
    _log(report, out, fit.tracking.uri)
    print(
        f"slope of the flat error against dithers: measured {report['measured_slope']:.3f}, "
        f"photon noise {report['expected_slope']:.3f}; {report['wall_s']:.0f} s"
    )
    return report


def _log(report: dict, out: Path, uri: str) -> None:
    """One MLflow run: the error per count (step = dithers), the slopes, the JSON and PNG."""
    import mlflow

    from scaling.report.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri(uri))
    mlflow.set_experiment("ami-scaling")
    with mlflow.start_run(run_name="flat error against dithers"):
        for r in report["rows"]:
            mlflow.log_metric("flat_mae_bright", r["flat_mae_bright"], step=r["dithers"])
            mlflow.log_metric("expected_mae", r["expected_mae"], step=r["dithers"])
        mlflow.log_metrics({k: report[k] for k in ("measured_slope", "expected_slope")})
        mlflow.log_artifact(str(out / "dithers.json"))
        mlflow.log_artifact(str(out / "dithers.png"))


def add_dithers_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `scaling dithers SIM.toml FIT.toml --counts 5,50,500,1000 --out DIR`."""
    summary = "pixel-response error against the number of dithers (PNG, JSON, MLflow)"
    p = subparsers.add_parser("dithers", help=summary, description=summary)
    p.add_argument("config", type=Path, help="flatfield simulation config")
    p.add_argument("fit", type=Path, help="flatfield_fit config")
    p.add_argument("--counts", default="5,50,500,1000", help="dither counts, comma-separated")
    p.add_argument("--out", type=Path, required=True, help="folder for stores and the curve")
    p.add_argument("--workers", type=int, help="Ray shard workers per fit (default: in process)")
    p.add_argument("--tracking", default="", help="MLflow tracking URI (default ./mlflow.db)")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    dithers(args)
    return 0
