"""The `scaling` command: `scaling.cli` with fits on Ray workers when asked for.

`scaling fit CONFIG --workers N` (or `[cluster] workers = N` in the config) runs the fit
on N Ray shard workers (`cluster.coordinator.RayStepper`); 0 fits in this process.
"""

from collections.abc import Sequence

from scaling import cli
from scaling.config import FitConfig


def stepper_for(config: FitConfig):
    """The Ray stepper when the config asks for workers, else None (in process)."""
    if config.cluster.workers == 0:
        return None
    from cluster.coordinator import RayStepper

    return RayStepper


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with Ray fits available; returns the exit status."""
    return cli.main(argv, stepper_for)
