"""The `scaling` command line.

    scaling simulate CONFIG.toml --out DIR   simulate a campaign (FITS files + truth;
                                             --products rate: JWST-like _cal files,
                                             uncal/ramp: JWST ramps)
    scaling demo CONFIG.toml --out DIR       simulate, then draw PNGs of it into DIR
    scaling ingest FILE_OR_GLOB... --out CAMPAIGN.zarr   FITS exposures → Zarr campaign store
    scaling inspect FILE_OR_STORE...         one line per exposure of files or stores
    scaling export RESULTS --fits DIR        epoch images of a results store → FITS with WCS
    scaling fit CONFIG.toml [--resume]       fit a campaign store, log the run to MLflow
    scaling bench CONFIG.toml --out FILE     time the engine against the plain loop (JSON)
    scaling flatbench SIM.toml FIT.toml --out FILE   the star-field fit beside the seed loop
    scaling dithers SIM.toml FIT.toml --out DIR      flat error against the number of dithers
    scaling study jw01093 --data DIR --out DIR   the JWST program 1093 study (tables)
    scaling compare RUN_ID... --out DIR      fits side by side: images, differences,
                                             metrics table, L-curve (also --sweep ID)

A bad config or path prints one line to stderr and exits with status 2.
"""

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from scaling.bench import add_bench_parser
from scaling.config import CampaignConfig, Config, load_config
from scaling.data.export import add_export_parser
from scaling.data.ingest import add_ingest_parser
from scaling.data.inspect import add_inspect_parser
from scaling.data.products import PRODUCTS, SLOPES
from scaling.dithers import add_dithers_parser
from scaling.flatbench import add_flatbench_parser
from scaling.simulate import simulate

EXIT_USAGE = 2
"""Exit status for a bad config or path (as argparse uses for bad arguments)."""


def _describe(config: Config) -> str:
    """One line on what a config simulates."""
    if isinstance(config, CampaignConfig):
        ep, nf = config.epochs, len(config.filters)
        return (
            f"Io: {ep.count} epochs × {ep.exposures} exposures × {nf} filter(s)"
            f" + {config.calibrators.count} calibrator(s) × {nf} filter(s)"
        )
    return f"flat field: {config.stars.n_stars} stars, {len(config.dithers)} dithers"


def _simulate(args: argparse.Namespace) -> list[Path]:
    """Load the config and simulate it, reporting the time of each part."""
    config = load_config(args.config)
    print(f"config    {args.config}: {_describe(config)}")
    start = time.perf_counter()
    files = simulate(config, args.out, progress=not args.quiet, products=args.products)
    took = time.perf_counter() - start
    print(f"simulate  {len(files)} exposures, truth.json, truth.npz in {args.out}/  ({took:.1f} s)")
    return files


def _demo(args: argparse.Namespace) -> None:
    from scaling.config import FitConfig
    from scaling.data.ingest import ingest
    from scaling.fit import fit_campaign
    from scaling.report.plots import plot_campaign

    fit_config = load_config(args.fit) if args.fit else None
    if fit_config is not None and not isinstance(fit_config, FitConfig):
        raise ValueError(f"{args.fit}: kind: expected 'fit', got {fit_config.KIND!r}")
    files = _simulate(args)
    start = time.perf_counter()
    pngs = plot_campaign(args.out)
    print(f"plots     {', '.join(str(p) for p in pngs)}  ({time.perf_counter() - start:.1f} s)")
    if fit_config is None:
        return
    start = time.perf_counter()
    store = args.out / "campaign.zarr"
    ingest([str(f) for f in files], store, progress=False)
    print(f"ingest    {len(files)} exposures into {store}  ({time.perf_counter() - start:.1f} s)")
    config = dataclasses.replace(
        fit_config, campaign=str(store), results=str(args.out / "results.zarr"), truth=str(args.out)
    )
    start = time.perf_counter()
    config = _with_cluster(config, args)
    outcome = fit_campaign(
        config, progress=not args.quiet, pictures=args.out / "fit", stepper=args.stepper(config)
    )
    print(
        f"fit       {outcome.step} steps, reduced chi2 {outcome.reduced_chi2:.3f}, pictures in "
        f"{args.out / 'fit'}/, MLflow run {outcome.run_id}  ({time.perf_counter() - start:.1f} s)"
    )
    _print_truth_metrics(outcome.truth_metrics)


SUMMARISED_OVER = 6
"""A truth metric with more entries than this (epochs, epoch pairs) prints as a summary."""


def _print_truth_metrics(metrics: dict[str, float]) -> None:
    """One line per metric, or per kind of metric (min, median, max) for long campaigns."""
    kinds: dict[str, dict[str, float]] = {}
    for name, value in metrics.items():
        kinds.setdefault(name.split(".")[0], {})[name] = value
    for kind, values in kinds.items():
        if len(values) > SUMMARISED_OVER:
            v = np.asarray(list(values.values()))
            print(
                f"          {kind:40s} min {v.min():.3f}, median {np.median(v):.3f}, "
                f"max {v.max():.3f} over {v.size}"
            )
            continue
        for name, value in values.items():
            print(f"          {name:40s} {value:.3f}")


def _fit(args: argparse.Namespace) -> int:
    from scaling.config import FitConfig
    from scaling.fit import fit_campaign

    config = load_config(args.config)
    if not isinstance(config, FitConfig):
        raise ValueError(f"{args.config}: kind: expected 'fit', got {config.KIND!r}")
    config = _with_cluster(config, args)
    outcome = fit_campaign(
        config, resume=args.resume, progress=not args.quiet, stepper=args.stepper(config)
    )
    print(
        f"fit       {outcome.step} steps, final loss {outcome.history['total'][-1]:.6g}, "
        f"reduced chi2 {outcome.reduced_chi2:.3f}, results {config.results}, "
        f"MLflow run {outcome.run_id}"
    )
    _print_truth_metrics(outcome.truth_metrics)
    return 0


