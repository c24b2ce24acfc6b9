"""Every fit is an MLflow run: config as params, versions as tags, batched metrics.

With nothing configured, runs go to MLflow's embedded SQLite store `mlflow.db` in the
working directory (artifacts under `mlruns/`); `MLFLOW_TRACKING_URI` or an explicit
`tracking_uri` selects another store or a tracking server.
"""

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from importlib.metadata import PackageNotFoundError, version

import mlflow
from mlflow.entities import Metric, RunStatus
from mlflow.tracking import MlflowClient

EXPERIMENT = "ami-scaling"
PACKAGES = ("ami-scaling", "jax", "jaxlib", "equinox", "optax", "dLux", "numpy", "zarr", "mlflow")


def tracking_uri(explicit: str | None = None) -> str:
    """The tracking URI to use: explicit, else $MLFLOW_TRACKING_URI, else ./mlflow.db."""
    if explicit:
        return explicit
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{os.path.abspath('mlflow.db')}"


def flatten(config: Mapping, prefix: str = "") -> dict[str, str]:
    """Nested mapping → {"a.b.c": "value"} with string values (MLflow params)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)
    return out


def version_tags() -> dict[str, str]:
    """Package versions and the git commit of the working tree, as MLflow tags."""
    tags = {}
    for package in PACKAGES:
        with contextlib.suppress(PackageNotFoundError):
            tags[f"version.{package}"] = version(package)
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        ).stdout.strip()
        tags["git.commit"] = commit
    return tags


class MetricLog:
    """Buffers per-step metrics and sends them with `log_batch` every `every` steps."""

    def __init__(self, client: MlflowClient, run_id: str, every: int = 50):
        self.client, self.run_id, self.every = client, run_id, every
        self.pending: list[Metric] = []

    def add(self, step: int, values: Mapping[str, float]) -> None:
        stamp = int(time.time() * 1000)
        self.pending += [Metric(k, float(v), stamp, step) for k, v in values.items()]
        if len(self.pending) >= self.every * max(len(values), 1):
            self.flush()

    def flush(self) -> None:
        for i in range(0, len(self.pending), 1000):
            self.client.log_batch(self.run_id, metrics=self.pending[i : i + 1000])
        self.pending = []


@contextlib.contextmanager
def fit_run(
    config: Mapping,
    run_name: str | None = None,
    uri: str | None = None,
    run_id: str | None = None,
    parent_run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> Iterator[tuple[mlflow.ActiveRun, MetricLog]]:
    """Start (or, with `run_id`, continue) a fit run; mark it FAILED with the error on raise."""
    mlflow.set_tracking_uri(tracking_uri(uri))
    mlflow.set_experiment(EXPERIMENT)
    client = MlflowClient()
    kwargs = {"run_id": run_id} if run_id else {"run_name": run_name}
    if parent_run_id:
        kwargs["parent_run_id"] = parent_run_id
    run = mlflow.start_run(**kwargs)
    metrics = MetricLog(client, run.info.run_id)
    try:
        if run_id is None:
            mlflow.log_params(flatten(config))
        mlflow.set_tags({**version_tags(), **(tags or {})})
        yield run, metrics
    except BaseException as error:
        metrics.flush()
        mlflow.set_tag("error", f"{type(error).__name__}: {error}"[:5000])
        mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        raise
    metrics.flush()
    mlflow.end_run()
