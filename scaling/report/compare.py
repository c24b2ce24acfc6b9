"""`scaling compare`: fits side by side, from their MLflow runs and results stores.

    scaling compare RUN_ID... | --sweep PARENT_ID | --experiment NAME [--filter "..."]
        --out DIR [--reference RUN_ID] [--tracking-uri URI]

Writes into DIR (and, for `--sweep`, logs to the parent run under `compare/`):

* `images.png` (of the runs that saved results: not those stopped early or failed): the
  final epoch images, epochs in rows and runs in columns, on one colour
  scale, with the truth (blurred to λ / B_max, as the NCC metric sees it) as the first
  column when the runs fitted a simulated campaign;
* `differences.png`: each run's images minus the reference run's (default: the first);
* `metrics.md`, `metrics.csv`: one row a run: the parameters that differ between the
  runs, then the final loss terms, reduced χ², validation NLL and truth metrics
  (per-epoch metrics summarised: mean NCC, worst volcano offset);
* for runs that differ in one regulariser weight (a regularisation sweep):
  `lcurve.png`, the L-curve (data misfit, the final NLL, against the unweighted
  regulariser value, log–log, each point labelled with its weight), and `validation.png`,
  the held-out validation NLL (and mean NCC when known) against the weight, the chosen
  weight (least validation NLL) marked.
"""

import argparse
import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mlflow.tracking import MlflowClient

from model.constants import FILTERS
from scaling.data._zarr import StoreError
from scaling.data.results import Results
from scaling.data.staging import staged_folder
from scaling.data.truthfiles import load_truth
from scaling.fitting.validation import METRIC as VALIDATION
from scaling.report.plots import _cmap, _figure
from scaling.report.tracking import EXPERIMENT, tracking_uri
from scaling.report.truth import blur, centre_crop, resolution_arcsec

REGULARISER_PREFIX = "regularisers."
"""Flattened-config key prefix of the regulariser weights (see `scaling.report.tracking`)."""


@dataclass(frozen=True)
class RunSummary:
    """What a comparison needs of one fit run: its identity, config, final metrics and
    where its results store is."""

    run_id: str
    name: str
    status: str
    params: dict[str, str]
    metrics: dict[str, float]
    results: str

    @property
    def label(self) -> str:
        return self.name or self.run_id[:8]


def find_runs(
    client: MlflowClient,
    run_ids: list[str] | None = None,
    parent: str | None = None,
    experiment: str | None = None,
    filter_string: str = "",
    missing_ok: bool = False,
) -> list[RunSummary]:
    """The runs named, or the nested runs of `parent`, or the runs of `experiment` that
    match `filter_string` (MLflow search syntax), oldest first.

    Raises:
        ValueError: an unknown run or experiment, or (unless `missing_ok`) no run found.
    """
    if run_ids:
        runs = []
        for run_id in run_ids:
            try:
                runs.append(client.get_run(run_id))
            except Exception as err:  # MlflowException: unknown id
                raise ValueError(f"run {run_id}: not found in {client.tracking_uri}") from err
    else:
        if parent:
            base = client.get_run(parent)
            ids = [base.info.experiment_id]
            filter_string = f"tags.mlflow.parentRunId = '{parent}'"
        else:
            found = client.get_experiment_by_name(experiment or EXPERIMENT)
            if found is None:
                raise ValueError(f"experiment {experiment!r}: not found in {client.tracking_uri}")
            ids = [found.experiment_id]
        runs = client.search_runs(ids, filter_string, order_by=["attributes.start_time ASC"])
    if not runs and not missing_ok:
        raise ValueError(f"no runs to compare ({parent or experiment or run_ids})")
    return [
        RunSummary(
            r.info.run_id,
            r.data.tags.get("mlflow.runName", ""),
            r.info.status,
            dict(r.data.params),
            dict(r.data.metrics),
            r.data.tags.get("results", ""),
        )
        for r in runs
    ]


def varying_params(runs: list[RunSummary]) -> list[str]:
    """Config keys whose values differ between the runs (paths of stores excluded)."""
    keys = sorted(set().union(*(r.params for r in runs)))
    skip = {"results", "tracking.run_name"}
    return [k for k in keys if k not in skip and len({r.params.get(k) for r in runs}) > 1]


def summary_metrics(run: RunSummary) -> dict[str, float]:
    """The final loss terms, χ², validation NLL, and the truth metrics summarised."""
    m = run.metrics
    out = {k: m[k] for k in ("total", "nll", "regulariser", "reduced_chi2", VALIDATION) if k in m}
    nccs = [v for k, v in m.items() if k.startswith("ncc.")]
    offsets = [v for k, v in m.items() if k.startswith("volcano_offset_pix.")]
    if nccs:
        out["mean_ncc"] = float(np.mean(nccs))
    if offsets:
        out["worst_volcano_offset_pix"] = float(np.max(offsets))
    return out