def _study(args: argparse.Namespace) -> int:
    from scaling.study import run_study

    try:
        run_study(args.name, args.data, args.out, args.configs, progress=not args.quiet)
    except (ValueError, OSError) as err:
        print(f"scaling study: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def _with_cluster(config, args: argparse.Namespace):
    """`config` with the command line's cluster options (those given) applied."""
    given = {
        "workers": args.workers,
        "address": getattr(args, "address", None),
        "gpus_per_worker": getattr(args, "gpus_per_worker", None),
    }
    given = {k: v for k, v in given.items() if v is not None}
    cluster = dataclasses.replace(config.cluster, **given)
    return dataclasses.replace(config, cluster=cluster)


def in_process_only(config) -> None:
    """Stepper choice of this package alone: in process; workers need `cluster`'s CLI."""
    if config.cluster.workers:
        raise ValueError(
            "cluster.workers: a Ray fit needs the `scaling` command of the cluster package "
            "(cluster.cli); this entry point fits in one process only"
        )


def _add_cluster_options(parser: argparse.ArgumentParser, full: bool) -> None:
    parser.add_argument(
        "--workers", type=int, help="Ray shard workers (0: one process; default: config)"
    )
    if full:
        parser.add_argument(
            "--address", help="Ray cluster to join: 'auto' or ray://HOST:PORT (default: local)"
        )
        parser.add_argument("--gpus-per-worker", type=float, help="GPUs each worker requests")


COMMANDS: dict[str, tuple[str, Callable[[argparse.Namespace], object]]] = {
    "simulate": ("simulate a campaign from a TOML config into a folder", _simulate),
    "demo": ("simulate a campaign and draw PNGs of it into the same folder", _demo),
}


def _compare(args: argparse.Namespace) -> int:
    from scaling.report.compare import compare_command

    return compare_command(args)


def _add_compare_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `scaling compare` (its module, with MLflow and matplotlib, loads on use)."""
    summary = "compare fit runs: image grid, differences, metrics table, L-curve"
    p = subparsers.add_parser("compare", help=summary, description=summary)
    p.add_argument("runs", nargs="*", metavar="RUN_ID", help="MLflow run ids")
    p.add_argument("--sweep", metavar="PARENT_ID", help="the nested runs of a sweep")
    p.add_argument("--experiment", help="runs of this MLflow experiment (e.g. ami-scaling)")
    p.add_argument("--filter", default="", help="MLflow search filter for --experiment")
    p.add_argument("--reference", metavar="RUN_ID", help="run the differences are taken to")
    p.add_argument("--out", type=Path, required=True, help="output folder (replaced)")
    p.add_argument("--tracking-uri", help="MLflow store (default ./mlflow.db)")
    p.set_defaults(handler=_compare)


def _parser(more_commands: Sequence[Callable] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scaling", description="Simulate and fit JWST NIRISS AMI campaigns."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (summary, _) in COMMANDS.items():
        sub = commands.add_parser(name, help=summary, description=summary)
        sub.add_argument("config", type=Path, help="TOML config (see configs/)")
        sub.add_argument("--out", type=Path, required=True, help="output folder (replaced)")
        sub.add_argument("--quiet", action="store_true", help="no progress bar")
        if name == "simulate":
            sub.add_argument(
                "--products",
                choices=PRODUCTS,
                default=SLOPES,
                help="exposure files: our slope files (default), JWST-like rate products "
                "(_cal), raw ramps (_uncal) or stage-1 ramps (_ramp)",
            )
        if name == "demo":
            sub.set_defaults(products=SLOPES)
            sub.add_argument("--fit", type=Path, help="fit config: also ingest and fit")
            _add_cluster_options(sub, full=False)
    add_ingest_parser(commands)
    add_inspect_parser(commands)
    add_export_parser(commands)
    add_bench_parser(commands)
    add_flatbench_parser(commands)
    add_dithers_parser(commands)
    _add_compare_parser(commands)
    fit = commands.add_parser("fit", help="fit a campaign store (kind = 'fit' config)")
    fit.add_argument("config", type=Path, help="TOML fit config (see configs/)")
    fit.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    fit.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_cluster_options(fit, full=True)
    fit.set_defaults(handler=_fit)
    study = commands.add_parser(
        "study",
        help="run a real-data study end to end: ingest, fits, tables (JSON and Markdown)",
    )
    study.add_argument("name", choices=["jw01093"], help="which study (JWST program 1093)")
    study.add_argument("--data", type=Path, required=True, help="folder of the _cal files")
    study.add_argument("--out", type=Path, required=True, help="folder for stores and tables")
    study.add_argument("--configs", type=Path, help="its fit configs (default configs/NAME)")
    study.add_argument("--quiet", action="store_true", help="print the tables only")
    study.set_defaults(handler=_study)
    for register in more_commands:
        register(commands)
    return parser


def main(
    argv: Sequence[str] | None = None,
    stepper_for: Callable = in_process_only,
    more_commands: Sequence[Callable] = (),
) -> int:
    """Run the command line; returns the exit status.

    `stepper_for(fit_config)` picks what runs a fit's steps (None: in this process);
    `cluster.cli` passes one that starts Ray workers when the config asks for them, and
    in `more_commands` the functions that register its own commands (`scaling sweep`).
    """
    args = _parser(more_commands).parse_args(argv)
    args.stepper = stepper_for
    start = time.perf_counter()
    try:
        if hasattr(args, "handler"):
            return args.handler(args)
        COMMANDS[args.command][1](args)
    except (ValueError, OSError) as err:
        print(f"scaling {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0
