"""The `scaling` command: `scaling.cli` with fits on Ray workers when asked for, and
sweeps.

`scaling fit CONFIG --workers N` (or `[cluster] workers = N` in the config) runs the fit
on N Ray shard workers (`cluster.coordinator.RayStepper`); 0 fits in this process.
`scaling sweep SWEEP.toml [--resume]` runs a hyperparameter sweep on Ray Tune
(`cluster.sweep`).
"""

import argparse
from collections.abc import Sequence
from pathlib import Path

from scaling import cli
from scaling.config import FitConfig


def stepper_for(config: FitConfig):
    """The Ray stepper when the config asks for workers, else None (in process)."""
    if config.cluster.workers == 0:
        return None
    from cluster.coordinator import RayStepper

    return RayStepper


def _sweep(args: argparse.Namespace) -> int:
    from cluster.sweep import sweep_command

    return sweep_command(args)


def add_sweep_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `scaling sweep` (Ray Tune and MLflow load when it runs)."""
    summary = "run a hyperparameter sweep of fits on Ray Tune (kind = 'sweep' config)"
    p = subparsers.add_parser("sweep", help=summary, description=summary)
    p.add_argument("config", type=Path, help="TOML sweep config (see configs/)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep")
    p.add_argument("--quiet", action="store_true", help="no Tune status table")
    p.set_defaults(handler=_sweep)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with Ray fits and sweeps available; returns the exit status."""
    return cli.main(argv, stepper_for, [add_sweep_parser])