def write_tables(runs: list[RunSummary], folder: Path) -> tuple[Path, Path]:
    """metrics.md and metrics.csv: a row per run (module docstring)."""
    params = varying_params(runs)
    rows = [
        {"run": r.run_id, "name": r.label, "status": r.status}
        | {k: r.params.get(k, "") for k in params}
        | {k: f"{v:.6g}" for k, v in summary_metrics(r).items()}
        for r in runs
    ]
    columns = list(dict.fromkeys(k for row in rows for k in row))
    csv_path, md_path = folder / "metrics.csv", folder / "metrics.md"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    md_path.write_text("\n".join(lines) + "\n")
    return md_path, csv_path


def _truth_images(run: RunSummary, count: int, n: int, pixel_scale: float):
    """The truth of each of `count` epochs (in order, as `truth_comparison` pairs them)
    blurred to λ / B_max and cropped to n × n (sum 1), or None if the run fitted no
    simulated campaign with that many epochs."""
    folder = run.params.get("truth", "")
    if not folder or not Path(folder, "truth.json").exists():
        return None
    meta, arrays = load_truth(folder)
    if "images" not in arrays or len(arrays["images"]) != count:
        return None
    fwhm = resolution_arcsec(min(FILTERS[f][0] for f in meta["filters"]))
    out = [centre_crop(blur(t, pixel_scale, fwhm), n) for t in arrays["images"]]
    return np.asarray([image / image.sum() for image in out])


def _saved(runs: list[RunSummary]) -> list[tuple[RunSummary, object]]:
    """(run, its results snapshot) of the runs whose results store holds a final save
    (a trial stopped early or failed has none)."""
    out = []
    for r in runs:
        if not r.results:
            continue
        try:
            out.append((r, Results.open(r.results).load()))
        except StoreError:
            continue
    return out


def _load_images(saved) -> tuple[list[str], np.ndarray, float]:
    """(epoch names, (runs, epochs, n, n) final images, pixel scale arcsec)."""
    first = saved[0][1]
    names = [im.name for im in first.images]
    for r, snap in saved:
        if [im.name for im in snap.images] != names:
            raise ValueError(
                f"{r.results}: epochs {[im.name for im in snap.images]} differ from {names} "
                f"of {saved[0][0].results}"
            )
    images = np.asarray([[im.data for im in snap.images] for _, snap in saved])
    return names, images, first.images[0].pixel_scale


def write_image_grids(
    runs: list[RunSummary], folder: Path, reference: str | None = None
) -> list[Path]:
    """images.png (truth first when known) and differences.png against `reference`, of
    the runs with saved results ([] if none has)."""
    saved = _saved(runs)
    if not saved:
        return []
    runs = [r for r, _ in saved]
    names, images, scale = _load_images(saved)
    ids = [r.run_id for r in runs]
    if reference and reference not in ids:
        raise ValueError(f"--reference {reference}: that run has no saved results")
    index = ids.index(reference) if reference else 0
    truth = _truth_images(runs[0], len(names), images.shape[-1], scale)
    columns = ([("truth", truth)] if truth is not None else []) + [
        (r.label, images[i]) for i, r in enumerate(runs)
    ]
    top = max(float(np.nanmax(c[1])) for c in columns)
    half = images.shape[-1] * scale / 2
    extent = [-half, half, -half, half]
    fig, axes = _figure(len(names), len(columns))
    for col, (label, stack) in enumerate(columns):
        for row, name in enumerate(names):
            im = axes[row, col].imshow(
                stack[row], origin="lower", cmap=_cmap(), vmin=0, vmax=top, extent=extent
            )
            axes[row, col].set_title(f"{name} · {label}", fontsize=8)
    fig.colorbar(im, ax=axes[:, -1], label="fraction of total flux per pixel")
    images_path = folder / "images.png"
    fig.savefig(images_path, dpi=80)

    diff = images - images[index][None]
    bound = float(np.nanmax(np.abs(diff))) or 1.0
    fig, axes = _figure(len(names), len(runs))
    for col, r in enumerate(runs):
        for row, name in enumerate(names):
            im = axes[row, col].imshow(
                diff[col, row], origin="lower", cmap="RdBu_r", vmin=-bound, vmax=bound,
                extent=extent,
            )  # fmt: skip
            axes[row, col].set_title(f"{name} · {r.label} − {runs[index].label}", fontsize=8)
    fig.colorbar(im, ax=axes[:, -1], label="difference (fraction of total flux)")
    diff_path = folder / "differences.png"
    fig.savefig(diff_path, dpi=80)
    return [images_path, diff_path]


def regulariser_weight(runs: list[RunSummary]) -> str | None:
    """The one regulariser whose weight differs between the runs, else None."""
    keys = [k for k in varying_params(runs) if k.startswith(REGULARISER_PREFIX)]
    return keys[0][len(REGULARISER_PREFIX) :] if len(keys) == 1 else None


def chosen_run(
    runs: list[RunSummary], metric: str = VALIDATION, mode: str = "min"
) -> RunSummary | None:
    """The finished run of least (`mode` "min") or greatest `metric`; None if no finished
    run has a finite value of it."""
    finished = [r for r in runs if r.status == "FINISHED"]
    scored = [r for r in finished if math.isfinite(r.metrics.get(metric, math.nan))]
    sign = 1 if mode == "min" else -1
    return min(scored, key=lambda r: sign * r.metrics[metric], default=None)


def write_regularisation_curves(runs: list[RunSummary], folder: Path) -> list[Path]:
    """lcurve.png and validation.png of a sweep over one regulariser weight ([] if the
    runs are no such sweep)."""
    name = regulariser_weight(runs)
    if name is None:
        return []
    done = [r for r in runs if r.status == "FINISHED" and {"nll", "regulariser"} <= set(r.metrics)]
    done.sort(key=lambda r: float(r.params[REGULARISER_PREFIX + name]))
    weights = np.asarray([float(r.params[REGULARISER_PREFIX + name]) for r in done])
    misfit = np.asarray([r.metrics["nll"] for r in done])
    value = np.asarray([r.metrics["regulariser"] for r in done]) / np.where(weights > 0, weights, 1)
    fig, axes = _figure(1, 1)
    ax = axes[0, 0]
    ax.plot(value, misfit, "o-")
    for w, x, y in zip(weights, value, misfit, strict=True):
        ax.annotate(f"{w:.3g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set(xscale="log", yscale="symlog", xlabel=f"{name} (unweighted)", ylabel="NLL (data misfit)")
    ax.set_title(f"L-curve over the {name} weight")
    paths = [folder / "lcurve.png"]
    fig.savefig(paths[0], dpi=90)

    best = chosen_run(done)
    if best is not None:
        fig, axes = _figure(1, 1)
        ax = axes[0, 0]
        valid = [r.metrics.get(VALIDATION, np.nan) for r in done]
        ax.plot(weights, valid, "o-", label="validation NLL (held-out pixels)")
        ax.axvline(float(best.params[REGULARISER_PREFIX + name]), color="k", ls=":", label="chosen")
        ax.set(xscale="log", xlabel=f"{name} weight", ylabel="validation NLL")
        nccs = [summary_metrics(r).get("mean_ncc", np.nan) for r in done]
        if np.isfinite(nccs).any():
            twin = ax.twinx()
            twin.plot(weights, nccs, "s--", color="C1", label="mean NCC with the truth")
            twin.set_ylabel("mean NCC")
            twin.legend(loc="lower right")
        ax.legend(loc="upper left")
        paths.append(folder / "validation.png")
        fig.savefig(paths[1], dpi=90)
    return paths


def compare(
    runs: list[RunSummary], out: str | os.PathLike, reference: str | None = None
) -> list[Path]:
    """Write the comparison of `runs` into folder `out` (module docstring); its files.
    The folder is written whole or not at all (built beside it, then renamed)."""
    if reference and reference not in [r.run_id for r in runs]:
        raise ValueError(f"--reference {reference}: not one of the runs compared")
    out = Path(out)
    with staged_folder(out, "metrics.csv") as folder:
        written = [*write_image_grids(runs, folder, reference), *write_tables(runs, folder)]
        written += write_regularisation_curves(runs, folder)
    return [out / p.name for p in written]


def compare_command(args: argparse.Namespace) -> int:
    """Run `scaling compare`; returns 0 (bad input raises: `scaling.cli.main` reports it)."""
    chosen = sum(bool(x) for x in (args.runs, args.sweep, args.experiment))
    if chosen != 1:
        raise ValueError("give run ids, or --sweep PARENT_ID, or --experiment NAME (one of them)")
    client = MlflowClient(tracking_uri(args.tracking_uri))
    runs = find_runs(client, args.runs, args.sweep, args.experiment, args.filter)
    files = compare(runs, args.out, args.reference)
    if args.sweep:
        for f in files:
            client.log_artifact(args.sweep, str(f), "compare")
    print(f"compared {len(runs)} runs: {', '.join(str(f) for f in files)}")
    return 0
